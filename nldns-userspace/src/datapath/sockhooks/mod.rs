//! Host-network interception: the cgroup sock_addr hooks, split like the TC side.
//!
//! - this module: which hooks there are ([`HOOKS`], the one table the loader, attach,
//!   inspection and cleanup all read, with a program per [`Scope`]), which cgroups they
//!   go to (`--cgroup`, found in /proc/self/mounts; `--pod-cgroup`, kubelet's pod cgroup
//!   under it) and the open cgroup directory;
//! - [`attach`]: attaching them as links, and the network namespace cookie they check;
//! - [`inspect`]: listing our attachments and removing legacy leftovers;
//! - [`conflict`]: other dataplanes' programs that rewrite ClusterIPs in connect(), and
//!   whether the pods' hooks run before them.
//!
//! Two sets, the same programs' two scopes (nldns-ebpf sock.rs): the host set on the
//! node's cgroup root for host-network processes, the pods' set on kubelet's pod cgroup.
//! The kernel runs a descendant cgroup's programs before its ancestors' (for programs
//! attached with BPF_F_ALLOW_MULTI, and links always are), so the pods' set sees a pod's
//! ClusterIP before a dataplane's socket load balancer on the root does. Pod cgroups made
//! later inherit the effective programs of their ancestors when they are created: new
//! pods are covered without the agent doing anything.
//!
//! The hooks are attached as bpf links. Cgroup links always run alongside the cgroup's
//! other programs (the kernel treats them as BPF_F_ALLOW_MULTI, and refuses any flag in
//! link_create: aya's `CgroupAttachMode::Single` is flags 0), so they coexist with a
//! CNI's own hooks and with a second agent during an upgrade. A link is owned by the
//! agent's file descriptor: the kernel removes it when the process dies, so nothing
//! survives a crash. A hung agent is covered by the heartbeat check in the programs
//! themselves.
//!
//! Which cgroup: by default the root of the cgroup2 hierarchy, which every process of the
//! node descends from (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
//! hybrid ones). The directory is opened once at start-up: `ip netns exec` remounts /sys,
//! so a path may not resolve later from another mount namespace, the fd always does.

pub mod attach;
pub mod conflict;
pub mod inspect;

use std::{
    fs::File,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nldns_common::program_names;
use nldns_sys::AttachType;
use serde::Serialize;

/// Which set of hooks: the node's (`--cgroup`) or the pods' (`--pod-cgroup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Host-network processes: sockets of the agent's network namespace only.
    Host,
    /// The pods' cgroup: pod sockets (any other namespace) too, so that nldns sees their
    /// ClusterIP before a socket-level load balancer on an ancestor cgroup does.
    Pods,
}

/// One socket hook: the kernel hook, its program in each set, and the short label
/// `nldns status` and its JSON show for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketHook {
    pub attach_type: AttachType,
    pub label: &'static str,
    pub host_program: &'static str,
    pub pod_program: &'static str,
}

impl SocketHook {
    pub fn program(&self, scope: Scope) -> &'static str {
        match scope {
            Scope::Host => self.host_program,
            Scope::Pods => self.pod_program,
        }
    }

    /// connect() and sendmsg(): where a socket-level load balancer translates ClusterIPs.
    pub fn picks_destination(&self) -> bool {
        [
            AttachType::BPF_CGROUP_INET4_CONNECT,
            AttachType::BPF_CGROUP_INET6_CONNECT,
            AttachType::BPF_CGROUP_UDP4_SENDMSG,
            AttachType::BPF_CGROUP_UDP6_SENDMSG,
        ]
        .contains(&self.attach_type)
    }
}

const fn hook(
    attach_type: AttachType,
    label: &'static str,
    host_program: &'static str,
    pod_program: &'static str,
) -> SocketHook {
    SocketHook {
        attach_type,
        label,
        host_program,
        pod_program,
    }
}

