//! What the TC programs cost traffic that is not DNS: iperf3 between two pods through the
//! node with and without nldns attached, the kernel's own per-program run time
//! (`kernel.bpf_stats_enabled`), and BPF_PROG_TEST_RUN of the loaded programs on crafted
//! frames.
//!
//! The agent's programs are found by asking the kernel what is attached to the node's
//! pod veth (BPF_PROG_QUERY) and opened with BPF_PROG_GET_FD_BY_ID: raw bpf(2), so xtask
//! needs no aya and stays buildable before setup.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use nldns_tests::addresses::{pod_v4, KUBE_DNS_V4};
use nldns_tests::raw_bpf::{
    self, ifindex, Program, BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_EGRESS, BPF_TCX_INGRESS,
    RETURN_MINUS_1,
};
use nldns_tests::SimNode;

pub const INGRESS: &str = "nldns_ingress";
pub const EGRESS: &str = "nldns_egress";
/// The ingress program with the kernel responder (attached instead of `INGRESS` when
/// kernel answers are on).
pub const ANSWER: &str = "nldns_answer";

/// iperf3 TCP from pod 0 to pod 1 for `secs`; returns Gbit/s received.
pub fn iperf(node: &SimNode, secs: u64) -> Result<f64> {
    let server_ip = pod_v4(1).to_string();
    let mut server = node.spawn_in_pod(
        1,
        Path::new("/usr/bin/iperf3"),
        &["-s", "-1", "-B", &server_ip],
    )?;
    // Until the server listens, the client gets "connection refused": retry briefly.
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let out = node.exec_in_pod(
            0,
            "iperf3",
            &["-c", &server_ip, "-t", &secs.to_string(), "-J"],
            Duration::from_secs(secs + 20),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let json: serde_json::Value =
                serde_json::from_str(&text).context("parsing iperf3 -J")?;
            let bps = json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 -J without end.sum_received")?;
            let _ = server.wait_exit(Duration::from_secs(2));
            return Ok(bps / 1e9);
        }
        last = text;
        if !last.contains("refused") {
            break;
        }
    }
    bail!("iperf3 failed: {last}")
}

/// The ids of loaded programs called `name`.
pub fn program_ids(name: &str) -> Result<BTreeSet<u32>> {
    let text = nldns_tests::cmd::run("bpftool", &["prog", "show", "-j"])?;
    let json: serde_json::Value = serde_json::from_str(&text).context("bpftool prog show -j")?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["id"].as_u64().map(|id| id as u32))
        .collect())
}

/// The program called `name` attached (TCX) to `ifname` of the node at `attach_type`:
/// asked of the kernel for this node's interface, since other agents (other runs on the
/// machine) load programs of the same name at the same time.
fn attached_program(node: &SimNode, ifname: &str, attach_type: u32, name: &str) -> Result<u32> {
    let ifname = ifname.to_string();
    let ids = node
        .node_netns()
        .run_inside(move || raw_bpf::query_tcx(&ifname, attach_type))??;
    let named = program_ids(name)?;
    let ours: Vec<u32> = ids.into_iter().filter(|id| named.contains(id)).collect();
    match ours.as_slice() {
        [id] => Ok(*id),
        _ => bail!("expected one {name} attached, found {ours:?}"),
    }
}

/// The agent's ingress (called `ingress`: [`INGRESS`] or [`ANSWER`]) and egress programs,
/// as attached to pod 0's veth.
pub fn agent_programs(node: &SimNode, ingress: &str) -> Result<(u32, u32)> {
    let veth = node.pod_veth(0)?;
    Ok((
        attached_program(node, veth, BPF_TCX_INGRESS, ingress)?,
        attached_program(node, veth, BPF_TCX_EGRESS, EGRESS)?,
    ))
}

/// A map of a program, as `bpftool map show` reports it.
#[derive(Debug, Clone)]
pub struct MapMemory {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    pub bytes_memlock: u64,
}

