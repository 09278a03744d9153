//! The root file system a foreign-architecture guest's tools come from: Debian's own
//! packages of that architecture (`apt-get download PKG:arm64`), unpacked with
//! `dpkg-deb` into `target/vm/sysroot-<arch>/`, never installed on the host.
//!
//! The tool packages are listed below; the libraries they need are found by reading each
//! ELF file's `NEEDED` entries with `readelf -d` (ldd cannot run foreign binaries), and
//! each soname missing from the sysroot is mapped to its package through the host's own
//! dpkg database (`dpkg -S`: the amd64 package of the same name ships it), downloaded for
//! the guest's architecture and unpacked, until nothing is missing. The kernel package of
//! that architecture is unpacked into the same tree (`boot/vmlinuz-*`, `lib/modules/*`,
//! with `modules.dep` made by the host's `depmod -b`).
//!
//! The tree is merged-/usr like Debian 12 (`bin`, `sbin`, `lib` are symlinks into `usr`;
//! tar keeps them with `--keep-directory-symlink`), so the guest sees the usual paths.
//! A stamp file records what the tree was built from; an unchanged list is a no-op.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

use super::plan::{Arch, Kernel};
use crate::cmd;

/// The Debian packages of the guest's tools (`plan::GUEST_TOOLS`).
pub const TOOL_PACKAGES: &[&str] = &[
    "busybox-static",
    "dash",
    "coreutils",
    "kmod",
    "iproute2",
    "util-linux",
    "iptables",
    "nftables",
    "ipvsadm",
    "knot",
    "bind9-dnsutils",
    "bpftool",
];

/// The links Debian's maintainer scripts make (`update-alternatives` in iptables'
/// postinst), which `dpkg-deb -x` does not run: iptables-nft, as on a kube-proxy node.
const ALTERNATIVES: &[(&str, &str)] = &[
    ("usr/sbin/iptables", "iptables-nft"),
    ("usr/sbin/iptables-save", "iptables-nft-save"),
    ("usr/sbin/iptables-restore", "iptables-nft-restore"),
    ("usr/sbin/ip6tables", "ip6tables-nft"),
    ("usr/sbin/ip6tables-save", "ip6tables-nft-save"),
    ("usr/sbin/ip6tables-restore", "ip6tables-nft-restore"),
];

const STAMP: &str = ".nldns-sysroot";
/// Bump when the way the tree is made changes, so existing trees are rebuilt.
const RECIPE: u32 = 2;

pub fn dir(root: &Path, arch: Arch) -> PathBuf {
    arch.sysroot(root)
}

fn debs_dir(root: &Path, arch: Arch) -> PathBuf {
    root.join("target/vm").join(format!("debs-{}", arch.name()))
}

/// Makes sure `dpkg` knows the foreign architecture and apt has its package lists.
pub fn ensure_foreign_arch(arch: Arch) -> Result<()> {
    let foreign =
        cmd::output(Command::new("dpkg").arg("--print-foreign-architectures")).unwrap_or_default();
    if foreign.lines().any(|a| a.trim() == arch.name()) {
        return Ok(());
    }
    eprintln!("xtask setup: dpkg --add-architecture {}", arch.name());
    cmd::run(Command::new("dpkg").args(["--add-architecture", arch.name()]))?;
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
}

