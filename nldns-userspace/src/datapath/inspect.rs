//! What nldns has in the kernel, found from the kernel itself rather than from a running
//! agent: `nldns status` works with no agent (and so shows leftovers), and `nldns cleanup`
//! removes leftovers. Ownership is recognised by program name (`nldns_*`) only, so
//! nobody else's filters are ever touched.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{links::Link, loaded_programs, ProgramInfo, SchedClassifier},
};
use futures::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption};
use nldns_common::{
    answers::{AnswerKey, KernelAnswer, KERNEL_ANSWERS_EGRESS, KERNEL_ANSWERS_PEER},
    map_names, program_names, DatapathConfig, ServiceAddr, ServiceSlot,
};
use rtnetlink::Handle;
use serde::Serialize;

use super::{
    attach::{AttachMode, Direction},
    loader::{from_service_addr, monotonic_ns, read_counters},
    sockhooks::{
        self,
        attach::netns_cookie,
        conflict::{ForeignSocketProgram, PodHookOrder},
        Cgroup, CgroupAttachment, CgroupTarget, PodCgroupTarget,
    },
    watcher::{link_name, list_links},
};

#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    pub direction: Direction,
    pub mode: AttachMode,
    pub program_id: u32,
    pub program_name: String,
    /// Netlink filters only: where the filter sits, so cleanup can remove exactly it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netlink_priority: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netlink_handle: Option<u32>,
}

/// One loaded copy of the datapath (one per agent process, or a leftover).
#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub ingress_program_id: Option<u32>,
    pub service_ips: Vec<IpAddr>,
    pub intercept_base_port: u16,
    /// None when the agent never beat (or stopped beating on shutdown).
    pub heartbeat_age_ms: Option<u64>,
    pub heartbeat_max_age_ms: u64,
    /// Whether the agent's intercept socket exists in this network namespace; the
    /// datapath passes everything without it (the agent exited or was killed).
    pub agent_socket_open: bool,
    /// Redirecting now: configured, fresh heartbeat and the agent's socket there.
    pub intercepting: bool,
    pub counters: BTreeMap<&'static str, u64>,
    /// The agent's network namespace (0 when its socket hooks are off).
    pub netns_cookie: u64,
    /// Cache hits answered in the kernel (`--kernel-answers`).
    pub kernel_answers: KernelAnswersStatus,
}

/// What `nldns status` says of kernel answers.
#[derive(Clone, Debug, Serialize)]
pub struct KernelAnswersStatus {
    /// `peer` or `egress` (how answers go back to the pod), or `off`.
    pub mode: &'static str,
    /// Entries the cache has published, and room for.
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub attachments: Vec<Attachment>,
    /// Our socket hooks on the cgroup2 root and on the cgroup asked about.
    pub cgroup_attachments: Vec<CgroupAttachment>,
    /// Other programs on connect(): a dataplane that rewrites ClusterIPs in the socket
    /// layer itself (Cilium kube-proxy replacement, Calico eBPF) sends host processes'
    /// queries to kube-dns pods before any nldns hook or TC program sees the ClusterIP.
    pub socket_lb_conflicts: Vec<ForeignSocketProgram>,
    /// The pods' hooks on the pods' cgroup, and whether they run before the dataplane's
    /// programs; None where there is no pods' cgroup (`--pod-cgroup none`, no kubelet).
    pub pod_hooks: Option<PodHookOrder>,
    pub instances: Vec<Instance>,
}

