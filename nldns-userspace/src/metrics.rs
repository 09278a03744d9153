//! The agent's own Prometheus series, added to the DNS engine's registry: the eBPF
//! datapath's counters, read from their per-CPU map at each scrape (so they cost the
//! datapath nothing between scrapes) and exported as `nldns_datapath_<name>_total`.

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

/// The engine's metrics with the datapath's counters in the same registry.
pub fn with_datapath_counters() -> (Arc<Metrics>, Arc<DatapathCounters>) {
    let counters = Arc::new(DatapathCounters::default());
    let metrics = Metrics::with_collectors(vec![Box::new(counters.clone())]);
    (metrics, counters)
}

#[cfg(test)]
mod tests {
    #[test]
    fn datapath_counters_appear_once_their_source_is_set() {
        let (metrics, counters) = super::with_datapath_counters();
        assert!(!metrics.encode().contains("nldns_datapath_"));
        counters.set_source(Box::new(|| vec![("redirected", 7), ("passed", 2)]));
        let text = metrics.encode();
        assert!(text.contains("nldns_datapath_redirected_total 7"), "{text}");
        assert!(text.contains("nldns_datapath_passed_total 2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
