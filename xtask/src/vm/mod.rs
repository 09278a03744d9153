//! The kernel matrix: the project's own integration test binaries run inside QEMU on
//! Debian's cloud kernels (`cargo xtask test --kernel 6.1`, and as part of `cargo xtask
//! test`). See docs/testing.md ("Kernel VMs") for what runs where and why.
//!
//! How a run goes:
//! 1. cargo builds the agent and the test binaries for the guest's architecture (the same
//!    `cargo test --no-run` binaries the host runs);
//! 2. an initramfs is assembled from Debian's files of the guest's architecture (the
//!    host's own for amd64, an unpacked sysroot of arm64 packages for arm64, see
//!    `sysroot.rs`): busybox (mounts only), the tools the harness drives with the shared
//!    libraries they need (`ldd` on the host, `readelf -d` in a sysroot), the kernel
//!    modules the datapath and kube-proxy's modes need (loaded by the real `modprobe`, and
//!    autoloaded on demand like on a node), the binaries, and a generated `/init`;
//! 3. QEMU boots it with TCG (no KVM on these machines) and no network device at all: the
//!    guest's namespaces are the simulated node, and nothing can leave the VM;
//! 4. `/init` runs each test binary with an explicit list of tests, `CI=1` (a missing
//!    privilege fails instead of skipping) and `NLDNS_TEST_KERNEL_VM=1` (the dummy and
//!    IPVS tests must find the driver, not skip). Test output comes back on the second
//!    serial port, line by line; the kernel console goes to a log file shown on failure.

mod cpio;
mod plan;
pub mod sysroot;
pub mod verifier;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use cpio::Initramfs;
pub use plan::{Arch, Kernel, KERNELS};

/// The kernels `cargo xtask test --kernel NAME` names (`6.1`: both architectures;
/// `6.1-amd64`, `6.1-arm64`: one).
pub fn plan_kernel(name: &str) -> Result<Vec<&'static Kernel>> {
    let found = plan::find(name);
    if found.is_empty() {
        let names: Vec<String> = KERNELS
            .iter()
            .map(|k| format!("{}-{}", k.name, k.arch.name()))
            .collect();
        bail!("no kernel {name} in the VM matrix (known: 6.1, {names:?})");
    }
    Ok(found)
}

/// Debian packages the VM runs need installed on the host (by `cargo xtask setup`):
/// QEMU for both architectures, and the host architecture's tools and kernels. The other
/// architecture's come unpacked into a sysroot ([`setup_foreign`]).
pub fn apt_packages() -> Vec<&'static str> {
    let mut packages = vec![
        "qemu-system-x86",
        "qemu-system-arm",
        "busybox-static",
        "ipvsadm",
        "kmod",
        "binutils",
    ];
    packages.extend(
        KERNELS
            .iter()
            .filter(|k| k.arch.is_host())
            .map(|k| k.package),
    );
    packages
}

/// The cargo targets of the foreign-architecture builds (`rustup target add` by `cargo
/// xtask setup`; their linker, rust-lld, ships with rustc).
pub fn rust_targets() -> Vec<&'static str> {
    let mut targets: Vec<&str> = KERNELS
        .iter()
        .filter_map(|k| k.arch.cargo_target())
        .collect();
    targets.dedup();
    targets
}

/// The sysroots of the kernels of other architectures (`cargo xtask setup`; a no-op when
/// up to date).
pub fn setup_foreign(root: &Path) -> Result<()> {
    for arch in [Arch::Amd64, Arch::Arm64] {
        let kernels: Vec<&Kernel> = KERNELS.iter().filter(|k| k.arch == arch).collect();
        if !arch.is_host() && !kernels.is_empty() {
            sysroot::ensure(root, arch, &kernels)?;
        }
    }
    Ok(())
}

/// Where guest results are kept: `target/vm/<kernel>-<arch>/` (console log, verifier
/// stats, the initramfs).
fn work_dir(root: &Path, kernel: &Kernel) -> PathBuf {
    root.join("target/vm")
        .join(format!("{}-{}", kernel.name, kernel.arch.name()))
}

