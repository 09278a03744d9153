//! `cargo xtask setup`: install, idempotently and only what is missing, everything the
//! project needs on a fresh Debian 12 machine (the kernel VMs' QEMU, kernel and tools too).
//! The measured recipe and its pitfalls are in docs/testing.md ("Toolchain"); in short:
//! - the eBPF crate is compiled by a pinned nightly and linked by bpf-linker, and the two
//!   must be on the same LLVM major, or linking fails with "Invalid record";
//! - bpf-linker must be built against Debian's LLVM 22 (`LLVM_PREFIX`), not the default
//!   llvm-config on PATH (LLVM 14 here).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The nightly that compiles nldns-ebpf. Pinned by date: nightlies from 2026-08-08 on use
/// LLVM 23. Keep in step with nldns-userspace/build.rs.
pub const NIGHTLY: &str = "nightly-2026-05-20";
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Runs the fuzz targets of fuzz/ (`cargo xtask fuzz`), with stable Rust.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages: build deps of bpf-linker, then the tools the tests, the demo and the
/// benchmarks drive (network namespaces, kube-proxy stand-in, real DNS servers, load).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "util-linux",
    "bpftool",
    "dnsutils",
    "iptables",
    "nftables",
    "knot",
    "unbound",
    "dnsmasq-base",
    "dnsperf",
    "iperf3",
    "shellcheck",
    // A real OpenMetrics parser for the /metrics tests (tests/src/prometheus.rs).
    "python3-prometheus-client",
    // `cargo xtask image` runs the arm64 binary of the image under qemu-user.
    "qemu-user-static",
];

pub fn run(root: &Path) -> Result<()> {
    apt_packages()?;
    nightly()?;
    rust_targets()?;
    bpf_linker()?;
    cargo_fuzz()?;
    check_llvm_majors()?;
    // The arm64 kernel VM's kernel and tools: Debian's arm64 packages, unpacked into
    // target/vm/sysroot-arm64 (xtask/src/vm/sysroot.rs), not installed on the host.
    crate::vm::setup_foreign(root)
}

/// The musl targets of the image (both architectures) and of the arm64 VM's binaries.
fn rust_targets() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .unwrap_or_default();
    let mut wanted: Vec<&str> = crate::image::PLATFORMS.iter().map(|p| p.target).collect();
    wanted.extend(crate::vm::rust_targets());
    wanted.sort();
    wanted.dedup();
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: rustup target add {missing:?}");
    cmd::run(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

fn apt_packages() -> Result<()> {
    // The kernel VMs of `cargo xtask test` (QEMU, Debian's kernel, busybox, ipvsadm).
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .chain(crate::vm::apt_packages())
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; run `cargo xtask setup` as root \
             (it uses apt-get)"
        );
    }
    eprintln!("xtask setup: installing Debian packages {missing:?}");
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn nightly() -> Result<()> {
    let has_toolchain =
        cmd::output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-V"])).is_some();
    // rust-src for `-Z build-std=core`; clippy to lint the eBPF crate in `xtask test`.
    let has_components = has_toolchain
        && cmd::output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            NIGHTLY,
        ]))
        .is_some_and(|list| {
            ["rust-src", "clippy"]
                .iter()
                .all(|c| list.lines().any(|l| l.starts_with(c)))
        });
    if has_components {
        return Ok(());
    }
    eprintln!("xtask setup: installing toolchain {NIGHTLY} with rust-src and clippy");
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy",
    ]))
}

fn bpf_linker() -> Result<()> {
    let installed = cmd::output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if installed && bpf_linker_llvm_major() == Some(LLVM_MAJOR) {
        return Ok(());
    }
    eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}");
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ]),
    )
}

fn cargo_fuzz() -> Result<()> {
    let installed = cmd::output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    cmd::run(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
}

/// bpf-linker links LLVM dynamically; its libLLVM soname carries the major.
fn bpf_linker_llvm_major() -> Option<u32> {
    let path = cmd::output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?;
    let ldd = cmd::output(Command::new("ldd").arg(path.trim()))?;
    ldd.lines()
        .find_map(|line| line.trim().strip_prefix("libLLVM.so."))
        .or_else(|| ldd.lines().find_map(|l| l.trim().strip_prefix("libLLVM-")))
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

fn nightly_llvm_major() -> Option<u32> {
    let vv = cmd::output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse().ok())
}

fn check_llvm_majors() -> Result<()> {
    let rustc = nightly_llvm_major()
        .with_context(|| format!("cannot read the LLVM version of {NIGHTLY} (rustc -vV)"))?;
    let linker = bpf_linker_llvm_major()
        .context("cannot find which libLLVM bpf-linker links (ldd $(command -v bpf-linker))")?;
    if rustc != linker {
        bail!(
            "LLVM mismatch: {NIGHTLY} uses LLVM {rustc} but bpf-linker links LLVM {linker}. \
             The eBPF object would fail to link (\"Invalid record\"). Pin a nightly on LLVM \
             {linker} in xtask/src/setup.rs and nldns-userspace/build.rs, or rebuild \
             bpf-linker against LLVM {rustc} (LLVM_PREFIX=/usr/lib/llvm-{rustc})."
        );
    }
    Ok(())
}
