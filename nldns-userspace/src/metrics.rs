//! The agent's own Prometheus series, added to the DNS engine's registry: the eBPF
//! datapath's counters, read from their per-CPU map at each scrape (so they cost the
//! datapath nothing between scrapes) and exported as `nldns_datapath_<name>_total`; and
//! the standard `process_*` series every Prometheus client exports, read from /proc.

use std::fmt;
use std::sync::{Arc, RwLock};

use nldns_dns::metrics::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// A function returning the datapath's counters as (name, value) pairs.
pub type DatapathSource = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Encodes the datapath counters, whatever the source returns at scrape time; nothing
/// until the datapath is loaded and its source set.
#[derive(Default)]
pub struct DatapathCounters {
    source: RwLock<Option<DatapathSource>>,
}

impl DatapathCounters {
    pub fn set_source(&self, source: DatapathSource) {
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }
}

impl fmt::Debug for DatapathCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatapathCounters")
    }
}

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let guard = self.source.read().unwrap_or_else(|e| e.into_inner());
        let Some(source) = guard.as_ref() else {
            return Ok(());
        };
        for (name, value) in source() {
            let counter = ConstCounter::new(value);
            let full_name = format!("datapath_{name}");
            let metric = encoder.encode_descriptor(
                &full_name,
                "Counter from the eBPF datapath.",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The engine's metrics with the datapath's counters and the process's series in the
/// same registry.
pub fn with_datapath_counters() -> (Arc<Metrics>, Arc<DatapathCounters>) {
    let counters = Arc::new(DatapathCounters::default());
    let metrics = Metrics::with_collectors(
        vec![Box::new(counters.clone())],
        vec![Box::new(ProcessCollector)],
    );
    (metrics, counters)
}

/// `process_*` as the Prometheus clients define them (CPU, memory, descriptors, start
/// time), read from /proc/self at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    start_time_seconds: f64,
    threads: u64,
}

impl ProcessStats {
    /// Parses /proc/self/stat (`ticks`: clock ticks per second, `page`: page size,
    /// `boot_time`: /proc/stat's btime). The command name, in parentheses, may hold
    /// spaces and parentheses itself: the fields start after its last ')'.
    fn parse(stat: &str, ticks: f64, page: u64, boot_time: u64) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field numbers of proc(5), counted from `state` (field 3) at index 0.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
        })
    }

    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
        // SAFETY: sysconf only reads system configuration.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Self::parse(&stat, ticks.max(1) as f64, page.max(1) as u64, boot_time)
    }
}

/// Open descriptors and their soft limit.
fn descriptors() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((open, limit.rlim_cur))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        if let Some(stats) = ProcessStats::read() {
            ConstCounter::new(stats.cpu_seconds).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?)?;
            for (name, help, value) in [
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    stats.virtual_bytes as f64,
                ),
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    stats.resident_bytes as f64,
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    stats.start_time_seconds,
                ),
                (
                    "process_threads",
                    "Number of OS threads in the process.",
                    stats.threads as f64,
                ),
            ] {
                ConstGauge::new(value).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Some((open, max)) = descriptors() {
            for (name, help, value) in [
                ("process_open_fds", "Number of open file descriptors.", open),
                (
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    max,
                ),
            ] {
                ConstGauge::new(value as f64).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ProcessStats;

    #[test]
    fn proc_stat_fields_after_a_command_name_with_spaces() {
        let stat = "4242 (nldns (udp) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let stats = ProcessStats::parse(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                virtual_bytes: 104_857_600,
                resident_bytes: 2560 * 4096,
                start_time_seconds: 1_700_000_000.0 + 123.45,
                threads: 7,
            }
        );
        assert!(ProcessStats::parse("garbage", 100.0, 4096, 0).is_none());
        assert!(ProcessStats::read().is_some(), "this process's own /proc");
    }

    #[test]
    fn datapath_counters_appear_once_their_source_is_set() {
        let (metrics, counters) = super::with_datapath_counters();
        assert!(!metrics.encode().contains("nldns_datapath_"));
        counters.set_source(Box::new(|| vec![("redirected", 7), ("passed", 2)]));
        let text = metrics.encode();
        assert!(text.contains("nldns_datapath_redirected_total 7"), "{text}");
        assert!(text.contains("nldns_datapath_passed_total 2"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