/// Per-program verifier work recorded by the test runs, one JSON object per line, one file
/// per kernel: `target/verifier/<arch>-<release>.jsonl` (read by the bench report).
pub fn verifier_dir(root: &Path) -> PathBuf {
    root.join("target/verifier")
}

/// Boots `kernel` and runs its test plan; `filter` keeps only the tests whose name
/// contains it. Fails if any guest test fails or the guest does not finish.
pub fn run(root: &Path, kernel: &Kernel, filter: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let label = kernel.label();
    let work = work_dir(root, kernel);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let suites = plan::suites(kernel, filter);
    anyhow::ensure!(!suites.is_empty(), "no VM test matches {filter:?}");

    let binaries = build(root, kernel, &suites)?;
    let built = started.elapsed();
    let initrd = work.join("initramfs.cpio");
    let files = kernel.files_root(root);
    if !kernel.arch.is_host() {
        sysroot::ensure(root, kernel.arch, &[kernel])?;
    }
    let fs = assemble(&files, kernel, &suites, &binaries)?;
    fs.write_to(&initrd)?;
    eprintln!(
        "xtask vm: {label}: initramfs {} MiB (built in {:.0?}, assembled in {:.0?})",
        fs.data_size() / (1 << 20),
        built,
        started.elapsed() - built
    );
    let outcome = boot(root, kernel, &label, &initrd, &work)?;
    let verifier = verifier_dir(root);
    std::fs::create_dir_all(&verifier)?;
    if let Some(release) = &outcome.release {
        if !outcome.verifier_lines.is_empty() {
            let path = verifier.join(format!("{}-{release}.jsonl", kernel.arch.uname()));
            std::fs::write(&path, outcome.verifier_lines.join("\n") + "\n")?;
            eprintln!(
                "xtask vm: {label}: verifier work recorded in {}",
                path.display()
            );
        }
    }
    let took = started.elapsed();
    eprintln!(
        "xtask vm: {label}: {} passed, {} failed, guest {:.0?}, whole VM part {:.0?}",
        outcome.passed, outcome.failed, outcome.guest_time, took
    );
    let missing: Vec<&String> = suites
        .iter()
        .map(|s| &s.name)
        .filter(|name| !outcome.exits.iter().any(|(n, _)| n == *name))
        .collect();
    let bad: Vec<&(String, i32)> = outcome.exits.iter().filter(|(_, rc)| *rc != 0).collect();
    if !outcome.done
        || outcome.leftovers
        || !missing.is_empty()
        || !bad.is_empty()
        || outcome.failed > 0
    {
        let console = std::fs::read_to_string(work.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        eprintln!(
            "---- {label}: last lines of the guest console ({}):",
            work.join("console.log").display()
        );
        for line in tail.iter().rev() {
            eprintln!("[{label} console] {}", line.trim_end_matches('\r'));
        }
        bail!(
            "{label}: guest tests failed (finished: {}, leftovers: {}, suites without a \
             result: {missing:?}, failing suites: {bad:?})",
            outcome.done,
            outcome.leftovers
        );
    }
    Ok(())
}

/// A test binary to run in the guest.
struct Built {
    suite: String,
    path: PathBuf,
}

/// Builds the agent and the test binaries of `suites`; returns the agent's path and the
/// test executables.
fn build(root: &Path, kernel: &Kernel, suites: &[plan::Suite]) -> Result<(PathBuf, Vec<Built>)> {
    let target = kernel.arch.cargo_target();
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(root)
            // Static aarch64-musl binaries need no cross gcc: rust-lld links them.
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld");
        c
    };
    let mut agent = cargo();
    agent.args(["build", "-p", "nldns-userspace", "--bin", "nldns"]);
    if let Some(t) = target {
        agent.args(["--release", "--target", t]);
    }
    cmd::run(&mut agent)?;
    let agent_path = match target {
        Some(t) => root.join("target").join(t).join("release/nldns"),
        None => root.join("target/debug/nldns"),
    };
    let mut built = Vec::new();
    let packages: BTreeSet<&str> = suites.iter().map(|s| s.package).collect();
    for package in packages {
        let mut c = cargo();
        c.args(["test", "--no-run", "--message-format=json", "-p", package]);
        for suite in suites.iter().filter(|s| s.package == package) {
            c.args(["--test", &suite.name]);
        }
        if let Some(t) = target {
            c.args(["--release", "--target", t]);
        }
        eprintln!("xtask vm: $ {c:?}");
        let out = c
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo test --no-run")?;
        if !out.status.success() {
            bail!("cargo test --no-run -p {package} failed");
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = msg["executable"].as_str() else {
                continue;
            };
            let is_test = msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            let name = msg["target"]["name"].as_str().unwrap_or_default();
            if is_test
                && suites
                    .iter()
                    .any(|s| s.name == name && s.package == package)
            {
                built.push(Built {
                    suite: name.to_string(),
                    path: PathBuf::from(exe),
                });
            }
        }
    }
    for suite in suites {
        anyhow::ensure!(
            built.iter().any(|b| b.suite == suite.name),
            "cargo built no test binary {} of {}",
            suite.name,
            suite.package
        );
    }
    Ok((agent_path, built))
}

