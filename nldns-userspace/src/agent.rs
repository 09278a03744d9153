//! `nldns run`: the agent's start-up and shutdown, as phases called in order.
//!
//! The order is the fail-open story. These invariants hold at every point, including
//! when a phase fails and the agent exits with an error:
//!
//! 1. **Nothing redirects before the cache answers.** The programs redirect only while
//!    the heartbeat in their map is fresh and the agent's intercept socket exists. The
//!    cache serves on the intercept sockets (`start_serving`) before the programs are
//!    loaded, the first heartbeat is written only after a real query through the
//!    intercept socket was answered (`prove_serving_path`), and nothing is attached to
//!    an interface or a cgroup before that.
//! 2. **A hung agent stops intercepting by itself.** The heartbeat is refreshed only by
//!    a probe through the intercept socket (`keep_beating`); when the serving path
//!    wedges the beats stop and, within `--heartbeat-max-age-ms`, the programs pass
//!    every query to kube-dns. A dead agent's intercept socket is gone: its programs
//!    pass everything at once.
//! 3. **No query is lost at attach.** On each interface egress is attached before
//!    ingress (`Attachments::attach`): a redirected query's reply always has its source
//!    rewritten back to the Service IP.
//! 4. **No query is lost at shutdown.** The heartbeat is cleared and ingress detached
//!    first (`stop_beating_and_detach_ingress`: new queries go to kube-dns at once),
//!    queries in flight are answered (`drain`), and egress goes last (`detach_egress`)
//!    so their replies still carry the Service IP. The socket hooks stay until the
//!    process exits: with the heartbeat cleared they pass every call already.
//! 5. **Nothing outlives the agent.** TCX links and cgroup links die with the process.
//!    Netlink filters do not: those of dead agents are removed at start
//!    (`refuse_conflicts`), swept while running (`tasks::sweep_dead_filters`) and at
//!    shutdown (`sweep`).
//! 6. **Never beside another interceptor of the same Service IP.** The classic
//!    node-local-dns is refused before any state is created (`refuse_conflicts`).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
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
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::RunArgs,
    config,
    datapath::{
        attach::{AttachMode, Attachments, Direction},
        conflict, endpoint,
        endpoint::InterceptEndpoint,
        inspect,
        interception::{lock, Interception},
        interfaces::InterfaceFilter,
        loader::{Datapath, DatapathSettings},
        sockhooks::{self, attach::netns_cookie, Cgroup, CgroupTarget, PodCgroupTarget},
        tasks,
    },
    heartbeat::{self, Beat},
    http, intercept,
    intercept::InterceptSockets,
    metrics::DatapathCounters,
    probe,
};
use nldns_dns::{memory, metrics::Metrics, server, DnsConfig, DnsService};

pub async fn run(args: RunArgs) -> Result<()> {
    // Start-up: every phase before `attach_interfaces` leaves the node's DNS untouched.
    let settings = read_settings(&args)?;
    let hooks_cgroups = open_hooks_cgroups(&args, &settings.dns_config)?;
    let netlink = refuse_conflicts(&args, settings.mode).await?;
    let endpoint_device = prepare_endpoint(&netlink, &settings.endpoint).await?;
    let runs = match hooks_cgroups.as_ref().and_then(|h| h.pods.as_ref()) {
        Some(_) => intercept::Runs::TcAndPodSockets,
        None => intercept::Runs::Tc,
    };
    let sockets = bind_intercept_sockets(&args, &settings.endpoint, &endpoint_device, runs)?;
    let serving = start_serving(&args, settings.dns_config, sockets).await?;
    let mut datapath = load_datapath(&args, serving.endpoint, hooks_cgroups.as_ref())?;
    publish_kernel_answers(&args, &serving, &datapath);
    prove_serving_path(&serving, &mut datapath).await?;
    let interception = share_interception(datapath, settings.mode, &serving.datapath_counters);
    let background = CancellationToken::new();
    let beating = keep_beating(&interception, &serving, &args, &background);
    let following = attach_interfaces(&interception, settings.filter, &serving.metrics);
    start_upkeep(&args, settings.mode, &serving, &background);
    serve_health(&args, &serving, &following.watching, &background)?;
    // Held until the process exits: dropping them detaches the pods' hooks.
    let mut _pod_hooks = None;
    if let Some(cgroups) = &hooks_cgroups {
        tasks::attach_socket_hooks(&interception, &cgroups.node)?;
        if let Some(pods) = &cgroups.pods {
            _pod_hooks =
                tasks::attach_pod_socket_hooks(&interception, pods, &cgroups.hierarchy_root)?;
        }
    }
    log::info!(
        "nldns intercepting {:?} in {:?} mode; cache upstreams {:?}",
        args.service_ip,
        settings.mode,
        args.upstream
    );

    wait_for_stop(&args, &serving.dns).await?;

    // Shutdown.
    log::info!("stopping: interception off, draining");
    stop_beating_and_detach_ingress(&interception, background, beating, following).await?;
    drain(serving, Duration::from_millis(args.drain_timeout_ms)).await;
    detach_egress(&interception)?;
    if settings.mode == AttachMode::Netlink {
        sweep(&netlink).await;
    }
    if let Some(path) = &args.probe_socket {
        let _ = std::fs::remove_file(path);
    }
    log::info!("stopped");
    Ok(())
}

