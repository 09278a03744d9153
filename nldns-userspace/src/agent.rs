//! `nldns run`: start, attach, serve, shut down.
//!
//! Order matters for fail-open. At start the cache serves before anything is attached,
//! and the first heartbeat is written only after a query through the intercept socket
//! succeeded. At shutdown the heartbeat is cleared and ingress detached first (new
//! queries go to kube-dns at once), queries in flight drain, and egress goes last so
//! their replies still carry the Service IP.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    signal::unix::{signal, SignalKind},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::RunArgs,
    config,
    datapath::{
        attach::{AttachMode, Attachments, Direction},
        cgroup::{self, Cgroup, CgroupTarget},
        conflict, endpoint,
        endpoint::InterceptEndpoint,
        inspect,
        interfaces::InterfaceFilter,
        loader::{Datapath, DatapathSettings},
        watcher::{self, LinkEvent},
    },
    heartbeat, http, intercept, probe,
};
use nldns_dns::{memory, server, DnsConfig, DnsService};

/// The loaded programs and where they are attached; one lock for both because attach
/// and detach need the programs.
pub struct Interception {
    pub datapath: Datapath,
    pub attachments: Attachments,
}

impl Interception {
    fn detach(&mut self, direction: Direction) {
        self.attachments
            .detach_direction(&mut self.datapath, direction);
    }
}

fn lock(interception: &Mutex<Interception>) -> Result<std::sync::MutexGuard<'_, Interception>> {
    interception
        .lock()
        .map_err(|_| anyhow::anyhow!("interception lock poisoned"))
}

