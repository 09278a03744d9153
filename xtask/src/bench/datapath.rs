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

use anyhow::{bail, Context, Result};
use nldns_tests::addresses::{pod_v4, KUBE_DNS_V4};
use nldns_tests::SimNode;

pub const INGRESS: &str = "nldns_ingress";
pub const EGRESS: &str = "nldns_egress";

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
        .run_inside(move || query_tcx(&ifname, attach_type))??;
    let named = program_ids(name)?;
    let ours: Vec<u32> = ids.into_iter().filter(|id| named.contains(id)).collect();
    match ours.as_slice() {
        [id] => Ok(*id),
        _ => bail!("expected one {name} attached, found {ours:?}"),
    }
}

/// The agent's ingress and egress programs, as attached to pod 0's veth.
pub fn agent_programs(node: &SimNode) -> Result<(u32, u32)> {
    let veth = node.pod_veth(0)?;
    Ok((
        attached_program(node, veth, BPF_TCX_INGRESS, INGRESS)?,
        attached_program(node, veth, BPF_TCX_EGRESS, EGRESS)?,
    ))
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// BPF_PROG_QUERY of an interface's TCX hook, from the calling thread's namespace.
fn query_tcx(ifname: &str, attach_type: u32) -> Result<Vec<u32>> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "no interface {ifname}");
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr, "BPF_PROG_QUERY")?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
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

// bpf(2) commands and the parts of `union bpf_attr` they read (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// bpf(2) with a `#[repr(C)]` attr; returns the fd (or value) or the OS error.
fn bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> Result<i32> {
    // SAFETY: `attr` is a live repr(C) struct matching the command's part of bpf_attr, and
    // the pointers inside it (if any) point at live buffers of the sizes they state.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(rc as i32)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// A TC program that only returns TC_ACT_UNSPEC, attached (TCX, appended) to ingress and
/// egress of some node interfaces: its bpf_stats run time is what the hook and the
/// stats' own clock reads cost, to subtract from nldns's. Detached on drop (closing the
/// link fds is what detaches a TCX link).
pub struct EmptyProgram {
    prog: ProgFd,
    links: Vec<ProgFd>,
}

impl EmptyProgram {
    pub fn attach(node: &SimNode, interfaces: &[&str]) -> Result<EmptyProgram> {
        // r0 = -1 (TC_ACT_UNSPEC); exit
        let insns: [u8; 16] = [
            0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0,
        ];
        let license = b"GPL\0";
        let mut name = [0u8; 16];
        name[..15].copy_from_slice(b"nldns_bench_nop");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        let prog = ProgFd(bpf(
            BPF_PROG_LOAD,
            &mut attr,
            "loading the empty TC program",
        )?);
        let interfaces: Vec<String> = interfaces.iter().map(|s| s.to_string()).collect();
        let prog_fd = prog.0 as u32;
        // Interface indexes and TCX links belong to the namespace of the calling thread.
        let links = node
            .node_netns()
            .run_inside(move || -> Result<Vec<ProgFd>> {
                let mut links = Vec::new();
                for ifname in &interfaces {
                    let c = std::ffi::CString::new(ifname.as_str())?;
                    // SAFETY: a valid NUL-terminated name.
                    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
                    anyhow::ensure!(ifindex != 0, "no interface {ifname} in the node");
                    for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                        let mut attr = LinkCreateAttr {
                            prog_fd,
                            target_ifindex: ifindex,
                            attach_type,
                            ..Default::default()
                        };
                        links.push(ProgFd(bpf(
                            BPF_LINK_CREATE,
                            &mut attr,
                            "attaching the empty TC program",
                        )?));
                    }
                }
                Ok(links)
            })??;
        Ok(EmptyProgram { prog, links })
    }

    /// run_time_ns and run_cnt, from the program fd's fdinfo.
    pub fn run_stats(&self) -> Result<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.prog.0))
            .context("reading the empty program's fdinfo")?;
        let field = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok((field("run_time_ns:"), field("run_cnt:")))
    }
}

impl Drop for EmptyProgram {
    fn drop(&mut self) {
        // Links first (detach), then the program.
        self.links.clear();
    }
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// An fd of a loaded program, closed on drop.
pub struct ProgFd(i32);

impl ProgFd {
    pub fn open(id: u32) -> Result<ProgFd> {
        let mut attr = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        Ok(ProgFd(bpf(
            BPF_PROG_GET_FD_BY_ID,
            &mut attr,
            &format!("BPF_PROG_GET_FD_BY_ID {id}"),
        )?))
    }

    /// Runs the program `repeat` times on `frame`; returns (verdict, mean ns per run as
    /// the kernel timed it).
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        let mut out = vec![0u8; frame.len() + 512];
        let mut attr = TestRunAttr {
            prog_fd: self.0 as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr, "BPF_PROG_TEST_RUN")?;
        Ok((attr.retval, attr.duration))
    }
}

impl Drop for ProgFd {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns.
        unsafe { libc::close(self.0) };
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
    pub verdicts: String,
}

/// Runs the agent's programs `ingress` and `egress` (ids) on crafted frames, from a thread
/// inside the node namespace.
pub fn test_runs(node: &SimNode, ingress: u32, egress: u32, repeat: u32) -> Result<TestRuns> {
    node.node_netns().run_inside(move || -> Result<TestRuns> {
        let ingress = ProgFd::open(ingress)?;
        let egress = ProgFd::open(egress)?;
        let tcp = tcp_frame();
        let query = udp_frame([10, 244, 1, 10], KUBE_DNS_V4.octets(), 40000, 53);
        let reply = udp_frame([169, 254, 53, 53], [10, 244, 1, 10], 10053, 40000);
        let (vi, ingress_tcp) = ingress.test_run(&tcp, repeat)?;
        let (ve, egress_tcp) = egress.test_run(&tcp, repeat)?;
        let singles = 20_000;
        let mean_single = |prog: &ProgFd, frame: &[u8]| -> Result<(u32, f64)> {
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
        Ok(TestRuns {
            ingress_tcp,
            egress_tcp,
            ingress_dns_single,
            egress_dns_single,
            ingress_tcp_single,
            egress_tcp_single,
            // TC verdicts are ints; the programs return TC_ACT_UNSPEC (-1).
            verdicts: format!(
                "ingress tcp {}, egress tcp {}, ingress query {}, egress reply {}",
                vi as i32, ve as i32, vq as i32, vr as i32
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

/// A UDP frame carrying a DNS query for web.default.svc.cluster.local A.
fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut dns = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["web", "default", "svc", "cluster", "local"] {
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