/// What `nldns run` was asked to do, checked before anything is touched.
struct Settings {
    mode: AttachMode,
    filter: InterfaceFilter,
    dns_config: DnsConfig,
    endpoint: InterceptEndpoint,
}

/// Phase: parse and check the arguments and the DNS configuration. No side effects; an
/// error here exits before the node is touched.
fn read_settings(args: &RunArgs) -> Result<Settings> {
    let mode = args.attach_mode.resolve()?;
    let filter = InterfaceFilter::parse(&args.interfaces)?;
    let dns_config = config::dns_config(&args.dns_sources())?;
    let endpoint = InterceptEndpoint {
        v4: args.intercept_v4,
        v6: args.intercept_v6,
        base_port: args.intercept_port,
    };
    for listen in &args.listen {
        if listen.ip() == IpAddr::V4(endpoint.v4) || listen.ip() == IpAddr::V6(endpoint.v6) {
            bail!(
                "--listen {listen} uses the intercept address, which belongs to the datapath alone"
            );
        }
    }
    Ok(Settings {
        mode,
        filter,
        dns_config,
        endpoint,
    })
}

/// Phase: refuse to run beside the classic node-local-dns on the same Service IP, and (in
/// netlink mode) remove the filters of dead agents. Returns the rtnetlink handle the
/// later phases use.
async fn refuse_conflicts(args: &RunArgs, mode: AttachMode) -> Result<rtnetlink::Handle> {
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
    Ok(handle)
}

/// Phase: the intercept addresses on a device of their own. Returns the device's name.
async fn prepare_endpoint(
    handle: &rtnetlink::Handle,
    requested: &InterceptEndpoint,
) -> Result<String> {
    endpoint::install(handle, requested).await
}

/// Phase: bind the UDP and TCP intercept sockets for every Service IP's slot. From here
/// on the programs would find the agent's socket (they are not loaded yet).
fn bind_intercept_sockets(
    args: &RunArgs,
    requested: &InterceptEndpoint,
    device: &str,
    runs: intercept::Runs,
) -> Result<InterceptSockets> {
    let sockets = intercept::bind(requested, &args.service_ip, runs)?;
    let endpoint = &sockets.endpoint;
    let last_slot = args.service_ip.len() as u16 - 1;
    let pod_ports = match runs {
        intercept::Runs::Tc => String::new(),
        intercept::Runs::TcAndPodSockets => {
            let first = endpoint.base_port + nldns_common::POD_SOCKET_PORTS;
            format!(", pod sockets {first}..{}", first + last_slot)
        }
    };
    log::info!(
        "intercept endpoint {} / {} ports {}..{}{pod_ports} on {device}",
        endpoint.v4,
        endpoint.v6,
        endpoint.base_port,
        endpoint.base_port + last_slot
    );
    Ok(sockets)
}

/// The cache and its servers, up before the datapath.
struct Serving {
    dns: Arc<DnsService>,
    metrics: Arc<Metrics>,
    datapath_counters: Arc<DatapathCounters>,
    /// The endpoint the intercept sockets were bound on (their port block).
    endpoint: InterceptEndpoint,
    /// The first intercept socket: where the heartbeat probes.
    heartbeat_target: SocketAddr,
    servers: JoinSet<std::io::Result<()>>,
    /// Stops the servers (after the drain starts).
    shutdown: CancellationToken,
}

