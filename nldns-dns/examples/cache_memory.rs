//! Memory per cached answer, measured rather than guessed: fills the answer cache with
//! distinct cluster names (`svc-<i>.ns-<j>.svc.cluster.local.` A answers, prepared and
//! keyed exactly as the service stores them) and reports, per entry, the heap bytes
//! asked for (a counting global allocator), what glibc malloc holds for them (chunk
//! headers and rounding included, `mallinfo2`) and the process's RSS.
//!
//! `--service` runs the whole service instead: that many distinct misses through
//! [`DnsService::handle`] on a two-worker tokio runtime (as the agent runs it) against a
//! DNS server on 127.0.0.1 (a child process), so upstream sockets, the coalescing map,
//! per-query allocations and malloc's per-thread arenas count too.
//!
//! Run (release, as the agent ships):
//! `cargo run --release -p nldns-dns --example cache_memory -- [--names N] [--records R] [--service]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use nldns_dns::answer::{prepare, TtlPolicy};
use nldns_dns::cache::{Cache, CacheKey};
use nldns_dns::metrics::Metrics;
use nldns_dns::{wire, DnsConfig, DnsService, Protocol};

/// Counts live heap bytes and allocations on top of the system allocator (glibc).
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
/// Highest `LIVE_BYTES` seen (transient peaks decide how far the heap grows).
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    let now = LIVE_BYTES.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One reading of everything this tool reports.
#[derive(Clone, Copy)]
struct Snapshot {
    live_bytes: isize,
    live_allocs: isize,
    peak_bytes: isize,
    /// glibc: bytes in chunks handed out (all arenas, headers and rounding included).
    malloc_in_use: usize,
    /// glibc: bytes obtained from the kernel for the heap (all arenas, mmapped chunks).
    malloc_arena: usize,
    rss_kib: u64,
}

fn snapshot() -> Snapshot {
    // SAFETY: mallinfo2 only reads malloc's statistics.
    let mi = unsafe { libc::mallinfo2() };
    Snapshot {
        live_bytes: LIVE_BYTES.load(Ordering::Relaxed),
        live_allocs: LIVE_ALLOCS.load(Ordering::Relaxed),
        peak_bytes: PEAK_BYTES.swap(0, Ordering::Relaxed),
        malloc_in_use: mi.uordblks + mi.hblkhd,
        malloc_arena: mi.arena + mi.hblkhd,
        rss_kib: rss_kib(),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn report(what: &str, before: Snapshot, after: Snapshot, entries: usize) {
    let per = |d: f64| d / entries.max(1) as f64;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let d_live = (after.live_bytes - before.live_bytes) as f64;
    let d_allocs = (after.live_allocs - before.live_allocs) as f64;
    let d_used = after.malloc_in_use as f64 - before.malloc_in_use as f64;
    let d_arena = after.malloc_arena as f64 - before.malloc_arena as f64;
    let d_rss = (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0;
    println!("{what}: {entries} entries");
    println!(
        "  live heap (asked for)    {:>8.1} B/entry  {:>5.2} allocations/entry  total {:.1} MiB",
        per(d_live),
        per(d_allocs),
        mib(d_live)
    );
    println!(
        "  peak live heap since the last reading: {:.1} MiB",
        mib(after.peak_bytes as f64)
    );
    println!(
        "  malloc chunks in use     {:>8.1} B/entry  total {:.1} MiB",
        per(d_used),
        mib(d_used)
    );
    println!(
        "  malloc heap from kernel  {:>8.1} B/entry  total {:.1} MiB",
        per(d_arena),
        mib(d_arena)
    );
    println!(
        "  RSS                      {:>8.1} B/entry  {:.1} -> {:.1} MiB",
        per(d_rss),
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0
    );
}

struct Args {
    names: usize,
    records: u8,
    service: bool,
    serve: bool,
    concurrency: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        names: 100_000,
        records: 2,
        service: false,
        serve: false,
        concurrency: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--names" => args.names = value()?.parse()?,
            "--records" => args.records = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--service" => args.service = true,
            "--serve" => args.serve = true,
            _ => bail!("unknown flag {flag}; see the file's header for usage"),
        }
    }
    Ok(args)
}

/// The i-th distinct name: 1000 namespaces with 100 services each, and so on.
fn name(i: usize) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local.", i % 1000)
}

fn client_query(name: &str, id: u16) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("valid name"),
        RecordType::A,
    ));
    msg.to_vec().expect("encodable query")
}

