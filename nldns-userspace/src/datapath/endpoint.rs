//! The intercept endpoint: where redirected queries land.
//!
//! It must belong to nldns alone (the egress program rewrites every reply that comes from
//! it), so it is a dedicated address and port range, never a `--listen` address. The
//! address lives on nldns's own `nldns0` dummy interface where the kernel has the dummy
//! driver, and on `lo` where it does not; both are local, so a query rewritten at TC
//! ingress is delivered to our sockets by the ordinary input path.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::{Handle, LinkDummy, LinkUnspec};

/// Link-local, never routed off the node.
pub const DEFAULT_INTERCEPT_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
/// ULA whose global ID spells "nldns" in hex; node-local only.
pub const DEFAULT_INTERCEPT_V6: Ipv6Addr = Ipv6Addr::new(0xfd6e, 0x6c64, 0x6e73, 0, 0, 0, 0, 0x53);
/// First intercept port. Slot N of an agent instance listens on base + N.
pub const DEFAULT_BASE_PORT: u16 = 10053;
pub const OWN_INTERFACE: &str = "nldns0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterceptEndpoint {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub base_port: u16,
}

impl Default for InterceptEndpoint {
    fn default() -> Self {
        InterceptEndpoint {
            v4: DEFAULT_INTERCEPT_V4,
            v6: DEFAULT_INTERCEPT_V6,
            base_port: DEFAULT_BASE_PORT,
        }
    }
}

/// Puts the endpoint addresses on `nldns0` (created if the kernel can) or on `lo`.
/// Idempotent: an address left by an earlier run is fine. Returns the interface used.
pub async fn install(handle: &Handle, endpoint: &InterceptEndpoint) -> Result<String> {
    let device = match ensure_dummy(handle).await {
        Ok(index) => (OWN_INTERFACE.to_string(), index),
        Err(err) => {
            log::info!("no {OWN_INTERFACE} dummy interface ({err:#}); using lo");
            ("lo".to_string(), link_index(handle, "lo").await?)
        }
    };
    let (name, index) = device;
    add_address(handle, index, endpoint.v4.into(), 32).await?;
    add_address(handle, index, endpoint.v6.into(), 128).await?;
    Ok(name)
}

async fn ensure_dummy(handle: &Handle) -> Result<u32> {
    if let Ok(index) = link_index(handle, OWN_INTERFACE).await {
        return Ok(index);
    }
    handle
        .link()
        .add(LinkDummy::new(OWN_INTERFACE).up().build())
        .execute()
        .await
        .context("creating the dummy interface")?;
    let index = link_index(handle, OWN_INTERFACE).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context("setting nldns0 up")?;
    Ok(index)
}

pub async fn link_index(handle: &Handle, name: &str) -> Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = links
        .try_next()
        .await
        .with_context(|| format!("looking up interface {name}"))?
        .with_context(|| format!("no interface {name}"))?;
    Ok(link.header.index)
}

async fn add_address(
    handle: &Handle,
    index: u32,
    addr: std::net::IpAddr,
    prefix: u8,
) -> Result<()> {
    let mut existing = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = existing.try_next().await? {
        let present = msg.attributes.iter().any(|a| match a {
            AddressAttribute::Address(a) | AddressAttribute::Local(a) => *a == addr,
            _ => false,
        });
        if present {
            return Ok(());
        }
    }
    let mut request = handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        // No duplicate address detection: the address must be usable at once.
        request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    request
        .execute()
        .await
        .with_context(|| format!("adding {addr}/{prefix} to interface {index}"))
}

/// Whether `name` is nldns's own interface (never a pod-facing one).
pub fn is_own_interface(name: &str) -> bool {
    name == OWN_INTERFACE
}
