//! Compiles `nldns-ebpf` for the bpf target with the pinned nightly and bpf-linker
//! (both installed by `cargo xtask setup`) and leaves the object in OUT_DIR, where
//! `datapath::loader` embeds it into the `nldns` binary.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Must match xtask's `setup::NIGHTLY`: its LLVM major must equal bpf-linker's.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "nldns-ebpf")
        .ok_or_else(|| anyhow!("nldns-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("nldns-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
