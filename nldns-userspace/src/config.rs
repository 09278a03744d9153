//! The agent's configuration: command-line flags plus the optional JSON file, merged
//! into what the DNS side needs. The file follows kube-dns's ConfigMap keys so an
//! existing `stubDomains` / `upstreamNameservers` setup carries over unchanged.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{
    cli::{parse_upstream, RunArgs},
    dns::DnsConfig,
};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// Zone -> nameservers, e.g. {"acme.local": ["1.2.3.4"]}.
    #[serde(default)]
    pub stub_domains: BTreeMap<String, Vec<String>>,
    /// Replaces the resolv.conf nameservers for names outside the cluster zones.
    #[serde(default)]
    pub upstream_nameservers: Vec<String>,
    /// Zones whose upstream queries always use TCP.
    #[serde(default)]
    pub force_tcp_zones: Vec<String>,
    /// Cache cap for positive answers in the cluster zones (s).
    pub cluster_max_ttl_seconds: Option<u32>,
    /// Cap for negative answers (s).
    pub negative_max_ttl_seconds: Option<u32>,
    /// Bound on cached entries.
    pub max_entries: Option<usize>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))
    }
}

/// Builds the DNS configuration from flags, the node's resolv.conf and the file.
pub fn dns_config(args: &RunArgs) -> Result<DnsConfig> {
    let file = match &args.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    let mut config = DnsConfig::default();
    let domain = args
        .cluster_domain
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if domain.is_empty() {
        bail!("--cluster-domain is empty");
    }
    config.cluster_zones = vec![domain.clone(), "in-addr.arpa".into(), "ip6.arpa".into()];
    config.cluster_domain = domain;
    config.cluster_upstreams = args.upstream.clone();
    config.default_upstreams = if file.upstream_nameservers.is_empty() {
        DnsConfig::read_resolv_conf(&args.resolv_conf)
            .with_context(|| format!("--resolv-conf {}", args.resolv_conf.display()))?
    } else {
        parse_servers("upstreamNameservers", &file.upstream_nameservers)?
    };
    config.stub_domains = file
        .stub_domains
        .iter()
        .map(|(zone, servers)| {
            Ok((
                zone.trim_end_matches('.').to_ascii_lowercase(),
                parse_servers(&format!("stubDomains.{zone}"), servers)?,
            ))
        })
        .collect::<Result<_>>()?;
    config.force_tcp_zones = file.force_tcp_zones.clone();
    if let Some(ttl) = file.cluster_max_ttl_seconds {
        config.cluster_max_ttl = std::time::Duration::from_secs(ttl.into());
    }
    if let Some(ttl) = file.negative_max_ttl_seconds {
        config.negative_max_ttl = std::time::Duration::from_secs(ttl.into());
    }
    if let Some(n) = file.max_entries {
        config.max_entries = n;
    }
    Ok(config)
}

fn parse_servers(key: &str, servers: &[String]) -> Result<Vec<SocketAddr>> {
    servers
        .iter()
        .map(|s| parse_upstream(s).map_err(|e| anyhow::anyhow!("config {key}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_configmap_keys_parse() {
        let f: FileConfig = serde_json::from_str(
            r#"{"stubDomains": {"acme.local": ["1.2.3.4", "[fd00::1]:5353"]},
                "upstreamNameservers": ["8.8.8.8"]}"#,
        )
        .unwrap();
        assert_eq!(f.stub_domains["acme.local"].len(), 2);
        assert_eq!(
            parse_servers("x", &f.upstream_nameservers).unwrap()[0].port(),
            53
        );
    }

    #[test]
    fn unknown_keys_and_bad_servers_are_named() {
        let err = serde_json::from_str::<FileConfig>(r#"{"stubDomain": {}}"#).unwrap_err();
        assert!(err.to_string().contains("stubDomain"), "{err}");
        let err = parse_servers("stubDomains.acme", &["nope".into()]).unwrap_err();
        assert!(format!("{err}").contains("stubDomains.acme"));
    }
}