/// Every socket hook nldns has. connect() and sendmsg() aim a DNS query at the intercept
/// endpoint, recvmsg() and getpeername() show the application the Service IP again.
pub const HOOKS: [SocketHook; 8] = [
    hook(
        AttachType::BPF_CGROUP_INET4_CONNECT,
        "connect4",
        program_names::CONNECT4,
        program_names::POD_CONNECT4,
    ),
    hook(
        AttachType::BPF_CGROUP_INET6_CONNECT,
        "connect6",
        program_names::CONNECT6,
        program_names::POD_CONNECT6,
    ),
    hook(
        AttachType::BPF_CGROUP_UDP4_SENDMSG,
        "sendmsg4",
        program_names::SENDMSG4,
        program_names::POD_SENDMSG4,
    ),
    hook(
        AttachType::BPF_CGROUP_UDP6_SENDMSG,
        "sendmsg6",
        program_names::SENDMSG6,
        program_names::POD_SENDMSG6,
    ),
    hook(
        AttachType::BPF_CGROUP_UDP4_RECVMSG,
        "recvmsg4",
        program_names::RECVMSG4,
        program_names::POD_RECVMSG4,
    ),
    hook(
        AttachType::BPF_CGROUP_UDP6_RECVMSG,
        "recvmsg6",
        program_names::RECVMSG6,
        program_names::POD_RECVMSG6,
    ),
    hook(
        AttachType::BPF_CGROUP_INET4_GETPEERNAME,
        "getpeername4",
        program_names::GETPEER4,
        program_names::POD_GETPEER4,
    ),
    hook(
        AttachType::BPF_CGROUP_INET6_GETPEERNAME,
        "getpeername6",
        program_names::GETPEER6,
        program_names::POD_GETPEER6,
    ),
];

/// One of our hooks on a cgroup.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CgroupAttachment {
    pub cgroup: String,
    pub scope: Scope,
    pub hook: &'static str,
    pub program_id: u32,
    pub program_name: String,
}

/// `--cgroup`: where the hooks go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupTarget {
    /// The root of the cgroup2 hierarchy (the default).
    Root,
    /// A given cgroup2 directory.
    Path(PathBuf),
    /// `--cgroup none`: no host-network interception.
    Disabled,
}

impl CgroupTarget {
    pub fn parse(value: Option<&str>) -> CgroupTarget {
        match value.map(str::trim) {
            None | Some("") => CgroupTarget::Root,
            Some("none") => CgroupTarget::Disabled,
            Some(path) => CgroupTarget::Path(PathBuf::from(path)),
        }
    }

    /// The directory, or None when disabled.
    pub fn resolve(&self) -> Result<Option<PathBuf>> {
        match self {
            CgroupTarget::Disabled => Ok(None),
            CgroupTarget::Path(path) => Ok(Some(path.clone())),
            CgroupTarget::Root => cgroup2_mount()
                .map(Some)
                .context("no cgroup2 mount in /proc/self/mounts (use --cgroup PATH or none)"),
        }
    }
}

/// `--pod-cgroup`: where the pods' hooks go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodCgroupTarget {
    /// The default: kubelet's pod cgroup under the node's cgroup root, `kubepods.slice`
    /// (systemd cgroup driver) or `kubepods` (cgroupfs driver), if there is one.
    Auto,
    /// A given directory; a relative path is taken under the node's cgroup root.
    Path(PathBuf),
    /// `--pod-cgroup none`: pods are intercepted by the TC programs only.
    Disabled,
}

/// The pod cgroups kubelet makes under the cgroup root, by cgroup driver.
pub const KUBELET_POD_CGROUPS: [&str; 2] = ["kubepods.slice", "kubepods"];

impl PodCgroupTarget {
    pub fn parse(value: Option<&str>) -> PodCgroupTarget {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => PodCgroupTarget::Auto,
            Some("none") => PodCgroupTarget::Disabled,
            Some(path) => PodCgroupTarget::Path(PathBuf::from(path)),
        }
    }

    /// The directory under `node_root`, or None when disabled or (auto) when the node
    /// has no kubelet pod cgroup. A given path that is not a directory is an error.
    pub fn resolve(&self, node_root: &Path) -> Result<Option<PathBuf>> {
        match self {
            PodCgroupTarget::Disabled => Ok(None),
            PodCgroupTarget::Auto => Ok(KUBELET_POD_CGROUPS
                .iter()
                .map(|name| node_root.join(name))
                .find(|path| path.is_dir())),
            PodCgroupTarget::Path(path) => {
                let path = node_root.join(path);
                anyhow::ensure!(
                    path.is_dir(),
                    "--pod-cgroup {}: not a cgroup directory",
                    path.display()
                );
                Ok(Some(path))
            }
        }
    }
}