pub async fn run(args: RunArgs) -> Result<()> {
    let mode = args.attach_mode.resolve()?;
    let filter = InterfaceFilter::parse(&args.interfaces)?;
    let dns_config = config::dns_config(&args.dns_sources())?;
    let requested_endpoint = InterceptEndpoint {
        v4: args.intercept_v4,
        v6: args.intercept_v6,
        base_port: args.intercept_port,
    };
    for listen in &args.listen {
        if listen.ip() == IpAddr::V4(requested_endpoint.v4)
            || listen.ip() == IpAddr::V6(requested_endpoint.v6)
        {
            bail!(
                "--listen {listen} uses the intercept address, which belongs to the datapath alone"
            );
        }
    }

    let hooks_cgroup = socket_hooks_cgroup(&args, &dns_config)?;

    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    conflict::refuse_classic_node_local_dns(&handle, &args.service_ip).await?;
    if mode == AttachMode::Netlink {
        for removed in inspect::cleanup(&handle, false).await? {
            log::info!(
                "removed leftover filter {} on {} {:?}",
                removed.program_name,
                removed.interface,
                removed.direction
            );
        }
    }
    let endpoint_device = endpoint::install(&handle, &requested_endpoint).await?;

    let intercept::InterceptSockets { endpoint, udp, tcp } =
        intercept::bind(&requested_endpoint, &args.service_ip)?;
    log::info!(
        "intercept endpoint {} / {} ports {}..{} on {endpoint_device}",
        endpoint.v4,
        endpoint.v6,
        endpoint.base_port,
        endpoint.base_port + args.service_ip.len() as u16 - 1
    );
    let heartbeat_target = udp[0].local_addr()?;

    let (metrics, datapath_counters) = crate::metrics::with_datapath_counters();
    let dns = DnsService::new(dns_config, metrics.clone())?;
    let shutdown = CancellationToken::new();
    let mut servers = JoinSet::new();
    let udp_threads = args
        .udp_threads
        .map_or_else(default_udp_threads, usize::from);
    for socket in udp {
        servers.spawn(server::serve_udp_std(
            socket,
            dns.clone(),
            shutdown.clone(),
            udp_threads,
        ));
    }
    for listener in tcp {
        listener.set_nonblocking(true)?;
        servers.spawn(server::serve_tcp(
            tokio::net::TcpListener::from_std(listener)?,
            dns.clone(),
            shutdown.clone(),
        ));
    }
    for addr in &args.listen {
        let udp =
            std::net::UdpSocket::bind(addr).with_context(|| format!("--listen {addr} (udp)"))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--listen {addr} (tcp)"))?;
        servers.spawn(server::serve_udp_std(
            udp,
            dns.clone(),
            shutdown.clone(),
            udp_threads,
        ));
        servers.spawn(server::serve_tcp(tcp, dns.clone(), shutdown.clone()));
    }

    let max_age = Duration::from_millis(args.heartbeat_max_age_ms);
    let mut datapath = Datapath::load(&DatapathSettings {
        service_ips: args.service_ip.clone(),
        endpoint,
        heartbeat_max_age: max_age,
        log_level: args.datapath_log,
        netns_cookie: hooks_cgroup.as_ref().map_or(0, |(_, cookie)| *cookie),
    })?;
    if let Some(logger) = datapath.take_logger() {
        tokio::spawn(poll_datapath_log(logger));
    }
    heartbeat::probe(heartbeat_target, Duration::from_secs(2))
        .await
        .context("the cache does not answer on its own intercept socket")?;
    datapath.beat()?;
    // Loading parsed the object and the kernel's BTF: give those pages back.
    memory::release_free_memory();
    let interception = Arc::new(Mutex::new(Interception {
        datapath,
        attachments: Attachments::new(mode),
    }));
    {
        let interception = interception.clone();
        datapath_counters.set_source(Box::new(move || {
            interception
                .lock()
                .map(|i| i.datapath.counters())
                .unwrap_or_default()
        }));
    }

    let background = CancellationToken::new();
    let heartbeat_task = tokio::spawn(heartbeat::run(
        interception.clone(),
        heartbeat_target,
        max_age,
        background.clone(),
    ));
    let watching = Arc::new(AtomicBool::new(false));
    let watcher_task = tokio::spawn(follow_interfaces(
        interception.clone(),
        filter,
        watching.clone(),
    ));

    if mode == AttachMode::Netlink {
        tokio::spawn(sweep_dead_filters(max_age, background.clone()));
    }
    // /ready must not depend on client traffic having exercised the upstreams.
    tokio::spawn(probe_upstreams(dns.clone(), background.clone()));
    tokio::spawn(memory::trim_after_misses(
        metrics.clone(),
        Duration::from_secs(5),
        background.clone(),
    ));
    let ready = {
        let dns = dns.clone();
        let watching = watching.clone();
        Arc::new(move || watching.load(Ordering::Relaxed) && dns.upstream_reachable())
    };
    let http_state = Arc::new(http::HttpState {
        metrics: metrics.clone(),
        ready,
        healthy: Arc::new(|| true),
    });
    let mut http_addrs = vec![args.health_addr];
    if args.metrics_addr != args.health_addr {
        http_addrs.push(args.metrics_addr);
    }
    for addr in http_addrs {
        let listener = bind_http(addr).with_context(|| format!("HTTP address {addr}"))?;
        tokio::spawn(http::serve(
            listener,
            http_state.clone(),
            background.clone(),
        ));
    }
    if let Some(path) = &args.probe_socket {
        tokio::spawn(http::serve(
            probe::bind(path)?,
            http_state.clone(),
            background.clone(),
        ));
    }
    if let Some((cgroup, _)) = &hooks_cgroup {
        attach_socket_hooks(&interception, cgroup)?;
    }
    log::info!(
        "nldns intercepting {:?} in {mode:?} mode; cache upstreams {:?}",
        args.service_ip,
        args.upstream
    );

    wait_for_stop(&args, &dns).await?;

    log::info!("stopping: interception off, draining");
    // The heartbeat task first, so no late probe can refresh the beat we clear next.
    background.cancel();
    watcher_task.abort();
    let _ = heartbeat_task.await;
    {
        let mut interception = lock(&interception)?;
        let _ = interception.datapath.stop_beating();
        interception.detach(Direction::Ingress);
    }
    shutdown.cancel();
    let drained = tokio::time::timeout(Duration::from_millis(args.drain_timeout_ms), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!("drain timeout: some queries in flight were dropped");
    }
    lock(&interception)?.detach(Direction::Egress);
    // The socket hooks stay until the process exits (their links go with the datapath):
    // with the heartbeat cleared they already pass every connect()/sendmsg(), and the
    // recvmsg()/getpeername() restore is still needed by clients that got an answer.
    if mode == AttachMode::Netlink {
        // Filters of an agent that hung shortly before this one started looked alive
        // then; by now their heartbeat is stale. Leave the node with no dead filters.
        match inspect::cleanup(&handle, false).await {
            Ok(removed) if !removed.is_empty() => {
                log::info!("removed {} filters of dead agents", removed.len())
            }
            Ok(_) => {}
            Err(err) => log::warn!("sweeping dead agents' filters: {err:#}"),
        }
    }
    if let Some(path) = &args.probe_socket {
        let _ = std::fs::remove_file(path);
    }
    log::info!("stopped");
    Ok(())
}

/// Serving threads per UDP socket: one per two CPUs available (at least one, at most
/// 4). The clients of a node-local cache run on the same node: on the 2-CPU bench node
/// (dnsperf and the cache on the same CPUs) one thread per socket took fewer CPU ms per
/// query and sustained more than two, which split the batches and woke twice as often.
fn default_udp_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2).clamp(1, 4))
}

