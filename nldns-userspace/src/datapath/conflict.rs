//! Refusing to run beside the classic node-local-dns on the same Service IP.
//!
//! node-local-dns (and the setups modelled on it) binds the ClusterIP on a `nodelocaldns`
//! dummy interface and adds raw-table NOTRACK rules for it. Both would fight nldns for the
//! same queries, and removing either one's state by hand breaks the other, so such a
//! setup has to be removed before another cache is installed; nldns refuses to start
//! beside it.

use std::{net::IpAddr, process::Command};

use anyhow::{bail, Result};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;

use super::endpoint::link_index;

pub const NODELOCALDNS_INTERFACE: &str = "nodelocaldns";

pub async fn refuse_classic_node_local_dns(handle: &Handle, service_ips: &[IpAddr]) -> Result<()> {
    if let Ok(index) = link_index(handle, NODELOCALDNS_INTERFACE).await {
        let mut addrs = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut bound = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            for attribute in &msg.attributes {
                if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attribute {
                    if service_ips.contains(ip) {
                        bound.push(*ip);
                    }
                }
            }
        }
        if !bound.is_empty() {
            bail!(
                "node-local-dns is running on this node: interface {NODELOCALDNS_INTERFACE} \
                 holds {bound:?}, the Service IP nldns would intercept. Remove node-local-dns \
                 (its DaemonSet, then its NOTRACK rules and the {NODELOCALDNS_INTERFACE} \
                 interface) before starting nldns."
            );
        }
    }
    let rules = notrack_rules_for(service_ips);
    if !rules.is_empty() {
        bail!(
            "iptables raw-table NOTRACK rules for the Service IP exist (node-local-dns or a \
             hand-made interception): {rules:?}. Remove them (and node-local-dns) before \
             starting nldns."
        );
    }
    Ok(())
}

/// Raw-table rules that NOTRACK traffic to or from a Service IP. Read with iptables-save
/// where it is installed; nodes without iptables cannot have such rules.
fn notrack_rules_for(service_ips: &[IpAddr]) -> Vec<String> {
    let mut found = Vec::new();
    for (tool, v6) in [("iptables-save", false), ("ip6tables-save", true)] {
        let Ok(out) = Command::new(tool).args(["-t", "raw"]).output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text
            .lines()
            .filter(|l| l.contains("NOTRACK") || l.contains("--notrack"))
        {
            let hit = service_ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .any(|ip| {
                    let host = if v6 {
                        format!("{ip}/128")
                    } else {
                        format!("{ip}/32")
                    };
                    line.split_whitespace().any(|w| w == host)
                });
            if hit {
                found.push(line.to_string());
            }
        }
    }
    found
}