/// The first cgroup2 mount point of this mount namespace.
pub fn cgroup2_mount() -> Option<PathBuf> {
    parse_cgroup2_mount(&std::fs::read_to_string("/proc/self/mounts").ok()?)
}

/// The first `cgroup2` entry of a /proc/self/mounts text. Mount points with spaces are
/// written with octal escapes (`\040`) there; they are decoded.
pub fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' {
            if let Some(digits) = octal.filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b))) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An open cgroup2 directory.
pub struct Cgroup {
    pub path: PathBuf,
    dir: File,
}

impl Cgroup {
    pub fn open(path: &Path) -> Result<Cgroup> {
        let dir = File::open(path)
            .with_context(|| format!("opening cgroup {} for the socket hooks", path.display()))?;
        anyhow::ensure!(
            dir.metadata()?.is_dir(),
            "{} is not a cgroup directory",
            path.display()
        );
        Ok(Cgroup {
            path: path.to_path_buf(),
            dir,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
";

    const UNIFIED: &str = "\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
none /run/cilium/cgroupv2 cgroup2 rw,relatime 0 0
";

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_unified_hosts() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // The first one wins; a CNI's extra mount of the same hierarchy comes later.
        assert_eq!(
            parse_cgroup2_mount(UNIFIED),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn cgroup_v1_only_has_no_cgroup2_mount_and_junk_is_harmless() {
        let v1_only = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert_eq!(parse_cgroup2_mount(v1_only), None);
        assert_eq!(parse_cgroup2_mount(""), None);
        assert_eq!(parse_cgroup2_mount("cgroup2\n \n\u{0} x\n"), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let text = "cgroup2 /run/my\\040cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/run/my cgroup"))
        );
        assert_eq!(unescape_mount_path("/a\\04"), "/a\\04");
    }

    #[test]
    fn target_forms() {
        assert_eq!(CgroupTarget::parse(None), CgroupTarget::Root);
        assert_eq!(CgroupTarget::parse(Some("none")), CgroupTarget::Disabled);
        assert_eq!(
            CgroupTarget::parse(Some("/sys/fs/cgroup/x")),
            CgroupTarget::Path("/sys/fs/cgroup/x".into())
        );
        assert_eq!(CgroupTarget::Disabled.resolve().unwrap(), None);
    }

    #[test]
    fn program_names_fit_the_kernel_limit_and_hooks_are_distinct() {
        let names: Vec<&str> = HOOKS
            .iter()
            .flat_map(|h| [h.host_program, h.pod_program])
            .collect();
        for name in &names {
            assert!(
                name.len() <= 15 && name.starts_with(program_names::PREFIX),
                "{name}"
            );
        }
        for (i, a) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(a), "{a} twice");
        }
        for (i, a) in HOOKS.iter().enumerate() {
            for b in &HOOKS[i + 1..] {
                assert!(a.attach_type != b.attach_type && a.label != b.label);
            }
        }
    }

    #[test]
    fn pod_cgroup_forms_and_kubelet_drivers() {
        assert_eq!(PodCgroupTarget::parse(None), PodCgroupTarget::Auto);
        assert_eq!(PodCgroupTarget::parse(Some("auto")), PodCgroupTarget::Auto);
        assert_eq!(
            PodCgroupTarget::parse(Some("none")),
            PodCgroupTarget::Disabled
        );
        let root = std::env::temp_dir().join(format!("nldns-podcg-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(PodCgroupTarget::Auto.resolve(&root).unwrap(), None);
        std::fs::create_dir(root.join("kubepods")).unwrap();
        assert_eq!(
            PodCgroupTarget::Auto.resolve(&root).unwrap(),
            Some(root.join("kubepods"))
        );
        // The systemd driver's name wins when both exist.
        std::fs::create_dir(root.join("kubepods.slice")).unwrap();
        assert_eq!(
            PodCgroupTarget::Auto.resolve(&root).unwrap(),
            Some(root.join("kubepods.slice"))
        );
        assert_eq!(
            PodCgroupTarget::parse(Some("kubepods"))
                .resolve(&root)
                .unwrap(),
            Some(root.join("kubepods"))
        );
        let err = PodCgroupTarget::parse(Some("missing"))
            .resolve(&root)
            .unwrap_err();
        assert!(err.to_string().contains("--pod-cgroup"), "{err}");
        assert_eq!(PodCgroupTarget::Disabled.resolve(&root).unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
