//! The verifier-work table of the bench report: instructions the verifier processed per
//! program, per kernel, as recorded by the `every_program_passes_the_verifier_and_its_work_is_recorded`
//! test on the host and in the kernel VMs (`target/verifier/<arch>-<release>.jsonl`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The kernel's complexity limit (BPF_COMPLEXITY_LIMIT_INSNS).
const LIMIT: u64 = 1_000_000;

/// A markdown section (heading included); says how to record numbers when there are none.
pub fn markdown(root: &Path) -> String {
    let dir = super::verifier_dir(root);
    let mut kernels: Vec<(String, String)> = Vec::new(); // (label, recorded at)
                                                         // (hook, program) -> kernel label -> (verified, xlated)
    let mut rows: BTreeMap<(String, String), BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let label = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let recorded = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("unix time {}", d.as_secs()))
            .unwrap_or_default();
        let mut any = false;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let key = (
                v["hook"].as_str().unwrap_or("?").to_string(),
                v["program"].as_str().unwrap_or("?").to_string(),
            );
            rows.entry(key).or_default().insert(
                label.clone(),
                (
                    v["verified_insns"].as_u64().unwrap_or(0),
                    v["xlated_insns"].as_u64().unwrap_or(0),
                ),
            );
            any = true;
        }
        if any {
            kernels.push((label, recorded));
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "\n## Verifier work per program and kernel\n");
    if kernels.is_empty() {
        let _ = writeln!(
            s,
            "No numbers recorded yet: `cargo xtask test` (host kernel and the VM matrix) or \
             `cargo xtask test --kernel 6.1` writes them to `target/verifier/`."
        );
        return s;
    }
    let _ = writeln!(
        s,
        "Instructions the verifier processed to accept each program (`verified_insns`, the \
         N of the verifier log's `processed N insns`), and in parentheses the program's \
         size after the verifier's rewrites. The kernel rejects a program past {LIMIT}; the \
         test fails past half of that. Recorded by \
         `every_program_passes_the_verifier_and_its_work_is_recorded` in `cargo xtask test` \
         ({}).\n",
        kernels
            .iter()
            .map(|(k, at)| format!("{k}: {at}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let labels: BTreeSet<&String> = kernels.iter().map(|(k, _)| k).collect();
    let _ = write!(s, "| hook | program |");
    for label in &labels {
        let _ = write!(s, " {label} |");
    }
    let _ = write!(s, "\n| --- | --- |");
    for _ in &labels {
        let _ = write!(s, " ---: |");
    }
    let _ = writeln!(s);
    for ((hook, program), by_kernel) in &rows {
        let _ = write!(s, "| {hook} | `{program}` |");
        for label in &labels {
            match by_kernel.get(*label) {
                Some((verified, xlated)) => {
                    let _ = write!(s, " {verified} ({xlated}) |");
                }
                None => {
                    let _ = write!(s, " – |");
                }
            }
        }
        let _ = writeln!(s);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_table_per_program_with_a_column_per_kernel() {
        let root = std::env::temp_dir().join(format!("nldns-verifier-test-{}", std::process::id()));
        let dir = super::super::verifier_dir(&root);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(super::markdown(&root).contains("No numbers recorded yet"));
        std::fs::write(
            dir.join("x86_64-6.1.0-47-cloud-amd64.jsonl"),
            "{\"hook\":\"tc-ingress\",\"program\":\"nldns_ingress\",\"verified_insns\":1234,\"xlated_insns\":400}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("x86_64-6.18.0.jsonl"),
            "{\"hook\":\"tc-ingress\",\"program\":\"nldns_ingress\",\"verified_insns\":999,\"xlated_insns\":390}\n",
        )
        .unwrap();
        let md = super::markdown(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(
            md.contains("| x86_64-6.1.0-47-cloud-amd64 | x86_64-6.18.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| tc-ingress | `nldns_ingress` | 1234 (400) | 999 (390) |"),
            "{md}"
        );
    }
}
