//! Following interfaces as pods come and go, through rtnetlink link events, so a new
//! pod's interface is covered within milliseconds of appearing.

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface exists (sent for every existing one at start too). Attaching to an
    /// interface that is still down is fine and avoids racing its bring-up.
    Present(String),
    /// The interface went away.
    Gone(String),
}

/// Streams link events: first the interfaces that exist now, then changes. Runs until the
/// receiver is dropped.
pub async fn watch_links() -> Result<mpsc::Receiver<LinkEvent>> {
    let (conn, handle, mut messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .context("subscribing to rtnetlink link events")?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(256);
    // Subscribe before listing, so nothing that appears in between is missed; a
    // duplicate Present is harmless (attach is idempotent).
    let existing = list_links(&handle).await?;
    for link in existing {
        if let Some(event) = event_for(&link, false) {
            if tx.send(event).await.is_err() {
                return Ok(rx);
            }
        }
    }
    tokio::spawn(async move {
        // Keep the handle (and so the connection) alive as long as we forward events.
        let _handle = handle;
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    event_for(&link, false)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    event_for(&link, true)
                }
                _ => None,
            };
            if let Some(event) = event {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

pub async fn list_links(handle: &Handle) -> Result<Vec<LinkMessage>> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing interfaces")
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn event_for(link: &LinkMessage, deleted: bool) -> Option<LinkEvent> {
    let name = link_name(link)?.to_string();
    if deleted {
        Some(LinkEvent::Gone(name))
    } else {
        Some(LinkEvent::Present(name))
    }
}