/// The maps program `id` uses, with their memory (`bytes_memlock`: what the kernel
/// charges for the map now; for a map without preallocation it grows with its entries).
pub fn program_maps(id: u32) -> Result<Vec<MapMemory>> {
    let text = nldns_tests::cmd::run("bpftool", &["prog", "show", "id", &id.to_string(), "-j"])?;
    let json: serde_json::Value = serde_json::from_str(&text).context("bpftool prog show")?;
    let mut maps = Vec::new();
    for map_id in json["map_ids"].as_array().into_iter().flatten() {
        let Some(map_id) = map_id.as_u64() else {
            continue;
        };
        let text =
            nldns_tests::cmd::run("bpftool", &["map", "show", "id", &map_id.to_string(), "-j"])?;
        let m: serde_json::Value = serde_json::from_str(&text).context("bpftool map show")?;
        maps.push(MapMemory {
            name: m["name"].as_str().unwrap_or("").to_string(),
            kind: m["type"].as_str().unwrap_or("").to_string(),
            max_entries: m["max_entries"].as_u64().unwrap_or(0),
            bytes_memlock: m["bytes_memlock"]
                .as_u64()
                .or_else(|| m["bytes_memlock"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0),
        });
    }
    Ok(maps)
}

/// run_time_ns and run_cnt of program `id` (kept only while bpf_stats is on).
pub fn run_stats(id: u32) -> Result<(u64, u64)> {
    let text = nldns_tests::cmd::run("bpftool", &["prog", "show", "id", &id.to_string(), "-j"])?;
    let json: serde_json::Value = serde_json::from_str(&text).context("bpftool prog show")?;
    Ok((
        json["run_time_ns"].as_u64().unwrap_or(0),
        json["run_cnt"].as_u64().unwrap_or(0),
    ))
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Where the value before our change is kept while bpf_stats is on, so that a bench killed
/// in that window is undone by the next one ([`restore_stale_bpf_stats`]).
const BPF_STATS_SAVED: &str = "/run/nldns-tests/bench-bpf-stats.prev";

/// Turns kernel.bpf_stats_enabled on (a machine-wide sysctl) and restores the previous
/// value on drop, whatever happens in between.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        restore_stale_bpf_stats();
        let previous = std::fs::read_to_string(BPF_STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        std::fs::create_dir_all("/run/nldns-tests")?;
        std::fs::write(BPF_STATS_SAVED, &previous).context("saving bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        match std::fs::write(BPF_STATS, &self.previous) {
            Ok(()) => {
                let _ = std::fs::remove_file(BPF_STATS_SAVED);
            }
            Err(error) => eprintln!(
                "bench: could not restore kernel.bpf_stats_enabled={}: {error}",
                self.previous
            ),
        }
    }
}

/// Restores bpf_stats_enabled from a value saved by a bench that did not get to restore it.
pub fn restore_stale_bpf_stats() {
    if let Ok(previous) = std::fs::read_to_string(BPF_STATS_SAVED) {
        if std::fs::write(BPF_STATS, previous.trim()).is_ok() {
            let _ = std::fs::remove_file(BPF_STATS_SAVED);
            eprintln!(
                "bench: restored kernel.bpf_stats_enabled={}",
                previous.trim()
            );
        }
    }
}

/// A TC program that only returns TC_ACT_UNSPEC, attached (TCX, appended) to ingress and
/// egress of some node interfaces: its bpf_stats run time is what the hook and the
/// stats' own clock reads cost, to subtract from nldns's. Detached on drop (closing the
/// link fds is what detaches a TCX link).
pub struct EmptyProgram {
    prog: Program,
    links: Vec<OwnedFd>,
}

impl EmptyProgram {
    pub fn attach(node: &SimNode, interfaces: &[&str]) -> Result<EmptyProgram> {
        let prog = Arc::new(Program::load(
            BPF_PROG_TYPE_SCHED_CLS,
            0,
            "nldns_bench_nop",
            &RETURN_MINUS_1,
        )?);
        let interfaces: Vec<String> = interfaces.iter().map(|s| s.to_string()).collect();
        // Interface indexes and TCX links belong to the namespace of the calling thread.
        let in_node = prog.clone();
        let links = node
            .node_netns()
            .run_inside(move || -> Result<Vec<OwnedFd>> {
                let mut links = Vec::new();
                for ifname in &interfaces {
                    let index = ifindex(ifname).context("in the node")?;
                    for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                        links.push(
                            in_node
                                .attach_tcx(index, attach_type)
                                .context("attaching the empty TC program")?,
                        );
                    }
                }
                Ok(links)
            })??;
        let prog = Arc::into_inner(prog).context("the empty program is still shared")?;
        Ok(EmptyProgram { prog, links })
    }

    /// run_time_ns and run_cnt, from the program fd's fdinfo.
    pub fn run_stats(&self) -> Result<(u64, u64)> {
        self.prog.run_stats()
    }
}

impl Drop for EmptyProgram {
    fn drop(&mut self) {
        // Links first (closing a TCX link's fd detaches it), then the program.
        self.links.clear();
    }
}

