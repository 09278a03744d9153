//! Fail-open guard: interception only while the agent proves it is alive and serving.
//!
//! TCX links vanish with the agent's process, but netlink filters (kernels before 6.6)
//! survive it, and no attachment notices a hung agent. The agent's serving path refreshes
//! a timestamp; past `heartbeat_max_age_ns` the query goes its normal way, to kube-dns
//! through kube-proxy, exactly as if nldns were not installed.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use nldns_common::DatapathConfig;

use crate::maps::NLDNS_HEARTBEAT;

#[inline(always)]
pub fn agent_is_alive(config: &DatapathConfig) -> bool {
    if config.enabled == 0 {
        return false;
    }
    let Some(&beat) = NLDNS_HEARTBEAT.get(0) else {
        return false;
    };
    if beat == 0 {
        return false;
    }
    // SAFETY: helper with no arguments; same clock as the agent's CLOCK_MONOTONIC.
    let now = unsafe { bpf_ktime_get_ns() };
    // A heartbeat from "the future" (written between our read of the clock and the map on
    // another CPU) is fresh.
    now.saturating_sub(beat) <= config.heartbeat_max_age_ns
}
