//! The agent's DNS configuration: command-line flags, the node's resolv.conf, and the
//! optional `--config`, which follows kube-dns's ConfigMap keys (`stubDomains`,
//! `upstreamNameservers`; a JSON file or a mounted ConfigMap directory) so an existing
//! setup carries over unchanged.

use anyhow::{bail, Context, Result};

use crate::{
    cli::RunArgs,
    dns::{DnsConfig, KubeDnsConfig},
};

/// Builds the DNS configuration; errors name the flag or file at fault.
pub fn dns_config(args: &RunArgs) -> Result<DnsConfig> {
    let domain = args.cluster_domain.trim_end_matches('.');
    if domain.is_empty() {
        bail!("--cluster-domain is empty");
    }
    let mut config = DnsConfig::for_cluster_domain(domain);
    config.cluster_upstreams = args.upstream.clone();
    config.default_upstreams = DnsConfig::read_resolv_conf(&args.resolv_conf)
        .with_context(|| format!("--resolv-conf {}", args.resolv_conf.display()))?;
    if let Some(path) = &args.config {
        let kube =
            KubeDnsConfig::read(path).with_context(|| format!("--config {}", path.display()))?;
        config.apply_kube_dns_config(kube);
    }
    if config.default_upstreams.is_empty() {
        log::warn!(
            "no nameserver in {} and no upstreamNameservers: names outside the cluster zones will fail",
            args.resolv_conf.display()
        );
    }
    Ok(config)
}
