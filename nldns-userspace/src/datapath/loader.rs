//! Loading the datapath object (TC programs and cgroup socket hooks) and writing its
//! configuration maps.

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupSockAddr, SchedClassifier},
    Ebpf, EbpfLoader,
};
use nldns_common::{
    map_names, program_names, Counter, DatapathConfig, ServiceAddr, ServiceSlot, MAX_SERVICES,
};

use super::{endpoint::InterceptEndpoint, sockhooks::HOOKS};

/// The datapath object (the TC programs and the cgroup socket hooks), built by build.rs
/// from nldns-ebpf and embedded in the binary so the agent and its datapath can never be
/// out of step.
static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nldns-datapath"));

/// A loaded (not yet attached) datapath with its maps configured.
pub struct Datapath {
    ebpf: Ebpf,
    heartbeat: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    services: Vec<IpAddr>,
    logger: Option<DatapathLogger>,
}

/// Reader of the programs' aya-log ring buffer; `tasks::poll_datapath_log` drains it.
pub type DatapathLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Everything the programs need to know, set at run time (no recompilation).
#[derive(Clone, Debug)]
pub struct DatapathSettings {
    pub service_ips: Vec<IpAddr>,
    pub endpoint: InterceptEndpoint,
    pub heartbeat_max_age: Duration,
    /// 0 = off .. 5 = trace; debug (4) logs every rewrite.
    pub log_level: u8,
    /// The agent's network namespace cookie; 0 keeps the cgroup socket hooks inert (see
    /// `DatapathConfig::netns_cookie`).
    pub netns_cookie: u64,
    /// Also load the pods' set of socket hooks (`--pod-cgroup`).
    pub pod_hooks: bool,
}

impl Datapath {
    pub fn load(settings: &DatapathSettings) -> Result<Self> {
        if settings.service_ips.is_empty() {
            bail!("at least one --service-ip is needed");
        }
        if settings.service_ips.len() > MAX_SERVICES as usize {
            bail!(
                "{} service IPs given; the datapath handles at most {MAX_SERVICES}",
                settings.service_ips.len()
            );
        }
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new().load(DATAPATH_OBJECT).context(
            "loading the datapath object into the kernel (needs CAP_BPF and CAP_NET_ADMIN)",
        )?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::debug!("datapath logging unavailable: {err}");
                None
            }
        };
        for name in [program_names::INGRESS, program_names::EGRESS] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        if settings.netns_cookie != 0 {
            let pod_programs = HOOKS
                .iter()
                .map(|h| h.pod_program)
                .filter(|_| settings.pod_hooks);
            for name in HOOKS.iter().map(|h| h.host_program).chain(pod_programs) {
                let program: &mut CgroupSockAddr = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the object"))?
                    .try_into()?;
                program
                    .load()
                    .with_context(|| format!("the kernel verifier rejected {name}"))?;
            }
        }

        write_services(&mut ebpf, &settings.service_ips)?;
        let config = DatapathConfig {
            intercept_v4: settings.endpoint.v4.octets(),
            intercept_v6: settings.endpoint.v6.octets(),
            intercept_base_port: settings.endpoint.base_port,
            enabled: 1,
            log_level: settings.log_level,
            heartbeat_max_age_ns: settings.heartbeat_max_age.as_nanos() as u64,
            netns_cookie: settings.netns_cookie,
        };
        let mut config_map: Array<_, DatapathConfig> =
            Array::try_from(map_mut(&mut ebpf, map_names::CONFIG)?)?;
        config_map.set(0, config, 0)?;

        let heartbeat = Array::try_from(take_map(&mut ebpf, map_names::HEARTBEAT)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)?;
        Ok(Datapath {
            ebpf,
            heartbeat,
            counters,
            services: settings.service_ips.clone(),
            logger,
        })
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// A loaded cgroup socket hook (see `sockhooks`); only when the settings had a netns
    /// cookie.
    pub fn sock_program_mut(&mut self, name: &str) -> Result<&mut CgroupSockAddr> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// Hands the log reader to whoever polls it.
    pub fn take_logger(&mut self) -> Option<DatapathLogger> {
        self.logger.take()
    }

    pub fn service_ips(&self) -> &[IpAddr] {
        &self.services
    }

    /// Records that the agent is serving now. Called by the heartbeat prober only after
    /// a real query through the intercept socket was answered.
    pub fn beat(&mut self) -> Result<()> {
        self.heartbeat.set(0, monotonic_ns(), 0)?;
        Ok(())
    }

    /// Makes the programs pass everything at once (shutdown, before detaching).
    pub fn stop_beating(&mut self) -> Result<()> {
        self.heartbeat.set(0, 0, 0)?;
        Ok(())
    }

    /// Counters summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        read_counters(&self.counters)
    }
}

pub fn read_counters(map: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    Counter::ALL
        .iter()
        .map(|c| {
            let total = map
                .get(&(*c as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            (c.name(), total)
        })
        .collect()
}

fn write_services(ebpf: &mut Ebpf, service_ips: &[IpAddr]) -> Result<()> {
    let reverse_entries: Vec<ServiceAddr> =
        service_ips.iter().map(|ip| to_service_addr(*ip)).collect();
    {
        let mut services: HashMap<_, ServiceAddr, ServiceSlot> =
            HashMap::try_from(map_mut(ebpf, map_names::SERVICES)?)?;
        for (slot, addr) in reverse_entries.iter().enumerate() {
            services.insert(addr, ServiceSlot { slot: slot as u32 }, 0)?;
        }
    }
    let mut reverse: Array<_, ServiceAddr> = Array::try_from(map_mut(ebpf, map_names::REVERSE)?)?;
    for (slot, addr) in reverse_entries.iter().enumerate() {
        reverse.set(slot as u32, addr, 0)?;
    }
    Ok(())
}

pub fn to_service_addr(ip: IpAddr) -> ServiceAddr {
    match ip {
        IpAddr::V4(v4) => ServiceAddr::from_v4(v4.octets()),
        IpAddr::V6(v6) => ServiceAddr::from_v6(v6.octets()),
    }
}

pub fn from_service_addr(addr: &ServiceAddr) -> IpAddr {
    match addr.as_v4() {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::from(addr.octets),
    }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so loading works there.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit from the valid pointer we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not lift RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
