//! The liveness heartbeat that keeps interception on.
//!
//! The datapath redirects only while the heartbeat in its map is fresh. The agent
//! refreshes it only after a real DNS query through its own intercept socket was
//! answered: a hung or wedged serving path stops the beat, and within the max age the
//! node's DNS falls back to kube-dns by itself.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RecordType},
};
use tokio::{net::UdpSocket, time};
use tokio_util::sync::CancellationToken;

use nldns_dns::HEARTBEAT_NAME;

/// What the heartbeat refreshes: the datapath's heartbeat map in the agent, anything in
/// a test. Called only after a probe through the intercept socket was answered.
pub trait Beat: Send + Sync + 'static {
    fn beat(&self) -> Result<()>;
}

/// A few probes per max age, so one lost probe never stops interception.
pub fn probe_period(max_age: Duration) -> Duration {
    max_age / 4
}

/// One probe: a query to `target`, answered within `timeout`.
pub async fn probe(target: SocketAddr, timeout: Duration) -> Result<()> {
    let local: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(target).await?;
    let id: u16 = rand::random();
    let mut query = Message::new(id, MessageType::Query, hickory_proto::op::OpCode::Query);
    query.add_query(Query::query(
        Name::from_ascii(HEARTBEAT_NAME).context("heartbeat name")?,
        RecordType::A,
    ));
    socket.send(&query.to_vec()?).await?;
    let mut buf = [0u8; 512];
    let n = time::timeout(timeout, socket.recv(&mut buf))
        .await
        .context("heartbeat query timed out")??;
    if buf.len() < 2 || n < 2 || u16::from_be_bytes([buf[0], buf[1]]) != id {
        bail!("heartbeat reply with the wrong id");
    }
    Ok(())
}

/// Probes `target` every `probe_period(max_age)` and beats on success, until `shutdown`.
pub async fn run(
    beat: impl Beat,
    target: SocketAddr,
    max_age: Duration,
    shutdown: CancellationToken,
) {
    let period = probe_period(max_age);
    let mut ticker = time::interval(period);
    ticker.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match probe(target, period).await {
            Ok(()) => {
                failures = 0;
                if let Err(err) = beat.beat() {
                    log::warn!("heartbeat map update failed: {err:#}");
                }
            }
            Err(err) => {
                failures += 1;
                // Say it once per outage, not four times a second.
                if failures == 1 {
                    log::warn!(
                        "serving path failed its self-check ({err:#}); interception will lapse"
                    );
                }
            }
        }
    }
}