/// The cgroups status and cleanup look at: the cgroup2 root and the one given (if any).
pub fn cgroups_to_inspect(extra: Option<&str>) -> Vec<Cgroup> {
    let mut paths: Vec<PathBuf> = sockhooks::cgroup2_mount().into_iter().collect();
    if let Ok(Some(path)) = CgroupTarget::parse(extra).resolve() {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
        .iter()
        .filter_map(|p| match Cgroup::open(p) {
            Ok(cgroup) => Some(cgroup),
            Err(err) => {
                log::warn!("{err:#}");
                None
            }
        })
        .collect()
}

/// The pods' cgroup as the agent resolves it: `--pod-cgroup` under `--cgroup` (or under
/// the cgroup2 root).
pub fn pod_cgroup_to_inspect(node: Option<&str>, pods: Option<&str>) -> Option<Cgroup> {
    let root = match CgroupTarget::parse(node).resolve() {
        Ok(Some(root)) => root,
        _ => return None,
    };
    match PodCgroupTarget::parse(pods).resolve(&root) {
        Ok(Some(path)) => Cgroup::open(&path).ok(),
        Ok(None) => None,
        Err(err) => {
            log::warn!("{err:#}");
            None
        }
    }
}

pub async fn status(handle: &Handle, cgroups: &[Cgroup], pods: Option<&Cgroup>) -> Result<Status> {
    let attachments = attachments(handle).await?;
    let cgroup_attachments = cgroups
        .iter()
        .chain(pods)
        .flat_map(sockhooks::inspect::our_attachments)
        .collect();
    let hierarchy_root = sockhooks::cgroup2_mount();
    let pod_hooks = pods
        .zip(hierarchy_root.as_deref())
        .map(|(pods, root)| sockhooks::conflict::pod_hook_order(pods, root));
    let mut socket_lb_conflicts: Vec<ForeignSocketProgram> = Vec::new();
    for found in cgroups
        .iter()
        .flat_map(sockhooks::conflict::foreign_socket_programs)
    {
        // A child cgroup's effective list repeats the root's programs.
        if !socket_lb_conflicts
            .iter()
            .any(|f| f.program_id == found.program_id && f.hook == found.hook)
        {
            socket_lb_conflicts.push(found);
        }
    }
    let instances = local_ingress_programs(&attachments)
        .iter()
        .filter_map(|p| match instance(p) {
            Ok(instance) => Some(instance),
            Err(err) => {
                log::warn!("cannot read maps of program {}: {err:#}", p.id());
                None
            }
        })
        .collect();
    Ok(Status {
        attachments,
        cgroup_attachments,
        socket_lb_conflicts,
        pod_hooks,
        instances,
    })
}

/// Every nldns program attached anywhere in this network namespace, TCX and netlink.
pub async fn attachments(handle: &Handle) -> Result<Vec<Attachment>> {
    let mut found = Vec::new();
    for link in list_links(handle).await? {
        let Some(name) = link_name(&link) else {
            continue;
        };
        let index = link.header.index;
        for direction in Direction::BOTH {
            // TCX: Debian's bpftool 7.1 cannot decode these, so this is the way to see them.
            if let Ok((_, programs)) = SchedClassifier::query_tcx(name, direction.tc_type()) {
                for program in programs.iter().filter(|p| is_ours(p)) {
                    found.push(Attachment {
                        interface: name.to_string(),
                        direction,
                        mode: AttachMode::Tcx,
                        program_id: program.id(),
                        program_name: program.name_as_str().unwrap_or("").to_string(),
                        netlink_priority: None,
                        netlink_handle: None,
                    });
                }
            }
            for filter in netlink_filters(handle, index, direction).await? {
                found.push(Attachment {
                    interface: name.to_string(),
                    ..filter
                });
            }
        }
    }
    Ok(found)
}

async fn netlink_filters(
    handle: &Handle,
    index: u32,
    direction: Direction,
) -> Result<Vec<Attachment>> {
    let request = handle.traffic_filter(index as i32).get();
    let request = match direction {
        Direction::Ingress => request.ingress(),
        Direction::Egress => request.egress(),
    };
    // An interface without a clsact qdisc answers with an error: no filters there.
    let messages: Vec<TcMessage> = match request.execute().try_collect().await {
        Ok(messages) => messages,
        Err(_) => return Ok(Vec::new()),
    };
    let mut found = Vec::new();
    for message in messages {
        let mut name = None;
        let mut id = None;
        for attribute in &message.attributes {
            if let TcAttribute::Options(options) = attribute {
                for option in options {
                    match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                        _ => {}
                    }
                }
            }
        }
        let (Some(name), Some(id)) = (name, id) else {
            continue;
        };
        // The filter name is the program's name, possibly with an object prefix.
        if !name.contains(program_names::PREFIX) {
            continue;
        }
        found.push(Attachment {
            interface: String::new(),
            direction,
            mode: AttachMode::Netlink,
            program_id: id,
            program_name: name,
            netlink_priority: Some((message.header.info >> 16) as u16),
            netlink_handle: Some(message.header.handle.into()),
        });
    }
    Ok(found)
}

fn is_ours(program: &ProgramInfo) -> bool {
    program
        .name_as_str()
        .is_some_and(|n| n.starts_with(program_names::PREFIX))
}

/// The maps a program uses, by name.
fn program_maps(program: &ProgramInfo) -> Result<BTreeMap<String, MapData>> {
    let mut maps = BTreeMap::new();
    for id in program.map_ids()?.unwrap_or_default() {
        let data = MapData::from_id(id)?;
        let name = data.info()?.name_as_str().unwrap_or("").to_string();
        maps.insert(name, data);
    }
    Ok(maps)
}

