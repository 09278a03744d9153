//! Which interfaces are pod-facing: the `--interfaces` globs.

use anyhow::{Context, Result};
use glob::Pattern;

use super::endpoint::is_own_interface;

/// Host-side pod interfaces of the common CNIs: veth pairs (kindnet, flannel, bridge
/// plugin, GKE's `gke*`), Calico `cali*`, Cilium `lxc*`, AWS VPC CNI `eni*`, Azure
/// `azv*`, Antrea/OVN `*_h`-less veths use veth too; bridges `cni0`/`cbr0`/`docker0`
/// carry pod traffic when pods sit on a bridge. The programs are idempotent, so a packet
/// that crosses both a veth and its bridge is rewritten once.
pub const DEFAULT_INTERFACE_GLOBS: &str = "veth*,cali*,lxc*,gke*,eni*,azv*,vnet*,cni0,cbr0";

#[derive(Clone, Debug)]
pub struct InterfaceFilter {
    patterns: Vec<Pattern>,
}

impl InterfaceFilter {
    /// Parses comma-separated globs; the error names the bad one.
    pub fn parse(globs: &str) -> Result<Self> {
        let patterns = globs
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(|g| Pattern::new(g).with_context(|| format!("bad --interfaces glob {g:?}")))
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(!patterns.is_empty(), "--interfaces needs at least one glob");
        Ok(InterfaceFilter { patterns })
    }

    /// lo and nldns's own interface never match, whatever the globs say.
    pub fn matches(&self, name: &str) -> bool {
        name != "lo" && !is_own_interface(name) && self.patterns.iter().any(|p| p.matches(name))
    }
}

impl Default for InterfaceFilter {
    fn default() -> Self {
        InterfaceFilter::parse(DEFAULT_INTERFACE_GLOBS).expect("default globs are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_globs_cover_common_cnis_and_never_lo() {
        let f = InterfaceFilter::default();
        for name in [
            "veth1234", "cali0a1b", "lxc99", "gke5", "eni7", "cni0", "cbr0",
        ] {
            assert!(f.matches(name), "{name} should match");
        }
        for name in ["lo", "eth0", "nldns0", "ens3", "docker0x"] {
            assert!(!f.matches(name), "{name} should not match");
        }
    }

    #[test]
    fn explicit_globs_still_exclude_lo_and_own_interface() {
        let f = InterfaceFilter::parse("*").unwrap();
        assert!(f.matches("eth0"));
        assert!(!f.matches("lo"));
        assert!(!f.matches("nldns0"));
    }

    #[test]
    fn bad_glob_is_named() {
        let err = InterfaceFilter::parse("veth*,[oops").unwrap_err();
        assert!(format!("{err:#}").contains("[oops"));
    }
}