/// Builds (or finds up to date) the sysroot for `arch` with the tools and `kernels`.
pub fn ensure(root: &Path, arch: Arch, kernels: &[&Kernel]) -> Result<PathBuf> {
    let sysroot = dir(root, arch);
    let mut wanted: Vec<&str> = TOOL_PACKAGES.to_vec();
    wanted.extend(kernels.iter().map(|k| k.package));
    let stamp = format!("recipe {RECIPE}\n{}\n", wanted.join("\n"));
    if std::fs::read_to_string(sysroot.join(STAMP)).is_ok_and(|s| s == stamp) {
        return Ok(sysroot);
    }
    ensure_foreign_arch(arch)?;
    eprintln!(
        "xtask vm: building the {} sysroot in {} from Debian's {} packages",
        arch.name(),
        sysroot.display(),
        arch.name()
    );
    if sysroot.exists() {
        std::fs::remove_dir_all(&sysroot)?;
    }
    for d in ["usr/bin", "usr/sbin", "usr/lib"] {
        std::fs::create_dir_all(sysroot.join(d))?;
    }
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        std::os::unix::fs::symlink(target, sysroot.join(link))?;
    }
    let mut unpacked = BTreeSet::new();
    unpack(root, arch, &sysroot, &wanted, &mut unpacked)?;
    // modules.dep and friends are made by the kernel package's postinst: the host's
    // depmod reads any architecture's modules.
    for kernel in kernels {
        cmd::run(
            Command::new("depmod")
                .arg("-b")
                .arg(&sysroot)
                .arg(kernel.release),
        )?;
    }
    for (link, target) in ALTERNATIVES {
        let link = sysroot.join(link);
        ensure!(
            link.with_file_name(target).exists(),
            "{} sysroot: {target} is missing (iptables package)",
            arch.name()
        );
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(target, &link)?;
        }
    }
    // Libraries, until every NEEDED soname of every tool resolves inside the sysroot.
    for _ in 0..16 {
        let missing = missing_sonames(&sysroot, arch)?;
        if missing.is_empty() {
            std::fs::write(sysroot.join(STAMP), &stamp)?;
            return Ok(sysroot);
        }
        let mut packages = BTreeSet::new();
        for soname in &missing {
            // The dynamic loader comes with libc6 (and has no amd64 twin to look up).
            if soname.starts_with("ld-linux") {
                packages.insert("libc6".to_string());
                continue;
            }
            packages.insert(package_of(soname).with_context(|| {
                format!(
                    "no installed package of the host ships {soname} (needed by the {} tools)",
                    arch.name()
                )
            })?);
        }
        let new: Vec<&str> = packages
            .iter()
            .map(String::as_str)
            .filter(|p| !unpacked.contains(*p))
            .collect();
        ensure!(
            !new.is_empty(),
            "{} sysroot: sonames {missing:?} still missing after unpacking {packages:?}",
            arch.name()
        );
        unpack(root, arch, &sysroot, &new, &mut unpacked)?;
    }
    bail!("{} sysroot: library closure did not converge", arch.name())
}

/// `apt-get download` (cached in `target/vm/debs-<arch>/`) and unpack.
fn unpack(
    root: &Path,
    arch: Arch,
    sysroot: &Path,
    packages: &[&str],
    done: &mut BTreeSet<String>,
) -> Result<()> {
    let debs = debs_dir(root, arch);
    std::fs::create_dir_all(&debs)?;
    let cached = |pkg: &str| -> Option<PathBuf> {
        std::fs::read_dir(&debs).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&format!("{pkg}_"))
                && name.ends_with(&format!("_{}.deb", arch.name())))
            .then(|| e.path())
        })
    };
    let fetch: Vec<String> = packages
        .iter()
        .filter(|p| cached(p).is_none())
        .map(|p| format!("{p}:{}", arch.name()))
        .collect();
    if !fetch.is_empty() {
        cmd::run(
            Command::new("apt-get")
                .current_dir(&debs)
                // The download directory belongs to root, not to apt's sandbox user.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
                .args(&fetch),
        )?;
    }
    for pkg in packages {
        let deb = cached(pkg).with_context(|| format!("apt-get download {pkg} left no .deb"))?;
        let mut dpkg = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb)
            .stdout(Stdio::piped())
            .spawn()
            .context("running dpkg-deb")?;
        let tar = Command::new("tar")
            .args(["-x", "--keep-directory-symlink", "--no-same-owner", "-C"])
            .arg(sysroot)
            .stdin(dpkg.stdout.take().context("dpkg-deb stdout")?)
            .status()
            .context("running tar")?;
        let dpkg = dpkg.wait()?;
        ensure!(
            tar.success() && dpkg.success(),
            "unpacking {} failed",
            deb.display()
        );
        done.insert(pkg.to_string());
    }
    Ok(())
}

/// The directories the dynamic loader searches in a Debian guest of `arch`.
pub fn library_dirs(arch: Arch) -> Vec<String> {
    let ma = arch.multiarch();
    vec![
        format!("/usr/lib/{ma}"),
        format!("/lib/{ma}"),
        "/usr/lib".into(),
        "/lib".into(),
    ]
}