/// What kube-dns answers for a Service name: `records` A records, TTL 30.
fn answer_for(query: &Message, records: u8) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.response_code = ResponseCode::NoError;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    for q in &query.queries {
        reply.add_query(q.clone());
        for r in 1..=records {
            reply.add_answer(Record::from_rdata(
                q.name().clone(),
                30,
                RData::A(A::new(10, 96, 7, r)),
            ));
        }
    }
    if let Some(edns) = &query.edns {
        reply.set_edns(edns.clone());
    }
    reply
}

/// The cache alone, filled as the service's miss path fills it.
fn cache_only(args: &Args) -> Result<()> {
    let config = DnsConfig {
        max_entries: args.names,
        max_bytes: usize::MAX,
        ..DnsConfig::default()
    };
    let policy = TtlPolicy::new(
        config.min_ttl,
        config.cluster_max_ttl,
        config.negative_max_ttl,
        config.servfail_ttl,
    );
    let mut cache = Cache::new(nldns_dns::cache::CachePolicy {
        max_entries: config.max_entries,
        max_bytes: config.max_bytes,
        prefetch_min_hits: config.prefetch_min_hits,
        prefetch_percent: config.prefetch_percent,
        stale_max: config.serve_stale_max,
        stale_recheck: config.stale_recheck,
    });
    let now = Instant::now();
    let mut wire_bytes = 0usize;
    let before = snapshot();
    for i in 0..args.names {
        let name = name(i);
        let query = client_query(&name, 1);
        let mut lower = Vec::with_capacity(64);
        let info = wire::parse_query(&query, &mut lower)
            .map_err(|e| anyhow::anyhow!("parsing our own query: {e:?}"))?;
        let reply = answer_for(&Message::from_vec(&query)?, args.records);
        let prepared = prepare(reply, &policy, now)?;
        wire_bytes += prepared.answer.wire().len();
        let key = CacheKey {
            name: lower.into_boxed_slice(),
            qtype: info.qtype,
            qclass: info.qclass,
            flags: 0,
        };
        cache.insert(key, prepared.answer, 0);
    }
    let after = snapshot();
    let stats = cache.stats();
    anyhow::ensure!(
        stats.entries == args.names,
        "the cache must hold every name"
    );
    println!(
        "answers: {:.1} wire bytes on average; cache's own byte count {:.1} B/entry",
        wire_bytes as f64 / args.names as f64,
        stats.bytes as f64 / args.names as f64
    );
    report("cache only", before, after, stats.entries);
    drop(cache);
    Ok(())
}

/// A DNS server on 127.0.0.1 answering every A query like kube-dns, run as a child
/// process (this program with `--serve`) so its allocations do not count. Prints its
/// port, then serves until its stdin closes (when the parent exits).
fn serve(records: u8) -> Result<()> {
    use std::io::Write;
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    println!("{}", socket.local_addr()?.port());
    std::io::stdout().flush()?;
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if let Ok(bytes) = answer_for(&query, records).to_vec() {
            let _ = socket.send_to(&bytes, from);
        }
    }
}

/// Starts [`serve`] in a child process; it exits when the returned child is dropped.
fn spawn_upstream(records: u8) -> Result<(std::process::Child, SocketAddr)> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", "--records", &records.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the upstream")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let port: u16 = line.trim().parse().context("the upstream's port")?;
    Ok((child, SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
}

/// Distinct misses through the whole service.
fn service(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (_upstream, up) = spawn_upstream(args.records)?;
    runtime.block_on(async {
        let config = DnsConfig {
            cluster_upstreams: vec![up],
            max_entries: args.names + 1000,
            ..DnsConfig::default()
        };
        let svc = DnsService::new(config, Metrics::new())?;
        let idle = snapshot();
        let started = Instant::now();
        let names = args.names;
        let workers = args.concurrency.max(1);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let mut answered = 0usize;
                for i in (w..names).step_by(workers) {
                    let query = client_query(&name(i), i as u16);
                    if let Some(reply) = svc.answer(&query, Protocol::Udp).await {
                        answered += usize::from(wire::rcode(&reply) == 0);
                    }
                }
                answered
            }));
        }
        let mut answered = 0;
        for t in tasks {
            answered += t.await?;
        }
        // Let upstream sockets close and tasks finish before reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = snapshot();
        println!(
            "service: {answered}/{names} answered NOERROR in {:.1?}",
            started.elapsed()
        );
        report("service, after the misses", idle, after, names);
        let trim = Instant::now();
        nldns_dns::memory::release_free_memory();
        let took = trim.elapsed();
        report(
            &format!("service, after malloc_trim(0) (took {took:.1?})"),
            idle,
            snapshot(),
            names,
        );
        Ok(())
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.serve {
        return serve(args.records);
    }
    println!("start: RSS {:.1} MiB", rss_kib() as f64 / 1024.0);
    if args.service {
        service(&args)
    } else {
        cache_only(&args)
    }
}