/// Guest paths of the project's own files.
const GUEST_AGENT: &str = "/opt/nldns/nldns";
const GUEST_TESTS: &str = "/opt/nldns/tests";
const GUEST_VERIFIER: &str = "/tmp/nldns-verifier.jsonl";

/// `files`: where the guest architecture's Debian files are on the host (`/`, or the
/// unpacked sysroot of a foreign architecture).
fn assemble(
    files: &Path,
    kernel: &Kernel,
    suites: &[plan::Suite],
    (agent, binaries): &(PathBuf, Vec<Built>),
) -> Result<Initramfs> {
    let mut fs = Initramfs::default();
    for dir in [
        "proc", "sys", "dev", "run", "tmp", "root", "var/tmp", "etc", "usr/bin", "usr/sbin",
        "usr/lib",
    ] {
        fs.dir(dir);
    }
    // Debian 12 is merged-/usr: keep the same layout so the libraries' paths resolve.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if files.join(link).is_symlink() {
            fs.symlink(link, target);
        }
    }
    let mut copier = Copier::new(files, kernel.arch);
    if kernel.arch.is_host() {
        for tool in plan::GUEST_TOOLS {
            let path = find_tool(tool).with_context(|| {
                format!("the VM needs `{tool}` on the host (cargo xtask setup installs it)")
            })?;
            copier.add(&mut fs, &path)?;
        }
        // iptables-nft loads its matches and targets (comment, statistic, DNAT,
        // NOTRACK...) with dlopen, which ldd cannot see.
        let xtables = Path::new("/usr/lib")
            .join(kernel.arch.multiarch())
            .join("xtables");
        for entry in
            std::fs::read_dir(&xtables).with_context(|| format!("reading {}", xtables.display()))?
        {
            copier.add(&mut fs, &entry?.path())?;
        }
    } else {
        // The same tools and iptables extensions, from the sysroot.
        for path in sysroot::tool_paths(files, kernel.arch)? {
            copier.add(&mut fs, &path)?;
        }
    }
    // Architecture-independent tables: the host's.
    for file in ["/etc/protocols", "/etc/services", "/etc/ethertypes"] {
        if let Ok(data) = std::fs::read(file) {
            fs.file(file, data, 0o644);
        }
    }
    fs.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nknot:x:101:101::/tmp:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n".to_vec(),
        0o644,
    );
    fs.file(
        "etc/group",
        b"root:x:0:\nknot:x:101:\nnogroup:x:65534:\n".to_vec(),
        0o644,
    );
    fs.file(
        "etc/hosts",
        b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
        0o644,
    );
    fs.file("etc/resolv.conf", b"nameserver 127.0.0.1\n".to_vec(), 0o644);
    modules(&mut fs, &mut copier, kernel)?;

    // The project's own binaries are built for the guest (static for a foreign one).
    fs.file(GUEST_AGENT, read_stripped(agent)?, 0o755);
    copier.libraries(&mut fs, agent)?;
    for built in binaries {
        fs.file(
            &format!("{GUEST_TESTS}/{}", built.suite),
            read_stripped(&built.path)?,
            0o755,
        );
        copier.libraries(&mut fs, &built.path)?;
    }
    fs.file("init", init_script(kernel, suites).into_bytes(), 0o755);
    Ok(fs)
}