/// BPF_PROG_TEST_RUN results, ns per run.
#[derive(Debug, Clone, Default)]
pub struct TestRuns {
    /// A TCP segment between two pods, repeat = 1e6 in one call.
    pub ingress_tcp: u32,
    pub egress_tcp: u32,
    /// A DNS query to the ClusterIP (ingress) and the cache's reply from the intercept
    /// endpoint (egress). The kernel repeats a run on the same buffer, so after the first
    /// run the frame is already rewritten: these are timed one run per call (the kernel's
    /// timer overhead is included; `*_tcp_single` is the same for the TCP frame).
    pub ingress_dns_single: f64,
    pub egress_dns_single: f64,
    pub ingress_tcp_single: f64,
    pub egress_tcp_single: f64,
    /// A query for a name the hits workload asks (cached once it ran) through ingress,
    /// one run per call: with kernel answers, the answered path.
    pub ingress_hit_single: f64,
    pub verdicts: String,
}

/// Runs the agent's programs `ingress` and `egress` (ids) on crafted frames, from a thread
/// inside the node namespace.
pub fn test_runs(node: &SimNode, ingress: u32, egress: u32, repeat: u32) -> Result<TestRuns> {
    node.node_netns().run_inside(move || -> Result<TestRuns> {
        let ingress = Program::open(ingress)?;
        let egress = Program::open(egress)?;
        let tcp = tcp_frame();
        let query = udp_frame([10, 244, 1, 10], KUBE_DNS_V4.octets(), 40000, 53, QUERY_NAME);
        let reply = udp_frame([169, 254, 53, 53], [10, 244, 1, 10], 10053, 40000, QUERY_NAME);
        let hit = udp_frame([10, 244, 1, 10], KUBE_DNS_V4.octets(), 40001, 53, HIT_NAME);
        let (vi, ingress_tcp) = ingress.test_run(&tcp, repeat)?;
        let (ve, egress_tcp) = egress.test_run(&tcp, repeat)?;
        let singles = 20_000;
        let mean_single = |prog: &Program, frame: &[u8]| -> Result<(u32, f64)> {
            let mut total = 0u64;
            let mut verdict = 0;
            for _ in 0..singles {
                let (v, ns) = prog.test_run(frame, 1)?;
                verdict = v;
                total += u64::from(ns);
            }
            Ok((verdict, total as f64 / f64::from(singles)))
        };
        let (vq, ingress_dns_single) = mean_single(&ingress, &query)?;
        let (vr, egress_dns_single) = mean_single(&egress, &reply)?;
        let (_, ingress_tcp_single) = mean_single(&ingress, &tcp)?;
        let (_, egress_tcp_single) = mean_single(&egress, &tcp)?;
        let (vh, ingress_hit_single) = mean_single(&ingress, &hit)?;
        Ok(TestRuns {
            ingress_tcp,
            egress_tcp,
            ingress_dns_single,
            egress_dns_single,
            ingress_tcp_single,
            egress_tcp_single,
            ingress_hit_single,
            // TC verdicts are ints; the programs return TC_ACT_UNSPEC (-1), a kernel
            // answer TC_ACT_REDIRECT (7).
            verdicts: format!(
                "ingress tcp {}, egress tcp {}, ingress query {}, egress reply {}, ingress hit query {}",
                vi as i32, ve as i32, vq as i32, vr as i32, vh as i32
            ),
        })
    })?
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(protocol: u8, src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ACK with 64 bytes of data from pod 0 to pod 1's iperf3 port.
fn tcp_frame() -> Vec<u8> {
    let payload = [0x5au8; 64];
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&5201u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(&payload);
    let mut f = ethernet(0x0800);
    f.extend(ipv4(6, [10, 244, 1, 10], [10, 244, 1, 11], tcp.len()));
    f.extend(tcp);
    f
}

/// The name of the DNS frames (not one the hits workload asks).
const QUERY_NAME: &str = "web.default.svc.cluster.local";
/// A name of the hits workload (`workload::hit_lines`), cached once it ran.
const HIT_NAME: &str = "h0.bench.svc.cluster.local";

/// A UDP frame carrying a DNS query (RD, no EDNS) for `name` A.
fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, name: &str) -> Vec<u8> {
    let mut dns = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        dns.push(label.len() as u8);
        dns.extend_from_slice(label.as_bytes());
    }
    dns.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no UDP checksum (allowed in IPv4)
    udp.extend(dns);
    let mut f = ethernet(0x0800);
    f.extend(ipv4(17, src, dst, udp.len()));
    f.extend(udp);
    f
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv4_header_checksum_verifies() {
        let h = super::ipv4(17, [10, 0, 0, 1], [10, 0, 0, 2], 8);
        assert_eq!(super::checksum(&h), 0);
    }
}