/// Phase: the cache serves on the intercept sockets and on every `--listen` address.
/// Nothing is redirected to it yet.
async fn start_serving(
    args: &RunArgs,
    dns_config: DnsConfig,
    sockets: InterceptSockets,
) -> Result<Serving> {
    let InterceptSockets { endpoint, udp, tcp } = sockets;
    let heartbeat_target = udp[0].local_addr()?;
    let (metrics, datapath_counters) = crate::metrics::with_datapath_counters();
    // CoreDNS's `server` label: an intercept socket is named after the Service IP its
    // queries were sent to (slot i of each run of ports serves Service IP i).
    for (socket, service_ip) in udp.iter().zip(args.service_ip.iter().cycle()) {
        let asked = SocketAddr::new(*service_ip, 53);
        metrics.set_server_label(socket.local_addr()?, format!("dns://{asked}"));
    }
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
    Ok(Serving {
        dns,
        metrics,
        datapath_counters,
        endpoint,
        heartbeat_target,
        servers,
        shutdown,
    })
}

/// Phase: load the programs and write their configuration; their log is drained from
/// now on. Loaded, not attached, and with no heartbeat: they would pass everything.
fn load_datapath(
    args: &RunArgs,
    endpoint: InterceptEndpoint,
    hooks_cgroups: Option<&HookCgroups>,
) -> Result<Datapath> {
    let mut datapath = Datapath::load(&DatapathSettings {
        service_ips: args.service_ip.clone(),
        endpoint,
        heartbeat_max_age: Duration::from_millis(args.heartbeat_max_age_ms),
        log_level: args.datapath_log,
        netns_cookie: hooks_cgroups.map_or(0, |h| h.netns_cookie),
        pod_hooks: hooks_cgroups.is_some_and(|h| h.pods.is_some()),
        kernel_answers: args.kernel_answers,
        answer_redirect: args.kernel_answers_redirect,
        answer_entries: args.kernel_answers_entries,
    })?;
    if let Some(logger) = datapath.take_logger() {
        tokio::spawn(tasks::poll_datapath_log(logger));
    }
    Ok(datapath)
}

/// Phase: a real query through the intercept socket must be answered before the first
/// heartbeat is written. Fails (and the agent exits, nothing attached) otherwise.
async fn prove_serving_path(serving: &Serving, datapath: &mut Datapath) -> Result<()> {
    heartbeat::probe(serving.heartbeat_target, Duration::from_secs(2))
        .await
        .context("the cache does not answer on its own intercept socket")?;
    datapath.beat()?;
    // Loading parsed the object and the kernel's BTF: give those pages back.
    memory::release_free_memory();
    Ok(())
}

/// Phase: the datapath goes behind the lock its tasks share, and /metrics reads its
/// counters from now on.
fn share_interception(
    datapath: Datapath,
    mode: AttachMode,
    counters: &DatapathCounters,
) -> Arc<Mutex<Interception>> {
    let interception = Arc::new(Mutex::new(Interception {
        datapath,
        attachments: Attachments::new(mode),
    }));
    let source = interception.clone();
    counters.set_source(Box::new(move || {
        source
            .lock()
            .map(|i| i.datapath.counters())
            .unwrap_or_default()
    }));
    interception
}

/// The heartbeat writes the datapath's heartbeat map.
struct DatapathBeat(Arc<Mutex<Interception>>);

impl Beat for DatapathBeat {
    fn beat(&self) -> Result<()> {
        lock(&self.0)?.datapath.beat()
    }
}

/// Phase: keep the heartbeat fresh for as long as probes through the intercept socket
/// are answered, until `background` is cancelled.
fn keep_beating(
    interception: &Arc<Mutex<Interception>>,
    serving: &Serving,
    args: &RunArgs,
    background: &CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(heartbeat::run(
        DatapathBeat(interception.clone()),
        serving.heartbeat_target,
        Duration::from_millis(args.heartbeat_max_age_ms),
        background.clone(),
    ))
}

/// The interface follower and whether it is receiving link events (part of /ready).
struct Following {
    task: JoinHandle<()>,
    watching: Arc<AtomicBool>,
}

/// Phase: attach the TC programs to the matching interfaces, now and as they appear.
/// Interception starts here (the heartbeat is fresh).
fn attach_interfaces(
    interception: &Arc<Mutex<Interception>>,
    filter: InterfaceFilter,
    metrics: &Arc<Metrics>,
) -> Following {
    let watching = Arc::new(AtomicBool::new(false));
    let metrics = metrics.clone();
    let task = tokio::spawn(tasks::follow_interfaces(
        interception.clone(),
        filter,
        watching.clone(),
        Arc::new(move |errortype| count_setup_error(&metrics, errortype)),
    ));
    Following { task, watching }
}