/// The file without debug info (the test binaries are several times smaller, and the
/// guest unpacks every byte under TCG).
fn read_stripped(path: &Path) -> Result<Vec<u8>> {
    let tmp = std::env::temp_dir().join(format!(
        "nldns-vm-strip-{}-{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .arg(&tmp)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let data = if stripped {
        std::fs::read(&tmp)
    } else {
        std::fs::read(path)
    };
    let _ = std::fs::remove_file(&tmp);
    data.with_context(|| format!("reading {}", path.display()))
}

/// Copies files of a Debian tree (the host's `/`, or a sysroot) into the image at the
/// same guest paths, with their symlink chains and shared libraries.
struct Copier {
    /// Where guest path `/x` is on the host: `files/x`.
    files: PathBuf,
    arch: Arch,
    seen: BTreeSet<PathBuf>,
}

impl Copier {
    fn new(files: &Path, arch: Arch) -> Copier {
        Copier {
            files: files.to_path_buf(),
            arch,
            seen: BTreeSet::new(),
        }
    }

    /// Adds guest path `path`.
    fn add(&mut self, fs: &mut Initramfs, path: &Path) -> Result<()> {
        let mut queue = VecDeque::from([path.to_path_buf()]);
        while let Some(path) = queue.pop_front() {
            if !self.seen.insert(path.clone()) {
                continue;
            }
            // Resolve the directories (merged /usr), keep the file's own symlink.
            let parent = path.parent().context("a file path has a parent")?;
            let parent = sysroot::resolve(&self.files, parent)
                .with_context(|| format!("resolving {}", parent.display()))?;
            let real = parent.join(path.file_name().context("file name")?);
            let host = sysroot::host_path(&self.files, &real);
            let guest = real.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&host)
                .with_context(|| format!("reading {}", host.display()))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host)?;
                fs.symlink(&guest, &target.to_string_lossy());
                queue.push_back(parent.join(target));
                continue;
            }
            if meta.is_dir() {
                fs.dir(&guest);
                continue;
            }
            use std::os::unix::fs::PermissionsExt;
            let data =
                std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
            let is_elf = data.starts_with(b"\x7fELF");
            fs.file(&guest, data, meta.permissions().mode() & 0o7777);
            if is_elf {
                queue.extend(self.needed(&host)?);
            }
        }
        Ok(())
    }

    /// The guest paths of the shared libraries (and loader) of host file `host`: `ldd`
    /// for the host's own architecture, `NEEDED` entries found in the tree otherwise.
    fn needed(&self, host: &Path) -> Result<Vec<PathBuf>> {
        if self.arch.is_host() {
            return Ok(ldd(host));
        }
        let (needed, interp) = sysroot::elf_deps(host)?;
        let mut libs: Vec<PathBuf> = interp.into_iter().map(PathBuf::from).collect();
        for soname in needed {
            libs.push(
                sysroot::find_library(&self.files, self.arch, &soname).with_context(|| {
                    format!(
                        "{} needs {soname}, which is not in {} (cargo xtask setup)",
                        host.display(),
                        self.files.display()
                    )
                })?,
            );
        }
        Ok(libs)
    }

    /// Only the shared libraries of host file `binary` (the binary itself goes in
    /// elsewhere; nothing for a static one).
    fn libraries(&mut self, fs: &mut Initramfs, binary: &Path) -> Result<()> {
        for lib in self.needed(binary)? {
            self.add(fs, &lib)?;
        }
        Ok(())
    }
}

/// The absolute paths `ldd` lists (libraries and the dynamic loader); empty for a static
/// binary.
fn ldd(binary: &Path) -> Vec<PathBuf> {
    let Some(out) = cmd::output(Command::new("ldd").arg(binary)) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.exists())
}