fn take_map(maps: &mut BTreeMap<String, MapData>, name: &str, program_id: u32) -> Result<Map> {
    let data = maps
        .remove(name)
        .with_context(|| format!("program {program_id} has no map {name}"))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// The ingress programs of every loaded nldns datapath (one per agent, or leftovers).
fn ingress_programs() -> impl Iterator<Item = ProgramInfo> {
    loaded_programs().filter_map(|p| p.ok()).filter(|p| {
        let name = p.name_as_str();
        name == Some(program_names::INGRESS) || name == Some(program_names::ANSWERING_INGRESS)
    })
}

/// BPF programs are global to the machine, not per network namespace: the instances
/// that serve this one are those attached here, or hooking this namespace's sockets.
/// A datapath of another nldns version (another map layout) is skipped.
fn local_ingress_programs(attached_here: &[Attachment]) -> Vec<ProgramInfo> {
    let this_netns = netns_cookie().unwrap_or(0);
    ingress_programs()
        .filter(|p| {
            attached_here.iter().any(|a| a.program_id == p.id())
                || config_of(p)
                    .is_ok_and(|(_, c)| c.netns_cookie != 0 && c.netns_cookie == this_netns)
        })
        .collect()
}

fn config_of(program: &ProgramInfo) -> Result<(Array<MapData, DatapathConfig>, DatapathConfig)> {
    let mut maps = program_maps(program)?;
    let config: Array<_, DatapathConfig> =
        Array::try_from(take_map(&mut maps, map_names::CONFIG, program.id())?)?;
    let value = config.get(&0, 0)?;
    Ok((config, value))
}

/// Sets the datapath's aya-log level in the instances serving this network namespace,
/// without a restart. Returns how many instances were changed.
pub async fn set_log_level(handle: &Handle, level: u8) -> Result<usize> {
    let attached = attachments(handle).await?;
    let mut changed = 0;
    for program in local_ingress_programs(&attached) {
        let (mut config, mut value) = config_of(&program)?;
        value.log_level = level;
        config.set(0, value, 0)?;
        changed += 1;
    }
    Ok(changed)
}

/// Reads an instance's state through the maps its ingress program uses.
fn instance(program: &ProgramInfo) -> Result<Instance> {
    let mut maps = program_maps(program)?;
    let mut take = |name: &str| take_map(&mut maps, name, program.id());
    let config: Array<_, DatapathConfig> = Array::try_from(take(map_names::CONFIG)?)?;
    let config = config.get(&0, 0)?;
    let services: BpfHashMap<_, ServiceAddr, ServiceSlot> =
        BpfHashMap::try_from(take(map_names::SERVICES)?)?;
    let mut service_slots: Vec<(u32, IpAddr)> = services
        .iter()
        .filter_map(|entry| entry.ok())
        .map(|(addr, slot)| (slot.slot, from_service_addr(&addr)))
        .collect();
    service_slots.sort();
    let heartbeat: Array<_, u64> = Array::try_from(take(map_names::HEARTBEAT)?)?;
    let beat = heartbeat.get(&0, 0)?;
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(take(map_names::COUNTERS)?)?;
    let age = (beat != 0).then(|| monotonic_ns().saturating_sub(beat) / 1_000_000);
    let max_age = Duration::from_nanos(config.heartbeat_max_age_ns);
    let agent_socket_open = intercept_socket_bound(&config, service_slots.len());
    Ok(Instance {
        ingress_program_id: Some(program.id()),
        service_ips: service_slots.into_iter().map(|(_, ip)| ip).collect(),
        intercept_base_port: config.intercept_base_port,
        heartbeat_age_ms: age,
        heartbeat_max_age_ms: max_age.as_millis() as u64,
        agent_socket_open,
        intercepting: config.enabled == 1
            && agent_socket_open
            && age.is_some_and(|a| u128::from(a) <= max_age.as_millis()),
        counters: read_counters(&counters).into_iter().collect(),
        netns_cookie: config.netns_cookie,
        kernel_answers: kernel_answers_status(&config, &mut maps),
    })
}

fn kernel_answers_status(
    config: &DatapathConfig,
    maps: &mut BTreeMap<String, MapData>,
) -> KernelAnswersStatus {
    let mode = match config.kernel_answers {
        KERNEL_ANSWERS_PEER => "peer",
        KERNEL_ANSWERS_EGRESS => "egress",
        _ => "off",
    };
    let map = (mode != "off")
        .then(|| maps.remove(map_names::ANSWERS))
        .flatten();
    let capacity = map
        .as_ref()
        .and_then(|m| m.info().ok())
        .map_or(0, |i| i.max_entries());
    let table = map
        .and_then(|m| Map::from_map_data(m).ok())
        .and_then(|m| BpfHashMap::<_, AnswerKey, KernelAnswer>::try_from(m).ok());
    KernelAnswersStatus {
        mode,
        entries: table.as_ref().map_or(0, |t| t.keys().count()),
        capacity,
    }
}

/// Whether a UDP socket of this network namespace is bound to the instance's intercept
/// endpoint, on a port of its block: what the datapath's own socket lookup finds. Read
/// from /proc/net/udp{,6}, which list the sockets of the reader's namespace.
fn intercept_socket_bound(config: &DatapathConfig, slots: usize) -> bool {
    let ports = config.intercept_base_port..config.intercept_base_port.saturating_add(slots as u16);
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            bound_udp_sockets(&text).any(|(addr, port)| {
                ports.contains(&port)
                    && (addr == IpAddr::from(config.intercept_v4)
                        || addr == IpAddr::from(config.intercept_v6))
            })
        })
    })
}

