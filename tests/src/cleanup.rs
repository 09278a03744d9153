//! Teardown of runs: on drop, on SIGINT/SIGTERM, and by the sweep that removes leftovers of
//! earlier runs (crashed, SIGKILLed) by their `nldns-<id>-` prefix.
//!
//! A run is torn down by id, from what exists on the machine (namespaces, cgroup, work
//! directory), not from what the process remembers: the same code serves a clean drop, a
//! signal and a sweep of a run whose process is long gone.

use std::collections::BTreeSet;
use std::sync::{Mutex, Once};

use anyhow::Result;

use crate::{cgroup, netns, run};

/// Ids of the runs this process owns and has not torn down yet.
static LIVE_RUNS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static SIGNALS: Once = Once::new();

/// Records a live run so a signal (or the process's exit) can tear it down, and installs
/// the handlers once.
pub fn register(id: &str) {
    LIVE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string());
    SIGNALS.call_once(|| {
        install_signal_handler();
        // A node that is never dropped (kept in a static, leaked) is torn down when the
        // process exits normally; the test harness exits through exit(3), which runs this.
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(teardown_live_runs_at_exit) };
    });
}

extern "C" fn teardown_live_runs_at_exit() {
    // A panic must not cross the C boundary.
    let _ = std::panic::catch_unwind(|| {
        let ids = LIVE_RUNS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for id in ids {
            let _ = teardown(&id);
        }
    });
}

/// Forgets a run after its teardown.
pub fn unregister(id: &str) {
    LIVE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

/// Removes everything of run `id`: processes in its namespaces, the namespaces (and so
/// their veths), its cgroup and its work directory. Best effort: keeps going past errors
/// and returns the first one.
pub fn teardown(id: &str) -> Result<()> {
    let mut first_error = None;
    let prefix = format!("{}{id}-", run::PREFIX);
    match netns::list() {
        Ok(names) => {
            for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                if let Err(error) = netns::destroy(name) {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(error) => {
            first_error.get_or_insert(error);
        }
    }
    for path in cgroup::run_cgroup_dirs(&format!("{}{id}", run::PREFIX)) {
        if path.exists() {
            if let Err(error) = cgroup::destroy(&path) {
                first_error.get_or_insert(error);
            }
        }
    }
    let workdir = run::workdir_of(id);
    if workdir.exists() {
        if let Err(error) = std::fs::remove_dir_all(&workdir) {
            first_error.get_or_insert(error.into());
        }
    }
    // The owner record goes last: until then a sweep elsewhere sees the run as alive or
    // finds it by this record.
    let owner = run::owner_path(id);
    if owner.exists() {
        if let Err(error) = std::fs::remove_file(&owner) {
            first_error.get_or_insert(error.into());
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Tears down every run whose owner process is gone. Runs of live processes (this one's
/// included, and other engineers' concurrent test runs) are left alone.
pub fn sweep() -> Vec<String> {
    // One sweep at a time in this process: parallel tests would otherwise race each other.
    static SWEEPING: Mutex<()> = Mutex::new(());
    let _guard = SWEEPING.lock().unwrap_or_else(|e| e.into_inner());
    let mut ids = BTreeSet::new();
    if let Ok(names) = netns::list() {
        ids.extend(
            names
                .iter()
                .filter_map(|n| run::id_of_name(n))
                .map(str::to_string),
        );
    }
    let owner_dir = Some(std::path::PathBuf::from(run::OWNER_DIR));
    let cgroup_dirs = [cgroup::cgroup2_mount(), cgroup::v1_mount("memory")]
        .into_iter()
        .chain([cgroup::v1_mount("cpu")]);
    for dir in [Some(std::env::temp_dir()), owner_dir]
        .into_iter()
        .chain(cgroup_dirs)
        .flatten()
    {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_str().map(|n| n.trim_end_matches(".owner"));
                if let Some(id) = name.and_then(run::id_of_name) {
                    ids.insert(id.to_string());
                }
            }
        }
    }
    let live = LIVE_RUNS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut swept = Vec::new();
    for id in ids {
        if live.contains(&id) || run::owner_is_alive(&id) {
            continue;
        }
        match teardown(&id) {
            Ok(()) => eprintln!("nldns-tests: swept leftovers of run {id}"),
            Err(error) => eprintln!("nldns-tests: sweeping run {id}: {error:#}"),
        }
        swept.push(id);
    }
    swept
}

/// On SIGINT/SIGTERM, tear down every live run, then exit with the conventional status.
/// Replacing the default action is what lets Ctrl-C clean up; exiting afterwards keeps the
/// signal's meaning.
fn install_signal_handler() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("nldns-tests: no signal handler, Ctrl-C will leave namespaces: {error}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("nldns-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let ids = LIVE_RUNS.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for id in ids {
                    eprintln!("nldns-tests: signal {signal}, tearing down run {id}");
                    let _ = teardown(&id);
                }
                std::process::exit(128 + signal);
            }
        });
    if let Err(error) = spawned {
        eprintln!("nldns-tests: no signal thread: {error}");
    }
}
