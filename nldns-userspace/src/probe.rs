//! Exact per-agent probes: the agent also serves its HTTP endpoints on a unix socket, and
//! `nldns probe ready|health` asks it there.
//!
//! Why not just the health TCP port: during a surge upgrade two agents run on the node
//! with hostNetwork and share that port (SO_REUSEPORT), so the kubelet's HTTP probe of the
//! new pod may be answered by the old agent, and a new agent that cannot work could look
//! Ready and get its predecessor stopped. A socket in the pod's own directory (an
//! emptyDir) belongs to one agent alone; an exec probe running `nldns probe` in the
//! container reaches exactly its own agent.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

/// What `nldns probe` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeKind {
    /// /ready: the agent intercepts and its upstreams answer.
    Ready,
    /// /health: the agent's process serves.
    Health,
}

impl ProbeKind {
    fn path(self) -> &'static str {
        match self {
            ProbeKind::Ready => "/ready",
            ProbeKind::Health => "/health",
        }
    }
}

/// Binds the probe socket at `path`, replacing a socket file left by an earlier run (an
/// emptyDir survives container restarts). Only the owner may connect.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale probe socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "--probe-socket {} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the probe socket {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Asks the agent behind `socket` for `kind`; Ok if it answered 200.
pub fn check(socket: &Path, kind: ProbeKind, timeout: Duration) -> Result<()> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent's probe socket {}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET {} HTTP/1.0\r\nHost: nldns\r\n\r\n", kind.path());
    stream
        .write_all(request.as_bytes())
        .context("sending the probe")?;
    let mut response = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut response)
        .context("reading the probe's answer")?;
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().unwrap_or("");
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => bail!("{} answered {code}", kind.path()),
        None => bail!("no HTTP answer on {}: {status_line:?}", socket.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use tokio_util::sync::CancellationToken;

    use crate::http::HttpState;
    use nldns_dns::metrics::Metrics;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probe_asks_exactly_the_agent_behind_its_socket() {
        let dir = std::env::temp_dir().join(format!("nldns-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe.sock");
        // A stale socket file from an earlier run is replaced; any other file is not.
        std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(HttpState {
            metrics: Metrics::new(),
            ready: {
                let ready = ready.clone();
                Arc::new(move || ready.load(Ordering::SeqCst))
            },
            healthy: Arc::new(|| true),
        });
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(crate::http::serve(
            bind(&path).unwrap(),
            state,
            shutdown.clone(),
        ));

        let probe = |kind| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || check(&path, kind, Duration::from_secs(5)))
        };
        probe(ProbeKind::Health).await.unwrap().unwrap();
        let not_ready = probe(ProbeKind::Ready).await.unwrap().unwrap_err();
        assert!(not_ready.to_string().contains("503"), "{not_ready:#}");
        ready.store(true, Ordering::SeqCst);
        probe(ProbeKind::Ready).await.unwrap().unwrap();

        shutdown.cancel();
        server.await.unwrap().unwrap();
        let gone = probe(ProbeKind::Health).await.unwrap().unwrap_err();
        assert!(format!("{gone:#}").contains("probe socket"), "{gone:#}");

        let regular = dir.join("not-a-socket");
        std::fs::write(&regular, "keep me").unwrap();
        assert!(bind(&regular).is_err());
        assert_eq!(std::fs::read_to_string(&regular).unwrap(), "keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
