//! One run of the harness: its id, its names and its work directory.
//!
//! Everything a run creates carries `nldns-<id>-` (namespaces, the work directory, the
//! cgroup), so that a later run can find leftovers by prefix. An owner record
//! (`/run/nldns-tests/nldns-<id>.owner`: pid + process start time) tells a sweep whether the
//! run is still alive. It lives at a fixed machine-wide path, not under `$TMPDIR`, so that
//! two engineers' concurrent runs with different temp directories still see each other as
//! alive; it is written before anything else exists, so a half-built run is never mistaken
//! for a leftover.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::Rng;

/// The fixed prefix of every name the harness creates.
pub const PREFIX: &str = "nldns-";
/// Run ids are this many lowercase hex digits: short enough for 15-character interface
/// names (`veth<id>p<i>`), long enough that two live runs do not collide.
pub const ID_LEN: usize = 6;

/// Where owner records live (one file per live run).
pub const OWNER_DIR: &str = "/run/nldns-tests";

/// A live run: its id and work directory, with the owner record already written.
#[derive(Debug)]
pub struct Run {
    id: String,
    workdir: PathBuf,
}

impl Run {
    /// Picks a fresh id and claims it by creating its owner record exclusively, then
    /// creates the work directory.
    pub fn create() -> Result<Run> {
        fs::create_dir_all(OWNER_DIR).with_context(|| format!("creating {OWNER_DIR}"))?;
        let mut rng = rand::rng();
        for _ in 0..32 {
            let id = format!("{:06x}", rng.random_range(0..0x100_0000u32));
            let workdir = workdir_of(&id);
            // An id whose work directory exists (a leftover not swept yet) is not free.
            if workdir.exists() {
                continue;
            }
            match write_owner(&owner_path(&id)) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error).context("writing the owner record"),
            }
            fs::create_dir(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
            return Ok(Run { id, workdir });
        }
        anyhow::bail!("no free run id after 32 tries")
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `nldns-<id>-<what>`, the name of a namespace (or other object) of this run.
    pub fn name(&self, what: &str) -> String {
        format!("{PREFIX}{}-{what}", self.id)
    }
}

/// The owner record of run `id`.
pub fn owner_path(id: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{PREFIX}{id}.owner"))
}

/// Where a run keeps its configs, zones and logs.
pub fn workdir_of(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{PREFIX}{id}"))
}

/// Extracts the run id from `nldns-<id>-...` (or the bare `nldns-<id>` of a work directory).
pub fn id_of_name(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let id = rest.get(..ID_LEN)?;
    let after = &rest[ID_LEN..];
    let well_formed = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (after.is_empty() || after.starts_with('-'));
    well_formed.then_some(id)
}

/// The third field of the owner record of a run that was kept on purpose.
pub const KEPT_MARK: &str = "kept";

/// Marks run `id`'s owner record as kept: sweeps leave the run alone after its creator
/// exits.
pub fn mark_kept(id: &str) -> Result<()> {
    let path = owner_path(id);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut fields = text.split_whitespace();
    let (Some(pid), Some(start)) = (fields.next(), fields.next()) else {
        anyhow::bail!("malformed owner record {}", path.display());
    };
    fs::write(&path, format!("{pid} {start} {KEPT_MARK}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether run `id` was kept on purpose.
pub fn is_kept(id: &str) -> bool {
    fs::read_to_string(owner_path(id))
        .is_ok_and(|text| text.split_whitespace().nth(2) == Some(KEPT_MARK))
}

/// Ids of the kept runs on this machine.
pub fn kept_runs() -> Vec<String> {
    let Ok(entries) = fs::read_dir(OWNER_DIR) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = id_of_name(name.strip_suffix(".owner")?)?.to_string();
            is_kept(&id).then_some(id)
        })
        .collect();
    ids.sort();
    ids
}

/// Creates the owner record; fails with AlreadyExists if the id is taken.
fn write_owner(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = process_start_time(pid)
        .ok_or_else(|| std::io::Error::other("cannot read our own start time"))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    writeln!(file, "{pid} {start}")
}

/// Whether the process that created run `id` is still alive. A missing or unreadable owner
/// record counts as dead: the run cannot be finished by anyone.
pub fn owner_is_alive(id: &str) -> bool {
    let Ok(text) = fs::read_to_string(owner_path(id)) else {
        return false;
    };
    let mut fields = text.split_whitespace();
    let (Some(pid), Some(start)) = (fields.next(), fields.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    // A node kept on purpose (`cargo xtask demo --keep`) outlives its creator; only an
    // explicit teardown (`--down`) removes it.
    if fields.next() == Some(KEPT_MARK) {
        return true;
    }
    // Comparing the start time too keeps a recycled pid from keeping a dead run "alive".
    process_start_time(pid) == Some(start)
}

/// Field 22 of /proc/<pid>/stat: the process start time in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_from_names() {
        assert_eq!(id_of_name("nldns-0a1b2c-node"), Some("0a1b2c"));
        assert_eq!(id_of_name("nldns-0a1b2c"), Some("0a1b2c"));
        assert_eq!(id_of_name("nldns-0a1b2c-pod12"), Some("0a1b2c"));
        assert_eq!(id_of_name("nldns-demo-node"), None);
        assert_eq!(id_of_name("nldns-0A1B2C-node"), None);
        assert_eq!(id_of_name("nldns-0a1b2cd-node"), None);
        assert_eq!(id_of_name("other-0a1b2c-node"), None);
    }

    #[test]
    fn our_own_start_time_is_readable() {
        assert!(process_start_time(std::process::id()).is_some());
    }
}
