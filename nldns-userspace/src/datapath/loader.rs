//! Loading the datapath object (TC programs and cgroup socket hooks) and writing its
//! configuration maps.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupSockAddr, SchedClassifier},
    Ebpf, EbpfLoader,
};
use nldns_common::{
    answers::{ANSWER_ENTRIES_MAX, KERNEL_ANSWERS_OFF},
    map_names, program_names, Counter, DatapathConfig, ServiceAddr, ServiceSlot, MAX_SERVICES,
};

use super::{
    answers::{AnswerRedirect, KernelAnswerMap, KernelAnswersMode},
    endpoint::InterceptEndpoint,
    sockhooks::HOOKS,
};

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
    /// The ingress program loaded: `nldns_answer` with kernel answers, else
    /// `nldns_ingress`.
    ingress: &'static str,
    /// The answer table, with kernel answers on.
    answers: Option<Arc<KernelAnswerMap>>,
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
    /// `--kernel-answers` and how answers go back to the pod.
    pub kernel_answers: KernelAnswersMode,
    pub answer_redirect: AnswerRedirect,
    /// Entries of the answer table (and hit counters).
    pub answer_entries: u32,
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
        let mut loader = EbpfLoader::new();
        // The hit counters are a preallocated array (16 bytes an entry): one entry
        // without kernel answers.
        let entries = match settings.kernel_answers {
            KernelAnswersMode::Off => 1,
            _ => settings.answer_entries.clamp(1, ANSWER_ENTRIES_MAX),
        };
        loader
            .map_max_entries(map_names::ANSWERS, entries)
            .map_max_entries(map_names::ANSWER_HITS, entries);
        let mut ebpf = loader.load(DATAPATH_OBJECT).context(
            "loading the datapath object into the kernel (needs CAP_BPF and CAP_NET_ADMIN)",
        )?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::debug!("datapath logging unavailable: {err}");
                None
            }
        };
        load_classifier(&mut ebpf, program_names::EGRESS)?;
        let (ingress, answers_off) = load_ingress(&mut ebpf, settings.kernel_answers)?;
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
            kernel_answers: if answers_off.is_none() {
                settings.answer_redirect.config_value()
            } else {
                KERNEL_ANSWERS_OFF
            },
            _pad: [0; 7],
        };
        let mut config_map: Array<_, DatapathConfig> =
            Array::try_from(map_mut(&mut ebpf, map_names::CONFIG)?)?;
        config_map.set(0, config, 0)?;

        let heartbeat = Array::try_from(take_map(&mut ebpf, map_names::HEARTBEAT)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)?;
        let answers = match answers_off {
            Some(_) => None,
            None => Some(Arc::new(KernelAnswerMap::new(
                take_map(&mut ebpf, map_names::ANSWERS)?,
                take_map(&mut ebpf, map_names::ANSWER_HITS)?,
            )?)),
        };
        Ok(Datapath {
            ebpf,
            heartbeat,
            counters,
            services: settings.service_ips.clone(),
            logger,
            ingress,
            answers,
        })
    }

    /// The ingress program loaded: `nldns_answer` with kernel answers, else
    /// `nldns_ingress`.
    pub fn ingress_program(&self) -> &'static str {
        self.ingress
    }

    /// The answer table the cache publishes to; `None` with kernel answers off.
    pub fn answer_table(&self) -> Option<Arc<KernelAnswerMap>> {
        self.answers.clone()
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

fn load_classifier(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel verifier rejected {name}"))
}

/// Loads the answering ingress program, or the plain one: with `auto` when the verifier
/// refuses the responder (then a warning says why), with `off` always. Returns the name
/// loaded and, when kernel answers are off, why.
fn load_ingress(
    ebpf: &mut Ebpf,
    mode: KernelAnswersMode,
) -> Result<(&'static str, Option<String>)> {
    if mode == KernelAnswersMode::Off {
        load_classifier(ebpf, program_names::INGRESS)?;
        return Ok((program_names::INGRESS, Some("--kernel-answers off".into())));
    }
    match load_classifier(ebpf, program_names::ANSWERING_INGRESS) {
        Ok(()) => Ok((program_names::ANSWERING_INGRESS, None)),
        Err(err) if mode == KernelAnswersMode::Auto => {
            log::warn!(
                "kernel answers off, the agent answers every cache hit: {err:#} \
                 (--kernel-answers auto)"
            );
            load_classifier(ebpf, program_names::INGRESS)?;
            Ok((program_names::INGRESS, Some(format!("{err:#}"))))
        }
        Err(err) => Err(err.context("--kernel-answers on")),
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