/// The modules the datapath and the kube-proxy stand-ins need, with everything they
/// depend on (modules.dep), plus the rest of the networking tree so that the kernel's
/// on-demand loading (`request_module`, e.g. an iptables target) finds what a node's would.
fn modules(fs: &mut Initramfs, copier: &mut Copier, kernel: &Kernel) -> Result<()> {
    let base = kernel.modules_dir();
    let host_base = sysroot::host_path(&copier.files, &base);
    let dep_path = host_base.join("modules.dep");
    let deps = std::fs::read_to_string(&dep_path).with_context(|| {
        format!(
            "reading {} (is {} installed? `cargo xtask setup`)",
            dep_path.display(),
            kernel.package
        )
    })?;
    let mut wanted = BTreeSet::new();
    for line in deps.lines() {
        let Some((module, _)) = line.split_once(':') else {
            continue;
        };
        let name = module
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".ko");
        if module.starts_with("kernel/net/")
            || plan::MODULES.contains(&name)
            || kernel.arch.early_modules().contains(&name)
        {
            wanted.insert(module.to_string());
            for dep in line
                .split_once(':')
                .map(|x| x.1)
                .unwrap_or("")
                .split_whitespace()
            {
                wanted.insert(dep.to_string());
            }
        }
    }
    for name in plan::MODULES.iter().chain(kernel.arch.early_modules()) {
        anyhow::ensure!(
            wanted
                .iter()
                .any(|m| m.rsplit('/').next() == Some(&format!("{name}.ko"))),
            "module {name} not found in {}",
            dep_path.display()
        );
    }
    for module in &wanted {
        copier.add(fs, &base.join(module))?;
    }
    for entry in std::fs::read_dir(&host_base)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("modules.") {
            copier.add(fs, &base.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The guest's PID 1 (run by dash as /bin/sh; busybox only for mounting and power-off,
/// always called by full path so its applets never stand in for the real tools).
fn init_script(kernel: &Kernel, suites: &[plan::Suite]) -> String {
    let mut runs = String::new();
    for suite in suites {
        let tests: Vec<String> = suite.tests.iter().map(|t| format!("'{t}'")).collect();
        runs.push_str(&format!(
            "echo \"NLDNS-VM-BEGIN {name}\" >&3\n\
             {GUEST_TESTS}/{name} --exact --test-threads=1 {tests} >&3 2>&3\n\
             echo \"NLDNS-VM-EXIT {name} $?\" >&3\n",
            name = suite.name,
            tests = tests.join(" "),
        ));
    }
    let modprobe: Vec<&str> = plan::MODULES.to_vec();
    format!(
        r#"#!/bin/sh
# Generated by xtask/src/vm/mod.rs: PID 1 of the nldns test VM ({kernel} {arch}).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
bb=/usr/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mount -t tmpfs tmpfs /run
$bb mount -t tmpfs tmpfs /tmp
$bb mkdir -p /dev/shm /sys/fs/cgroup
$bb mount -t tmpfs tmpfs /dev/shm
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
$bb mount -t bpf bpf /sys/fs/bpf
# Test output goes to its own port ({results}), read line by line by the host.
{early}i=0
while [ ! -c {results} ] && [ $i -lt 50 ]; do $bb sleep 0.1; i=$((i + 1)); done
exec 3>{results}
echo "NLDNS-VM-KERNEL $($bb uname -r) $($bb uname -m)" >&3
for m in {modprobe}; do
    modprobe "$m" || echo "NLDNS-VM-ERROR modprobe $m failed" >&3
done
ip link set lo up
# The agent wants a high RLIMIT_NOFILE; PID 1's children get 4096 as the hard limit.
ulimit -Hn 1048576
ulimit -Sn 1048576
export CI=1 NLDNS_TEST_KERNEL_VM=1 NLDNS_BIN={GUEST_AGENT} NLDNS_VERIFIER_STATS={GUEST_VERIFIER}
export HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1
cd /tmp
start=$($bb cut -d. -f1 /proc/uptime)
{runs}
if [ -f {GUEST_VERIFIER} ]; then
    while read -r line; do echo "NLDNS-VM-VERIFIER $line" >&3; done < {GUEST_VERIFIER}
fi
echo "NLDNS-VM-DONE $(( $($bb cut -d. -f1 /proc/uptime) - start ))" >&3
# Anything the tests left behind would show here.
left="$(ip netns list) $($bb ls /sys/fs/cgroup | $bb grep nldns) $($bb ls /sys/fs/bpf)"
echo "NLDNS-VM-LEFTOVERS [$(echo $left)]" >&3
$bb sync
$bb poweroff -f
"#,
        kernel = kernel.name,
        arch = kernel.arch.name(),
        modprobe = modprobe.join(" "),
        early = kernel
            .arch
            .early_modules()
            .iter()
            .map(|m| format!("modprobe {m}\n"))
            .collect::<String>(),
        results = kernel.arch.results_device(),
    )
}

struct Outcome {
    done: bool,
    /// Namespaces, cgroups or pinned objects the tests left in the guest.
    leftovers: bool,
    release: Option<String>,
    passed: usize,
    failed: usize,
    exits: Vec<(String, i32)>,
    verifier_lines: Vec<String>,
    guest_time: Duration,
}

/// The whole guest run may take this long before QEMU is killed.
const GUEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

fn boot(root: &Path, kernel: &Kernel, label: &str, initrd: &Path, work: &Path) -> Result<Outcome> {
    let console = work.join("console.log");
    let mut qemu = Command::new(kernel.arch.qemu());
    qemu.args(kernel.arch.machine_args())
        .args(["-smp", "2", "-m", "2048"])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        // No network device: nothing in the guest can reach anything outside it.
        .args(["-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(kernel.arch.results_args())
        .arg("-kernel")
        .arg(kernel.vmlinuz(root))
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console={} panic=-1 rdinit=/init quiet",
            kernel.arch.console()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("xtask vm: {label}: $ {qemu:?}");
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting QEMU")?;
    let pid = child.id();
    // A watchdog kills this QEMU (by its pid only) if the guest wedges.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if stop_rx.recv_timeout(GUEST_TIMEOUT).is_err() {
            eprintln!("xtask vm: guest timed out after {GUEST_TIMEOUT:?}; killing QEMU {pid}");
            // SAFETY: kill(2) on the pid of the QEMU child this function started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let mut outcome = Outcome {
        done: false,
        leftovers: false,
        release: None,
        passed: 0,
        failed: 0,
        exits: Vec::new(),
        verifier_lines: Vec::new(),
        guest_time: Duration::ZERO,
    };
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).replace('\r', "");
        if let Some(rest) = line.strip_prefix("NLDNS-VM-VERIFIER ") {
            outcome.verifier_lines.push(rest.to_string());
            continue;
        }
        println!("[{label}] {line}");
        if let Some(rest) = line.strip_prefix("NLDNS-VM-KERNEL ") {
            outcome.release = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("NLDNS-VM-EXIT ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(rc)) = (parts.next(), parts.next()) {
                outcome
                    .exits
                    .push((name.to_string(), rc.parse().unwrap_or(-1)));
            }
        } else if let Some(rest) = line.strip_prefix("NLDNS-VM-LEFTOVERS ") {
            outcome.leftovers = rest.trim() != "[]";
        } else if line.starts_with("NLDNS-VM-DONE") {
            outcome.done = true;
        } else if line.starts_with("test ") && line.ends_with(" ... ok") {
            outcome.passed += 1;
        } else if line.starts_with("test ") && line.ends_with(" ... FAILED") {
            outcome.failed += 1;
        }
    }
    let status = child.wait().context("waiting for QEMU")?;
    let _ = stop_tx.send(());
    let _ = watchdog.join();
    outcome.guest_time = started.elapsed();
    if !status.success() && outcome.done {
        eprintln!("xtask vm: {label}: QEMU exited with {status}");
    }
    Ok(outcome)
}
