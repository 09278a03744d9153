//! Parses a /metrics exposition with a real Prometheus parser: the official Python
//! client's OpenMetrics parser (Debian's python3-prometheus-client), which rejects what
//! a Prometheus server would (a malformed line, a counter without `_total`, a histogram
//! without `+Inf`, a missing `# EOF`). Returns every sample.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One sample: its name (with `_total`, `_bucket` ... suffixes), labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": sorted(s.labels.items()), "value": s.value})
print(json.dumps(out))
"#;

/// Every sample of `text`, or the parser's complaint.
pub fn parse_openmetrics(text: &str) -> Result<Vec<Sample>> {
    // Debian's interpreter, where python3-prometheus-client is installed (a python3
    // earlier on PATH may be another one).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "starting /usr/bin/python3 (cargo xtask setup installs python3-prometheus-client)",
        )?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the OpenMetrics parser rejected the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let samples = parsed
        .as_array()
        .context("a list of samples")?
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_string(),
            labels: s["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|kv| {
                    (
                        kv[0].as_str().unwrap_or_default().to_string(),
                        kv[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    Ok(samples)
}

/// The value of the sample named `name` whose labels include all of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_parser_reads_good_text_and_rejects_bad() {
        if !std::path::Path::new("/usr/bin/python3").exists() {
            eprintln!("SKIP the_parser_reads_good_text_and_rejects_bad: no /usr/bin/python3");
            return;
        }
        let good = "# TYPE a counter\na_total{x=\"1\"} 3\n# EOF\n";
        let samples = super::parse_openmetrics(good).unwrap();
        assert_eq!(super::value(&samples, "a_total", &[("x", "1")]), Some(3.0));
        assert!(super::parse_openmetrics("# TYPE a counter\na_total 3\n").is_err());
    }
}
