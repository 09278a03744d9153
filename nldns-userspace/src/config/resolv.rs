//! The node's resolv.conf: its nameservers answer names outside the cluster zones.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::file::DNS_PORT;

/// The `nameserver` entries, port 53. Zone-scoped IPv6 addresses (fe80::1%eth0) are
/// skipped with a warning: they only make sense on that link.
pub fn parse(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        match addr.parse::<IpAddr>() {
            Ok(ip) => servers.push(SocketAddr::new(ip, DNS_PORT)),
            Err(_) => log::warn!("resolv.conf: ignoring nameserver {addr:?}"),
        }
    }
    servers
}

/// Reads a resolv.conf file; an empty server list is an error (nowhere to forward).
pub fn read(path: &Path) -> Result<Vec<SocketAddr>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let servers = parse(&text);
    ensure!(!servers.is_empty(), "no nameserver in {}", path.display());
    Ok(servers)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nameservers_only_and_link_scoped_ones_skipped() {
        let text = "# comment\nsearch cluster.local\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            super::parse(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }
}
