//! The datapath's own long-running jobs, which the agent starts in its phases: following
//! interfaces, attaching the socket hooks, sweeping dead agents' filters and draining the
//! programs' log.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::{
    inspect,
    interception::{lock, Interception},
    interfaces::InterfaceFilter,
    loader::DatapathLogger,
    sockhooks::{self, attach::PodHookLinks, Cgroup},
    watcher::{self, LinkEvent},
};

/// Told of each setup step that failed, by kind ("interface": attaching to a pod
/// interface); the agent counts them in `coredns_nodecache_setup_errors_total`.
pub type SetupErrors = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Attaches the TC programs to every interface `filter` matches, now and as interfaces
/// appear, and forgets the ones that go. `watching` is true while link events flow (the
/// agent is not ready without it). One interface failing never stops the others.
pub async fn follow_interfaces(
    interception: Arc<Mutex<Interception>>,
    filter: InterfaceFilter,
    watching: Arc<AtomicBool>,
    setup_errors: SetupErrors,
) {
    let mut events = match watcher::watch_links().await {
        Ok(events) => events,
        Err(err) => {
            log::error!("cannot follow interfaces: {err:#}");
            return;
        }
    };
    watching.store(true, Ordering::Relaxed);
    while let Some(event) = events.recv().await {
        let Ok(mut guard) = interception.lock() else {
            return;
        };
        let Interception {
            datapath,
            attachments,
        } = &mut *guard;
        match event {
            LinkEvent::Present(name)
                if filter.matches(&name) && !attachments.is_attached(&name) =>
            {
                match attachments.attach(datapath, &name) {
                    Ok(()) => log::info!("attached to {name}"),
                    Err(err) => {
                        setup_errors("interface");
                        log::warn!("not intercepting on {name}: {err:#}")
                    }
                }
            }
            LinkEvent::Gone(name) if attachments.is_attached(&name) => {
                attachments.detach(datapath, &name);
                log::info!("{name} is gone");
            }
            _ => {}
        }
    }
    watching.store(false, Ordering::Relaxed);
}

/// Attaches the host-network socket hooks to `cgroup` and says so, or warns about a
/// dataplane that rewrites ClusterIPs in connect() before them. Host-network interception
/// is optional: where the kernel refuses the hooks (a program on the cgroup attached
/// without BPF_F_ALLOW_MULTI, which admits no other), the agent warns and goes on, and
/// host processes keep their path to kube-dns.
pub fn attach_socket_hooks(interception: &Mutex<Interception>, cgroup: &Cgroup) -> Result<()> {
    let attached = match sockhooks::attach::attach(&mut lock(interception)?.datapath, cgroup) {
        Ok(attached) => attached,
        Err(err) => {
            log::warn!("no host-network interception: {err:#}");
            return Ok(());
        }
    };
    log::info!(
        "host-network interception: {} socket hooks on {}",
        attached.len(),
        cgroup.path.display()
    );
    for foreign in sockhooks::conflict::foreign_socket_programs(cgroup) {
        log::warn!(
            "{} program {} (id {}) also runs for {}: likely {}. It rewrites ClusterIPs in \
             connect() itself; host-network processes outside the pods' cgroup may reach \
             kube-dns pods without nldns",
            foreign.hook,
            foreign.program_name,
            foreign.program_id,
            foreign.cgroup,
            foreign.dataplane
        );
    }
    Ok(())
}

/// Attaches the pods' socket hooks to `pods` and says where they stand against the
/// dataplane's programs: first (a pod's ClusterIP reaches nldns before a socket load
/// balancer), or not (warned; those pods' queries then take the dataplane's path, as
/// without nldns). The returned links must be held until the process exits. None (with
/// a warning) where the kernel refuses them: pods keep TC interception.
pub fn attach_pod_socket_hooks(
    interception: &Mutex<Interception>,
    pods: &Cgroup,
    hierarchy_root: &std::path::Path,
) -> Result<Option<PodHookLinks>> {
    // All or none: on an error the links made so far are dropped, which detaches them.
    let links = match sockhooks::attach::attach_pods(&mut lock(interception)?.datapath, pods) {
        Ok(links) => links,
        Err(err) => {
            log::warn!("no pods' socket hooks: {err:#}");
            return Ok(None);
        }
    };
    let order = sockhooks::conflict::pod_hook_order(pods, hierarchy_root);
    let dataplanes: Vec<String> = order
        .after_ours
        .iter()
        .map(|f| format!("{} ({} on {})", f.program_name, f.hook, f.cgroup))
        .collect();
    log::info!(
        "pod interception in the socket layer: {} socket hooks on {}{}",
        links.attachments.len(),
        pods.path.display(),
        if dataplanes.is_empty() {
            String::new()
        } else {
            format!(", running before {}", dataplanes.join(", "))
        }
    );
    for problem in &order.problems {
        log::warn!("{problem}; pods' DNS may bypass nldns");
    }
    Ok(Some(links))
}

/// Netlink filters outlive their agent. The start-up cleanup removes those of agents
/// whose intercept socket is gone; a hung agent (socket still there) is judged by its
/// heartbeat, so dead agents' filters are swept again once such a heartbeat must have
/// gone stale, and then now and then, until `stop`.
pub async fn sweep_dead_filters(max_age: Duration, stop: CancellationToken) {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        return;
    };
    tokio::spawn(connection);
    let mut wait = max_age * 2;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match inspect::cleanup(&handle, false).await {
            Ok(removed) => {
                for r in removed {
                    log::info!(
                        "removed dead agent's filter {} on {} {:?}",
                        r.program_name,
                        r.interface,
                        r.direction
                    );
                }
            }
            Err(err) => log::warn!("sweeping dead agents' filters: {err:#}"),
        }
        wait = Duration::from_secs(30);
    }
}

/// Forwards the programs' aya-log records to the agent's logger whenever the ring buffer
/// has some, for as long as the process runs.
pub async fn poll_datapath_log(mut logger: DatapathLogger) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&logger);
    // SAFETY: `raw` is owned by `logger`, which outlives `fd`: `fd` is declared later, so
    // it is dropped (and deregistered) first.
    let Ok(fd) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(raw, tokio::io::Interest::READABLE)
    }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        logger.flush();
        guard.clear_ready();
    }
}
