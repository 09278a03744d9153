//! Kernel answers, the agent's side: the `--kernel-answers` settings, and the
//! `NLDNS_ANSWERS` map with its hit counters behind the engine's `AnswerTable` (what the
//! cache publishes there, and when, is `nldns_dns::kernel_answers`).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use nldns_common::answers::{
    AnswerHits, AnswerKey, KernelAnswer, ANSWER_ENTRIES_MAX, KERNEL_ANSWERS_EGRESS,
    KERNEL_ANSWERS_PEER,
};
use nldns_dns::kernel_answers::{AnswerTable, TableError};

/// `--kernel-answers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelAnswersMode {
    /// On where the kernel's verifier accepts the responder; elsewhere a warning, and the
    /// agent answers every hit.
    Auto,
    /// Refuse to start without them.
    On,
    Off,
}

/// `--kernel-answers-redirect`: how an answer goes back to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AnswerRedirect {
    /// `bpf_redirect_peer`: into the pod's end of a veth or netkit pair, skipping the host
    /// end's egress (pod interfaces of every common CNI).
    Peer,
    /// `bpf_redirect` to the same interface's egress: any interface kind.
    Egress,
}

impl AnswerRedirect {
    /// `DatapathConfig::kernel_answers`.
    pub fn config_value(self) -> u8 {
        match self {
            AnswerRedirect::Peer => KERNEL_ANSWERS_PEER,
            AnswerRedirect::Egress => KERNEL_ANSWERS_EGRESS,
        }
    }
}

/// The loaded datapath's answer table.
pub struct KernelAnswerMap {
    entries: Mutex<HashMap<MapData, AnswerKey, KernelAnswer>>,
    hits: HitCounters,
}

impl KernelAnswerMap {
    pub fn new(entries: aya::maps::Map, hits: aya::maps::Map) -> Result<Self> {
        Ok(KernelAnswerMap {
            entries: Mutex::new(HashMap::try_from(entries).context("NLDNS_ANSWERS")?),
            hits: HitCounters::map(hits)?,
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, AnswerKey, KernelAnswer>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AnswerTable for KernelAnswerMap {
    fn publish(&self, key: &AnswerKey, answer: &KernelAnswer) -> Result<(), TableError> {
        self.entries().insert(key, answer, 0).map_err(|e| match &e {
            aya::maps::MapError::SyscallError(s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                TableError::Full
            }
            _ => TableError::Refused(e.to_string()),
        })
    }

    fn withdraw(&self, key: &AnswerKey) {
        let _ = self.entries().remove(key);
    }

    fn clear(&self) {
        let mut entries = self.entries();
        let keys: Vec<AnswerKey> = entries.keys().filter_map(|k| k.ok()).collect();
        for key in keys {
            let _ = entries.remove(&key);
        }
    }

    fn hits(&self, slot: u32) -> AnswerHits {
        self.hits.get(slot)
    }

    fn capacity(&self) -> u32 {
        self.hits.len
    }
}

/// `NLDNS_ANS_HITS` mapped into the agent's memory: the kernel adds to it, the agent reads
/// it every second without a syscall per entry.
struct HitCounters {
    base: *const AnswerHits,
    len: u32,
    bytes: usize,
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
}

// SAFETY: the mapping is read-only shared memory, valid until Drop; reads are volatile
// and any thread may do them.
unsafe impl Send for HitCounters {}
unsafe impl Sync for HitCounters {}

impl HitCounters {
    fn map(map: aya::maps::Map) -> Result<Self> {
        let aya::maps::Map::Array(map) = map else {
            anyhow::bail!("NLDNS_ANS_HITS is not an array map");
        };
        let len = map
            .info()
            .context("NLDNS_ANS_HITS")?
            .max_entries()
            .min(ANSWER_ENTRIES_MAX);
        let page = 4096;
        let bytes = (len as usize * std::mem::size_of::<AnswerHits>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared read-only mapping of an mmap-able array map's fd, of the
        // map's size rounded up to a page, as the kernel requires.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of NLDNS_ANS_HITS");
        }
        Ok(HitCounters {
            base: base.cast(),
            len,
            bytes,
            _map: map,
        })
    }

    fn get(&self, slot: u32) -> AnswerHits {
        if slot >= self.len {
            return AnswerHits::default();
        }
        // SAFETY: `slot` is within the mapped array; the kernel writes it concurrently
        // (atomic adds of aligned u64s), so the read is volatile and may see either value.
        unsafe { std::ptr::read_volatile(self.base.add(slot as usize)) }
    }
}

impl Drop for HitCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.bytes) };
    }
}