/// Phase: the background jobs that keep the node tidy and the agent ready: the dead
/// filter sweep (netlink mode), the upstream check (so /ready does not depend on client
/// traffic having exercised the upstreams) and returning freed memory after misses.
fn start_upkeep(
    args: &RunArgs,
    mode: AttachMode,
    serving: &Serving,
    background: &CancellationToken,
) {
    if mode == AttachMode::Netlink {
        tokio::spawn(tasks::sweep_dead_filters(
            Duration::from_millis(args.heartbeat_max_age_ms),
            background.clone(),
        ));
    }
    tokio::spawn(probe_upstreams(serving.dns.clone(), background.clone()));
    tokio::spawn(memory::trim_after_misses(
        serving.metrics.clone(),
        Duration::from_secs(5),
        background.clone(),
    ));
}

/// Phase: /health, /ready and /metrics on their HTTP addresses and on the probe socket.
/// Ready means interfaces are followed and an upstream answers.
fn serve_health(
    args: &RunArgs,
    serving: &Serving,
    watching: &Arc<AtomicBool>,
    background: &CancellationToken,
) -> Result<()> {
    let ready = {
        let dns = serving.dns.clone();
        let watching = watching.clone();
        Arc::new(move || watching.load(Ordering::Relaxed) && dns.upstream_reachable())
    };
    let http_state = Arc::new(http::HttpState {
        metrics: serving.metrics.clone(),
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
    Ok(())
}

/// Shutdown phase: stop the background jobs (the heartbeat task first and for good, so
/// no late probe can refresh the beat cleared next), clear the heartbeat and detach
/// ingress. From here on new queries go to kube-dns.
async fn stop_beating_and_detach_ingress(
    interception: &Mutex<Interception>,
    background: CancellationToken,
    beating: JoinHandle<()>,
    following: Following,
) -> Result<()> {
    background.cancel();
    following.task.abort();
    let _ = beating.await;
    let mut interception = lock(interception)?;
    let _ = interception.datapath.stop_beating();
    interception.detach(Direction::Ingress);
    Ok(())
}

/// Shutdown phase: the servers stop taking queries and answer those in flight, for at
/// most `timeout`.
async fn drain(serving: Serving, timeout: Duration) {
    let Serving {
        shutdown,
        mut servers,
        ..
    } = serving;
    shutdown.cancel();
    let drained = tokio::time::timeout(timeout, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!("drain timeout: some queries in flight were dropped");
    }
}

/// Shutdown phase: detach egress, now that the replies of drained queries are out. The
/// socket hooks stay until the process exits (their links go with the datapath): with
/// the heartbeat cleared they already pass every connect()/sendmsg(), and the
/// recvmsg()/getpeername() restore is still needed by clients that got an answer.
fn detach_egress(interception: &Mutex<Interception>) -> Result<()> {
    lock(interception)?.detach(Direction::Egress);
    Ok(())
}

/// Shutdown phase (netlink mode): filters of an agent that hung shortly before this one
/// started looked alive then; by now their heartbeat is stale. Leave the node with no
/// dead filters.
async fn sweep(handle: &rtnetlink::Handle) {
    match inspect::cleanup(handle, false).await {
        Ok(removed) if !removed.is_empty() => {
            log::info!("removed {} filters of dead agents", removed.len())
        }
        Ok(_) => {}
        Err(err) => log::warn!("sweeping dead agents' filters: {err:#}"),
    }
}

/// Serving threads per UDP socket: one per two CPUs available (at least one, at most
/// 4). The clients of a node-local cache run on the same node: on the 2-CPU bench node
/// (dnsperf and the cache on the same CPUs) one thread per socket took fewer CPU ms per
/// query and sustained more than two, which split the batches and woke twice as often.
fn default_udp_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2).clamp(1, 4))
}

