//! Host-network interception: attaching the cgroup sock_addr hooks, finding what else
//! rewrites ClusterIPs at the socket layer, and listing or removing our attachments.
//!
//! The hooks are attached as bpf links. Cgroup links always run alongside the cgroup's
//! other programs (the kernel treats them as BPF_F_ALLOW_MULTI, and refuses any flag in
//! link_create: aya's `CgroupAttachMode::Single` is flags 0), so they coexist with a
//! CNI's own hooks and with a second agent during an upgrade. A link is
//! owned by the agent's file descriptor: the kernel removes it when the process dies, so
//! nothing survives a crash. A hung agent is covered by the heartbeat check in the
//! programs themselves.
//!
//! Which cgroup: by default the root of the cgroup2 hierarchy, which every process of the
//! node descends from (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
//! hybrid ones). The directory is opened once at start-up: `ip netns exec` remounts /sys,
//! so a path may not resolve later from another mount namespace, the fd always does.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::{loaded_programs, CgroupAttachMode, ProgramInfo};
use nldns_common::program_names;
use serde::Serialize;

use super::loader::Datapath;

/// The hooks nldns attaches, with the kernel's `bpf_attach_type` of each.
pub const HOOKS: [(&str, &str, u32); 8] = [
    (program_names::CONNECT4, "connect4", 10),
    (program_names::CONNECT6, "connect6", 11),
    (program_names::SENDMSG4, "sendmsg4", 14),
    (program_names::SENDMSG6, "sendmsg6", 15),
    (program_names::RECVMSG4, "recvmsg4", 19),
    (program_names::RECVMSG6, "recvmsg6", 20),
    (program_names::GETPEER4, "getpeername4", 29),
    (program_names::GETPEER6, "getpeername6", 30),
];

/// Names of the programs, in `HOOKS` order.
pub const PROGRAMS: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < HOOKS.len() {
        names[i] = HOOKS[i].0;
        i += 1;
    }
    names
};

const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
/// `SO_NETNS_COOKIE` (Linux 5.14); the libc crate does not export it everywhere.
const SO_NETNS_COOKIE: libc::c_int = 71;

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

/// One of our hooks on a cgroup.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CgroupAttachment {
    pub cgroup: String,
    pub hook: &'static str,
    pub program_id: u32,
    pub program_name: String,
}

/// A program of someone else that rewrites addresses in connect(): Cilium's kube-proxy
/// replacement and Calico's eBPF dataplane do, and then a host process's query leaves
/// connect() already aimed at a kube-dns pod, never at the ClusterIP.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ForeignSocketProgram {
    pub cgroup: String,
    pub hook: &'static str,
    pub program_id: u32,
    pub program_name: String,
    /// Who it most likely belongs to, from its name.
    pub dataplane: &'static str,
}

/// Attaches every hook of `datapath` to `cgroup`. The links stay owned by the loaded
/// programs: they go away when the datapath is dropped or the process dies.
pub fn attach(datapath: &mut Datapath, cgroup: &Cgroup) -> Result<Vec<CgroupAttachment>> {
    let mut attached = Vec::new();
    for (name, hook, _) in HOOKS {
        let program = datapath.sock_program_mut(name)?;
        program
            .attach(cgroup.fd(), CgroupAttachMode::Single)
            // aya's error display drops the errno; its Debug form keeps it.
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .with_context(|| format!("attaching {name} to {}", cgroup.path.display()))?;
        let program_id = program.info().map(|i| i.id()).unwrap_or(0);
        attached.push(CgroupAttachment {
            cgroup: cgroup.path.display().to_string(),
            hook,
            program_id,
            program_name: name.to_string(),
        });
    }
    Ok(attached)
}

/// The cookie of this process's network namespace, or None where the kernel cannot tell
/// (before 5.14): the socket hooks then stay off, because without it they could not keep
/// their hands off sockets of other namespaces.
pub fn netns_cookie() -> Option<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}