/// `host` for `guest` inside `sysroot`, following symlinks the way the guest would (an
/// absolute target starts again at the sysroot, never at the host's `/`).
pub fn resolve(sysroot: &Path, guest: &Path) -> Result<PathBuf> {
    let mut todo: Vec<PathBuf> = vec![guest.to_path_buf()];
    let mut out = PathBuf::from("/");
    let mut hops = 0;
    while let Some(path) = todo.pop() {
        let mut comps: Vec<Component> = path.components().collect();
        comps.reverse();
        while let Some(c) = comps.pop() {
            match c {
                Component::RootDir => out = PathBuf::from("/"),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(name) => {
                    let next = out.join(name);
                    let host = host_path(sysroot, &next);
                    match std::fs::read_link(&host) {
                        Ok(target) => {
                            hops += 1;
                            ensure!(hops < 40, "too many symlinks resolving {}", guest.display());
                            let rest: PathBuf = comps.iter().rev().collect();
                            comps.clear();
                            todo.push(target.join(rest));
                        }
                        Err(_) => out = next,
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The host path of guest path `guest` inside `sysroot`.
pub fn host_path(sysroot: &Path, guest: &Path) -> PathBuf {
    sysroot.join(guest.strip_prefix("/").unwrap_or(guest))
}

/// The NEEDED sonames and the program interpreter of an ELF file (`readelf`, which reads
/// any architecture's ELF).
pub fn elf_deps(host: &Path) -> Result<(Vec<String>, Option<String>)> {
    let out = Command::new("readelf")
        .args(["-d", "-l", "-W"])
        .arg(host)
        .stderr(Stdio::null())
        .output()
        .context("running readelf (binutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut needed = Vec::new();
    let mut interp = None;
    for line in text.lines() {
        if line.contains("(NEEDED)") {
            if let Some(name) = line.split('[').nth(1).and_then(|s| s.split(']').next()) {
                needed.push(name.to_string());
            }
        } else if let Some(rest) = line.split("Requesting program interpreter: ").nth(1) {
            interp = rest.split(']').next().map(str::to_string);
        }
    }
    Ok((needed, interp))
}

/// The guest path of `soname` inside `sysroot`, if it is there.
pub fn find_library(sysroot: &Path, arch: Arch, soname: &str) -> Option<PathBuf> {
    library_dirs(arch)
        .iter()
        .map(|d| Path::new(d).join(soname))
        .find(|p| {
            resolve(sysroot, p)
                .map(|r| host_path(sysroot, &r).is_file())
                .unwrap_or(false)
        })
}

/// The tools of the plan (and the iptables extensions), resolved inside the sysroot.
pub fn tool_paths(sysroot: &Path, arch: Arch) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for tool in super::plan::GUEST_TOOLS {
        let guest = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| std::fs::symlink_metadata(host_path(sysroot, p)).is_ok())
            .with_context(|| {
                format!(
                    "`{tool}` is not in the {} sysroot {} (is its package in TOOL_PACKAGES?)",
                    arch.name(),
                    sysroot.display()
                )
            })?;
        paths.push(guest);
    }
    let xtables = PathBuf::from(format!("/usr/lib/{}/xtables", arch.multiarch()));
    for entry in std::fs::read_dir(host_path(sysroot, &xtables))
        .with_context(|| format!("reading {} in the sysroot", xtables.display()))?
    {
        paths.push(xtables.join(entry?.file_name()));
    }
    Ok(paths)
}

/// Sonames some tool (transitively) needs that the sysroot lacks.
fn missing_sonames(sysroot: &Path, arch: Arch) -> Result<BTreeSet<String>> {
    let mut missing = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<PathBuf> = tool_paths(sysroot, arch)?;
    while let Some(guest) = queue.pop() {
        let real = resolve(sysroot, &guest)?;
        if !seen.insert(real.clone()) {
            continue;
        }
        let host = host_path(sysroot, &real);
        if !is_elf(&host) {
            continue;
        }
        let (needed, interp) = elf_deps(&host)?;
        if let Some(interp) = interp {
            let path = PathBuf::from(&interp);
            if resolve(sysroot, &path).is_ok_and(|r| host_path(sysroot, &r).is_file()) {
                queue.push(path);
            } else {
                missing.insert(
                    Path::new(&interp)
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        for soname in needed {
            match find_library(sysroot, arch, &soname) {
                Some(lib) => queue.push(lib),
                None => {
                    missing.insert(soname);
                }
            }
        }
    }
    Ok(missing)
}

pub fn is_elf(host: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(host)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

/// The Debian package that ships `soname`, from the host's dpkg database (the amd64
/// package of the same name; Debian names a library's package alike on every
/// architecture).
fn package_of(soname: &str) -> Option<String> {
    let out = cmd::output(Command::new("dpkg").args(["-S", &format!("*/{soname}")]))?;
    out.lines().find_map(|line| {
        let (pkgs, path) = line.split_once(": ")?;
        (Path::new(path.trim()).file_name()?.to_str()? == soname)
            .then(|| {
                pkgs.split(',')
                    .next()?
                    .trim()
                    .split(':')
                    .next()
                    .map(str::to_string)
            })
            .flatten()
    })
}