/// The local addresses of a /proc/net/udp or udp6 table. Addresses are printed as 32-bit
/// words in the kernel's native byte order, ports as big-endian hex.
fn bound_udp_sockets(table: &str) -> impl Iterator<Item = (IpAddr, u16)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let local = line.split_whitespace().nth(1)?;
        let (addr, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let mut octets = Vec::with_capacity(16);
        for word in addr.as_bytes().chunks(8) {
            let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
            octets.extend_from_slice(&word.to_ne_bytes());
        }
        let addr = match octets.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(octets).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(octets).ok()?),
            _ => return None,
        };
        Some((addr, port))
    })
}

/// Whether the agent behind program `id` is alive and serving: its heartbeat is fresh
/// and its intercept socket exists (see [`Instance::intercepting`]).
pub fn program_is_live(id: u32) -> bool {
    ingress_programs()
        .filter(|p| p.id() == id)
        .filter_map(|p| instance(&p).ok())
        .any(|i| i.intercepting)
}

/// The id of the config map program `id` uses: it identifies the agent instance the
/// program belongs to.
fn config_map_id(id: u32) -> Option<u32> {
    let program = loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)?;
    program.map_ids().ok()??.into_iter().find(|&map| {
        MapData::from_id(map)
            .ok()
            .and_then(|data| data.info().ok())
            .is_some_and(|info| info.name_as_str() == Some(map_names::CONFIG))
    })
}

/// Removes nldns's netlink filters: those of dead agents (intercept socket gone) or hung
/// ones (stale heartbeat), or all of them with `all`. TCX links need no cleanup: they die with their process.
/// The clsact qdisc stays: other filters may use it, and it costs nothing.
pub async fn cleanup(handle: &Handle, all: bool) -> Result<Vec<Attachment>> {
    let found = attachments(handle).await?;
    // An ingress and an egress filter of one agent have different program ids but share
    // the agent's config map, so a filter is live when its program's config map is that
    // of a live ingress program. (Judging by interface instead would keep the filters of
    // an agent killed just before a restart forever: the new agent's live filters sit on
    // the same interfaces.)
    let live_instances: Vec<u32> = found
        .iter()
        .filter(|a| a.mode == AttachMode::Netlink && a.direction == Direction::Ingress)
        .filter(|a| program_is_live(a.program_id))
        .filter_map(|a| config_map_id(a.program_id))
        .collect();
    let mut removed = Vec::new();
    for attachment in found.into_iter().filter(|a| a.mode == AttachMode::Netlink) {
        let live =
            config_map_id(attachment.program_id).is_some_and(|id| live_instances.contains(&id));
        if live && !all {
            continue;
        }
        let (Some(priority), Some(handle_id)) =
            (attachment.netlink_priority, attachment.netlink_handle)
        else {
            continue;
        };
        let link = aya::programs::tc::SchedClassifierLink::attached(
            &attachment.interface,
            attachment.direction.tc_type(),
            priority,
            handle_id.into(),
            None,
        )?;
        match link.detach() {
            Ok(()) => removed.push(attachment),
            Err(err) => log::warn!(
                "could not remove filter {} on {} {:?}: {err}",
                attachment.program_name,
                attachment.interface,
                attachment.direction
            ),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_udp_tables_parse_to_local_addresses() {
        // As printed on a little-endian machine: 169.254.53.53:10053 and
        // [fd6e:6c64:6e73::53]:10054.
        let v4_word = u32::from_ne_bytes([169, 254, 53, 53]);
        let v4 = format!(
            "   sl  local_address rem_address   st\n  \
             12: {v4_word:08X}:2745 00000000:0000 07 00000000:00000000\n"
        );
        let v6_octets = "fd6e:6c64:6e73::53"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let v6_words: String = v6_octets
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let v6 = format!(
            "  sl  local_address                         remote_address\n  \
             3: {v6_words}:2746 00000000000000000000000000000000:0000 07\n"
        );
        assert_eq!(
            bound_udp_sockets(&v4).collect::<Vec<_>>(),
            vec![("169.254.53.53".parse().unwrap(), 10053)]
        );
        assert_eq!(
            bound_udp_sockets(&v6).collect::<Vec<_>>(),
            vec![("fd6e:6c64:6e73::53".parse().unwrap(), 10054)]
        );
        assert_eq!(bound_udp_sockets("header\n  garbage line\n").count(), 0);
    }
}
