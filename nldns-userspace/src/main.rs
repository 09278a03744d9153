//! `nldns`: the agent binary. Parsing and dispatch only; the work is in the library.

use std::{io::Write, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use nldns::{
    agent,
    cli::{Cli, Command, LogFormat},
    probe, shedding, status,
};

fn main() -> Result<()> {
    let cli = Cli::parse();
    // nldns_datapath is the datapath (aya-log): its level is set in the programs' config
    // map (`--datapath-log`, `nldns datapath-log`), so let everything it emits through.
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,netlink_proto=error,nldns_datapath=trace"),
    );
    if cli.log_format == LogFormat::Json {
        logger.format(|buf, record| {
            let time = buf.timestamp_micros().to_string();
            writeln!(buf, "{}", json_line(&time, record))
        });
    }
    logger.init();
    // coredns_panics_total counts every panic of the process.
    nldns_dns::metrics::count_panics();
    // A probe runs every few seconds in the container: no runtime, no threads.
    if let Command::Probe {
        kind,
        probe_socket,
        timeout_ms,
    } = &cli.command
    {
        return probe::check(probe_socket, *kind, Duration::from_millis(*timeout_ms));
    }
    if let Command::ImportCorefile {
        file,
        lenient,
        cluster_domain,
    } = &cli.command
    {
        return import_corefile(file, *lenient, cluster_domain);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => agent::run(*args).await,
            Command::Status {
                json,
                cgroup,
                pod_cgroup,
                probe_socket,
                metrics_addr,
            } => {
                let agent = match probe_socket {
                    Some(path) => shedding::MetricsSource::ProbeSocket(path),
                    None => shedding::MetricsSource::Address(metrics_addr),
                };
                status::print_status(json, cgroup, pod_cgroup, agent).await
            }
            Command::Cleanup { all, cgroup } => status::cleanup(all, cgroup).await,
            Command::DatapathLog { level } => status::set_datapath_log(level).await,
            Command::Probe { .. } | Command::ImportCorefile { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}

/// `nldns import-corefile`: the config file on stdout once it is known to load; notes,
/// and what cannot be honoured, on stderr.
fn import_corefile(path: &std::path::Path, lenient: bool, cluster_domain: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let import = nldns::config::corefile::import(&text, cluster_domain)
        .with_context(|| format!("parsing {}", path.display()))?;
    for note in &import.notes {
        eprintln!("note: {note}");
    }
    let label = if lenient { "warning" } else { "error" };
    for issue in &import.issues {
        let dropped = if lenient { " (dropped: --lenient)" } else { "" };
        eprintln!(
            "{label}: {}:{}: {}{dropped}",
            path.display(),
            issue.line,
            issue.message
        );
    }
    if !import.issues.is_empty() && !lenient {
        anyhow::bail!(
            "{}: {} setting(s) nldns cannot honour (listed above); fix them, or pass --lenient \
             to drop them",
            path.display(),
            import.issues.len()
        );
    }
    let json = serde_json::to_string_pretty(&import.config).context("writing the config")?;
    // What is printed must load as --config.
    nldns::config::ConfigFile::from_json(&json).context("the translated config does not load")?;
    println!("{json}");
    Ok(())
}

/// One log record as one line of JSON: `time` (RFC 3339, UTC), `level`, `target`,
/// `message`, and `fields`: the record's key-values (`log::info!(port = 53; "...")`).
fn json_line(time: &str, record: &log::Record) -> String {
    struct Fields(serde_json::Map<String, serde_json::Value>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            let v = if let Some(b) = value.to_bool() {
                b.into()
            } else if let Some(n) = value.to_i64() {
                n.into()
            } else if let Some(n) = value.to_u64() {
                n.into()
            } else if let Some(f) = value.to_f64() {
                f.into()
            } else {
                value.to_string().into()
            };
            self.0.insert(key.as_str().to_string(), v);
            Ok(())
        }
    }
    let mut fields = Fields(serde_json::Map::new());
    // A visitor that never fails: nothing to handle.
    let _ = record.key_values().visit(&mut fields);
    serde_json::json!({
        "time": time,
        "level": record.level().as_str(),
        "target": record.target(),
        "message": record.args().to_string(),
        "fields": fields.0,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_lines_carry_level_time_message_and_fields() {
        let kvs: &[(&str, log::kv::Value)] = &[
            ("port", 53u16.into()),
            ("upstream", "10.96.0.11:53".into()),
            ("stale", true.into()),
        ];
        let line = json_line(
            "2026-12-01T09:00:00.000000Z",
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("nldns::agent")
                .args(format_args!("upstream \"slow\"\n{}", 2))
                .key_values(&kvs)
                .build(),
        );
        assert!(!line.contains('\n'), "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-12-01T09:00:00.000000Z",
                "level": "WARN",
                "target": "nldns::agent",
                "message": "upstream \"slow\"\n2",
                "fields": {"port": 53, "upstream": "10.96.0.11:53", "stale": true},
            })
        );
    }

    #[test]
    fn import_corefile_fails_on_what_it_cannot_honour_unless_lenient() {
        let dir = std::env::temp_dir().join(format!("nldns-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("Corefile");
        std::fs::write(&file, ".:53 {\n forward . 8.8.8.8\n log\n}\n").unwrap();
        let strict = import_corefile(&file, false, "cluster.local");
        let lenient = import_corefile(&file, true, "cluster.local");
        std::fs::write(&file, ".:53 {\n forward . 8.8.8.8\n").unwrap();
        let broken = import_corefile(&file, true, "cluster.local");
        let missing = import_corefile(&dir.join("nope"), true, "cluster.local");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = format!("{:#}", strict.unwrap_err());
        assert!(
            err.contains("1 setting(s)") && err.contains("--lenient"),
            "{err}"
        );
        lenient.unwrap();
        let err = format!("{:#}", broken.unwrap_err());
        assert!(err.contains("parsing") && err.contains("line 1"), "{err}");
        assert!(format!("{:#}", missing.unwrap_err()).contains("reading"));
    }

    #[test]
    fn log_format_comes_from_the_flag_or_the_environment() {
        let cli = Cli::try_parse_from(["nldns", "--log-format", "json", "status"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["nldns", "status", "--log-format", "text"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        assert!(Cli::try_parse_from(["nldns", "--log-format", "xml", "status"]).is_err());
    }
}