/// Where the socket hooks go, opened before anything could make the paths unreachable.
struct HookCgroups {
    /// The node's cgroup root (`--cgroup`): the host-network hooks.
    node: Cgroup,
    /// The pods' cgroup (`--pod-cgroup`): the pods' hooks, if they are to be attached.
    pods: Option<Cgroup>,
    /// The cgroup2 mount: the top of the ancestors whose attach flags decide whether the
    /// pods' hooks may go below them.
    hierarchy_root: PathBuf,
    /// The agent's network namespace cookie, which the hooks check.
    netns_cookie: u64,
}

/// Phase: the cgroups for the socket hooks, opened now, with the netns cookie the hooks
/// check. None (with a warning) when disabled or impossible: the socket hooks are
/// optional, TC interception of pods goes on without them. The pods' cgroup is left out
/// (with a warning) where hooks there would replace a dataplane's programs instead of
/// running before them.
fn open_hooks_cgroups(args: &RunArgs, dns_config: &DnsConfig) -> Result<Option<HookCgroups>> {
    let target = CgroupTarget::parse(args.cgroup.as_deref());
    let path = match target.resolve() {
        Ok(Some(path)) => path,
        Ok(None) => return Ok(None),
        // No cgroup2 at all (a v1-only host): pod interception still works.
        Err(err) if target == CgroupTarget::Root => {
            log::warn!("no socket hooks: {err:#}");
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let node = Cgroup::open(&path)?;
    // Checked before the kernel's support, so a wrong flag is an error everywhere.
    let pods_path = PodCgroupTarget::parse(args.pod_cgroup.as_deref()).resolve(&path)?;
    let Some(netns_cookie) = netns_cookie() else {
        log::warn!(
            "no socket hooks: the kernel does not give network namespace cookies \
             (SO_NETNS_COOKIE, Linux 5.14), without which the socket hooks could not tell \
             the node's sockets from the pods'; pods are intercepted by TC only"
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
            "no socket hooks: upstream(s) {looping:?} are intercepted Service IPs, the \
             cache would ask itself; use the uncached kube-dns Service as upstream"
        );
        return Ok(None);
    }
    let hierarchy_root = sockhooks::cgroup2_mount().unwrap_or_else(|| path.clone());
    let pods = match pods_path {
        None => {
            log::info!(
                "no pods' socket hooks (--pod-cgroup {}): pods are intercepted by TC only; \
                 a dataplane that load-balances Services in connect() would bypass nldns",
                args.pod_cgroup
                    .as_deref()
                    .unwrap_or("auto: no kubepods.slice or kubepods")
            );
            None
        }
        Some(pods_path) => {
            let blocking = sockhooks::conflict::overridable_ancestors(&pods_path, &hierarchy_root);
            for problem in &blocking {
                log::warn!(
                    "no pods' socket hooks on {}: {problem}",
                    pods_path.display()
                );
            }
            if blocking.is_empty() {
                Some(Cgroup::open(&pods_path)?)
            } else {
                None
            }
        }
    };
    Ok(Some(HookCgroups {
        node,
        pods,
        hierarchy_root,
        netns_cookie,
    }))
}

/// Phase: with kernel answers on, the cache publishes its entries to the datapath's
/// answer table and reads back every second what the kernel answered (hit counts for
/// prefetch, LRU recency, metrics). Until the heartbeat is fresh the datapath answers
/// nothing, like it redirects nothing.
fn publish_kernel_answers(args: &RunArgs, serving: &Serving, datapath: &Datapath) {
    let Some(table) = datapath.answer_table() else {
        return;
    };
    // Counted under the server label of the Service IP of each family (CoreDNS's
    // `server`), as the agent's own hits are.
    let label = |v4: bool| {
        args.service_ip
            .iter()
            .find(|ip| ip.is_ipv4() == v4)
            .or(args.service_ip.first())
            .map(|ip| format!("dns://{}", SocketAddr::new(*ip, 53)))
            .unwrap_or_default()
    };
    serving
        .dns
        .set_answer_table(Some(table), &label(true), &label(false));
    let dns = serving.dns.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            dns.sync_kernel_answers();
        }
    });
}

/// Checks the upstreams every 10 s, so /ready does not depend on client traffic.
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
        Err(err) => {
            count_setup_error(dns.metrics(), "configmap");
            log::error!("configuration not reloaded: {err:#}")
        }
    }
}

/// node-cache's setup error counter, by what failed.
fn count_setup_error(metrics: &Metrics, errortype: &'static str) {
    metrics
        .coredns
        .setup_errors
        .get_or_create(&nldns_dns::metrics::SetupErrorLabels { errortype })
        .inc();
}