/// Programs of others that run on connect() for the processes of `cgroup` (its own and
/// those inherited from its ancestors, where a CNI attaches them: the hierarchy's root).
pub fn foreign_socket_programs(cgroup: &Cgroup) -> Vec<ForeignSocketProgram> {
    let names = program_names_by_id();
    let mut found = Vec::new();
    for (hook, attach_type) in [
        ("connect4", BPF_CGROUP_INET4_CONNECT),
        ("connect6", BPF_CGROUP_INET6_CONNECT),
    ] {
        let Ok(ids) = prog_query(cgroup.fd(), attach_type, BPF_F_QUERY_EFFECTIVE) else {
            continue;
        };
        for id in ids {
            let name = names.get(&id).cloned().unwrap_or_default();
            if name.starts_with(program_names::PREFIX) {
                continue;
            }
            found.push(ForeignSocketProgram {
                cgroup: cgroup.path.display().to_string(),
                hook,
                program_id: id,
                dataplane: dataplane_of(&name),
                program_name: name,
            });
        }
    }
    found
}

/// A guess from the program names these projects use for their connect() hooks.
pub fn dataplane_of(program_name: &str) -> &'static str {
    if program_name.starts_with("cil_") {
        "cilium (kube-proxy replacement / socket LB)"
    } else if program_name.starts_with("calico") || program_name.starts_with("cali_") {
        "calico (eBPF dataplane)"
    } else {
        "unknown"
    }
}

/// Our programs attached directly to `cgroup` (links and legacy attachments alike).
pub fn our_attachments(cgroup: &Cgroup) -> Vec<CgroupAttachment> {
    let names = program_names_by_id();
    let mut found = Vec::new();
    for (_, hook, attach_type) in HOOKS {
        let Ok(ids) = prog_query(cgroup.fd(), attach_type, 0) else {
            continue;
        };
        for id in ids {
            let Some(name) = names.get(&id) else { continue };
            if name.starts_with(program_names::PREFIX) {
                found.push(CgroupAttachment {
                    cgroup: cgroup.path.display().to_string(),
                    hook,
                    program_id: id,
                    program_name: name.clone(),
                });
            }
        }
    }
    found
}

/// Removes legacy (BPF_PROG_ATTACH) attachments of ours from `cgroup`: unlike links they
/// outlive their process. The agent itself only creates links, which the kernel removes
/// when the agent dies and which PROG_DETACH cannot touch (ENOENT): a live agent's hooks
/// are never removed here.
pub fn cleanup(cgroup: &Cgroup) -> Vec<CgroupAttachment> {
    let programs: HashMap<u32, ProgramInfo> = loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p))
        .collect();
    let mut removed = Vec::new();
    for attachment in our_attachments(cgroup) {
        let Some(attach_type) = HOOKS
            .iter()
            .find(|(_, hook, _)| *hook == attachment.hook)
            .map(|h| h.2)
        else {
            continue;
        };
        let Some(program) = programs.get(&attachment.program_id) else {
            continue;
        };
        let Ok(fd) = program.fd() else { continue };
        if prog_detach(cgroup.fd(), fd.as_fd(), attach_type).is_ok() {
            removed.push(attachment);
        }
    }
    removed
}

fn program_names_by_id() -> HashMap<u32, String> {
    loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect()
}

/// The `query` member of `union bpf_attr` (BPF_PROG_QUERY); aya 0.14 does not expose
/// a query for cgroup hooks.
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32, flags: u32) -> std::io::Result<Vec<u32>> {
    // 64 is far more than a cgroup hook holds in practice (the kernel's cap is 64 too).
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: flags,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `attr` (size given) and writes at most prog_cnt ids into `ids`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQueryAttr,
            std::mem::size_of::<ProgQueryAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    ids.truncate((attr.prog_cnt as usize).min(ids.len()));
    Ok(ids)
}

/// The attach/detach member of `union bpf_attr` (BPF_PROG_DETACH).
#[repr(C)]
#[derive(Default)]
struct ProgDetachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn prog_detach(
    cgroup: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<()> {
    let mut attr = ProgDetachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type,
        attach_flags: 0,
    };
    // SAFETY: bpf(2) only reads `attr`, of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_DETACH,
            &mut attr as *mut ProgDetachAttr,
            std::mem::size_of::<ProgDetachAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    fn dataplanes_are_named_by_their_program_names() {
        assert!(dataplane_of("cil_sock4_connect").starts_with("cilium"));
        assert!(dataplane_of("calico_connect_v4").starts_with("calico"));
        assert_eq!(dataplane_of("something"), "unknown");
    }

    #[test]
    fn program_names_fit_the_kernel_limit() {
        for name in PROGRAMS {
            assert!(
                name.len() <= 15 && name.starts_with(program_names::PREFIX),
                "{name}"
            );
        }
    }
}