/// The cgroup for the host-network socket hooks, opened now (before anything could make
/// its path unreachable), with the netns cookie the hooks check; None when disabled.
fn socket_hooks_cgroup(args: &RunArgs, dns_config: &DnsConfig) -> Result<Option<(Cgroup, u64)>> {
    let target = CgroupTarget::parse(args.cgroup.as_deref());
    let path = match target.resolve() {
        Ok(Some(path)) => path,
        Ok(None) => return Ok(None),
        // No cgroup2 at all (a v1-only host): pod interception still works.
        Err(err) if target == CgroupTarget::Root => {
            log::warn!("no host-network interception: {err:#}");
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let cgroup = Cgroup::open(&path)?;
    let Some(cookie) = cgroup::netns_cookie() else {
        log::warn!(
            "no host-network interception: the kernel does not give network namespace \
             cookies (SO_NETNS_COOKIE, Linux 5.14), without which the socket hooks could \
             not tell the node's sockets from the pods'"
        );
        return Ok(None);
    };
    // The agent runs inside the hooked cgroup too: its own queries to an intercepted
    // Service IP would be sent back to itself.
    let looping: Vec<SocketAddr> = dns_config
        .cluster_upstreams
        .iter()
        .chain(&dns_config.default_upstreams)
        .filter(|u| u.port() == 53 && args.service_ip.contains(&u.ip()))
        .copied()
        .collect();
    if !looping.is_empty() {
        log::warn!(
            "no host-network interception: upstream(s) {looping:?} are intercepted Service \
             IPs, the cache would ask itself; use the uncached kube-dns Service as upstream"
        );
        return Ok(None);
    }
    Ok(Some((cgroup, cookie)))
}

/// Attaches the socket hooks (after the TC programs' watcher has started) and says so, or
/// warns about a dataplane that rewrites ClusterIPs in connect() before them.
fn attach_socket_hooks(interception: &Arc<Mutex<Interception>>, cgroup: &Cgroup) -> Result<()> {
    let attached = {
        let mut guard = interception
            .lock()
            .map_err(|_| anyhow::anyhow!("interception lock poisoned"))?;
        cgroup::attach(&mut guard.datapath, cgroup)?
    };
    log::info!(
        "host-network interception: {} socket hooks on {}",
        attached.len(),
        cgroup.path.display()
    );
    for foreign in cgroup::foreign_socket_programs(cgroup) {
        log::warn!(
            "{} program {} (id {}) also runs for {}: likely {}. It rewrites ClusterIPs in \
             connect() itself; host-network DNS may reach kube-dns pods without nldns",
            foreign.hook,
            foreign.program_name,
            foreign.program_id,
            foreign.cgroup,
            foreign.dataplane
        );
    }
    Ok(())
}

/// Netlink filters outlive their agent. The start-up cleanup removes those of agents
/// whose intercept socket is gone; a hung agent (socket still there) is judged by its
/// heartbeat, so dead agents' filters are swept again once such a heartbeat must have
/// gone stale, and then now and then.
async fn sweep_dead_filters(max_age: Duration, stop: CancellationToken) {
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

async fn probe_upstreams(dns: Arc<DnsService>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                dns.check_upstreams().await;
            }
        }
    }
}

/// HTTP listeners are shared with SO_REUSEPORT so that, during a surge upgrade, the new
/// agent can bind the same health and metrics ports as the old one on the same node.
fn bind_http(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

async fn follow_interfaces(
    interception: Arc<Mutex<Interception>>,
    filter: InterfaceFilter,
    watching: Arc<AtomicBool>,
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
                // One interface failing must not stop the others.
                match attachments.attach(datapath, &name) {
                    Ok(()) => log::info!("attached to {name}"),
                    Err(err) => log::warn!("not intercepting on {name}: {err:#}"),
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

/// Returns on SIGTERM or SIGINT. Reloads the config file on SIGHUP and when it changes.
async fn wait_for_stop(args: &RunArgs, dns: &Arc<DnsService>) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut last_modified = config_modified(args);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => reload(args, dns),
            _ = poll.tick() => {
                let modified = config_modified(args);
                if modified != last_modified {
                    last_modified = modified;
                    reload(args, dns);
                }
            }
        }
    }
}

fn config_modified(args: &RunArgs) -> Option<SystemTime> {
    let path = args.config.as_ref()?;
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn reload(args: &RunArgs, dns: &Arc<DnsService>) {
    match config::dns_config(&args.dns_sources()) {
        Ok(config) => {
            dns.reload(config);
            log::info!("configuration reloaded; cache kept");
        }
        // A bad edit must not take DNS down: keep serving with the last good config.
        Err(err) => log::error!("configuration not reloaded: {err:#}"),
    }
}

async fn poll_datapath_log(mut logger: crate::datapath::loader::DatapathLogger) {
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
