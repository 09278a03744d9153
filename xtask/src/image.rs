//! `cargo xtask image`: the agent's multi-architecture container image (linux/amd64 and
//! linux/arm64), built without a container daemon.
//!
//! 1. For each platform, `cargo build --release --target <arch>-unknown-linux-musl -p
//!    nldns-userspace` (the musl targets come from `rustup target add`; aarch64 links
//!    with rust-lld, no cross gcc): a static, stripped `nldns`. The eBPF object inside is
//!    the same bpfel object on both.
//! 2. Writes an OCI image layout by hand: per platform one gzip layer holding
//!    `/usr/local/bin/nldns`, its config and its manifest; an image index listing the
//!    manifests with their platforms (a runtime pulls the one of its node); `index.json`
//!    naming that index `nldns:latest` (the manifests' placeholder); `oci-layout`; every
//!    blob named by its sha256. It is packed as `<target>/nldns-image.oci.tar`,
//!    byte-for-byte reproducible (fixed timestamps, owners and order). `podman load`,
//!    `ctr images import --all-platforms`, `kind load image-archive` and `skopeo copy
//!    --all oci-archive:` take the whole index. It also carries a Docker-style
//!    `manifest.json` naming the amd64 image, for `docker load` before OCI support.
//! 3. Verifies the archive ([`verify`]): digests and sizes of every blob, each layer's
//!    diff_id, that each manifest's config and binary are of its platform's
//!    architecture, then unpacks each layer into a scratch root and runs the entrypoint
//!    there with `--version` under `chroot`, which only works if the binary is static
//!    (the arm64 one under `qemu-aarch64-static`, copied into the scratch root).
//!
//! `Containerfile` at the top of the repository describes the same image for daemon
//! builds (`podman build`/`docker build` after step 1).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One platform of the image index.
pub struct Platform {
    /// GOARCH-style name, as in OCI `platform.architecture`.
    pub arch: &'static str,
    /// OCI `platform.variant` (arm64: v8, what runtimes on arm64 nodes ask for).
    pub variant: Option<&'static str>,
    pub target: &'static str,
    /// ELF `e_machine` of its binaries.
    pub elf_machine: u16,
    /// The user-mode emulator the run check needs on a host of another architecture.
    pub emulator: Option<&'static str>,
}

pub const PLATFORMS: &[Platform] = &[
    Platform {
        arch: "amd64",
        variant: None,
        target: "x86_64-unknown-linux-musl",
        elf_machine: 0x3e,
        emulator: None,
    },
    Platform {
        arch: "arm64",
        variant: Some("v8"),
        target: "aarch64-unknown-linux-musl",
        elf_machine: 0xb7,
        emulator: Some("/usr/bin/qemu-aarch64-static"),
    },
];

impl Platform {
    fn native(&self) -> bool {
        (self.arch == "amd64" && cfg!(target_arch = "x86_64"))
            || (self.arch == "arm64" && cfg!(target_arch = "aarch64"))
    }

    fn json(&self) -> Value {
        let mut p = json!({ "architecture": self.arch, "os": "linux" });
        if let Some(v) = self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

pub const ARCHIVE_NAME: &str = "nldns-image.oci.tar";
/// Where the binary lives inside the image.
pub const BINARY_IN_IMAGE: &str = "usr/local/bin/nldns";
const IMAGE_NAME: &str = "nldns";
const IMAGE_TAG: &str = "latest";
/// Every timestamp in the image: reproducible builds.
const EPOCH: &str = "1970-01-01T00:00:00Z";

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Builds the static agent for every platform, writes `<target
/// dir>/nldns-image.oci.tar`, verifies it, and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let target_dir = target_dir(root);
    let mut binaries = Vec::new();
    for platform in PLATFORMS {
        let started = Instant::now();
        let elf = build_binary(root, &target_dir, platform)?;
        eprintln!(
            "image: linux/{} binary {} bytes (built in {:.0?})",
            platform.arch,
            elf.len(),
            started.elapsed()
        );
        binaries.push((platform, elf));
    }
    let out = target_dir.join(ARCHIVE_NAME);
    let summary = write_archive(&binaries, &version(root), &out)?;
    eprintln!(
        "image: wrote {} ({} bytes; layers {:?} bytes gzip)",
        out.display(),
        fs::metadata(&out)?.len(),
        summary.layer_sizes
    );
    verify(&out)?;
    Ok(out)
}

fn build_binary(root: &Path, target_dir: &Path, platform: &Platform) -> Result<Vec<u8>> {
    ensure_musl_target(platform.target)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        // rust-lld (shipped with rustc) links the static aarch64 binary: no cross gcc.
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .args([
            "build",
            "--release",
            "--target",
            platform.target,
            "-p",
            "nldns-userspace",
            "--bin",
            "nldns",
            // Symbols are a third or more of the binary and nobody reads them in a
            // container. Only the agent's own link is stripped: the eBPF object inside
            // it is embedded bytes, its BTF stays.
            "--config",
            "profile.release.package.nldns-userspace.strip=\"symbols\"",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .context("image: running cargo build for the musl target")?;
    ensure!(
        status.success(),
        "image: cargo build --target {} -p nldns-userspace failed ({status})",
        platform.target
    );
    let binary = target_dir
        .join(platform.target)
        .join("release")
        .join("nldns");
    let elf = fs::read(&binary).with_context(|| format!("image: reading {}", binary.display()))?;
    ensure!(
        !elf_has_interpreter(&elf)?,
        "image: {} is dynamically linked (has PT_INTERP); a FROM-scratch image needs a static binary",
        binary.display()
    );
    Ok(elf)
}

/// Same target directory rule as cargo: `CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root.join(d)
            }
        }
        _ => root.join("target"),
    }
}

fn ensure_musl_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("image: running rustup (needed to add the musl target)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .status()?;
    ensure!(status.success(), "image: rustup target add {target} failed");
    Ok(())
}

/// The workspace version from `[workspace.package]` in the root Cargo.toml.
fn version(root: &Path) -> String {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section && line.starts_with("version") {
            if let Some(v) = line.split('"').nth(1) {
                return v.to_string();
            }
        }
    }
    "0.0.0".into()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar header with fixed owner and time, so that the archive is reproducible.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, path: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data)?;
    Ok(())
}

/// The single layer: the binary and the directory the ConfigMap is mounted on.
fn layer_tar(binary: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["etc/", "etc/nldns/", "usr/", "usr/local/", "usr/local/bin/"] {
        append_dir(&mut b, dir)?;
    }
    append_file(&mut b, BINARY_IN_IMAGE, 0o755, binary)?;
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name: reproducible.
    let mut e = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    e.write_all(data)?;
    Ok(e.finish()?)
}

struct Summary {
    layer_sizes: Vec<usize>,
}

/// One JSON blob: its bytes and its descriptor.
fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(data)), "size": data.len() })
}

fn write_archive(binaries: &[(&Platform, Vec<u8>)], version: &str, out: &Path) -> Result<Summary> {
    let labels = json!({
        "org.opencontainers.image.title": "nldns",
        "org.opencontainers.image.description": "eBPF node-local DNS cache for Kubernetes",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    });
    // BTreeMap: a fixed order of the blobs.
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifests = Vec::new();
    let mut layer_sizes = Vec::new();
    let mut docker_manifest = Vec::new();
    for (platform, binary) in binaries {
        let layer = layer_tar(binary)?;
        let diff_id = format!("sha256:{}", sha256_hex(&layer));
        let layer_gz = gzip(&layer)?;
        let mut config = json!({
            "created": EPOCH,
            "architecture": platform.arch,
            "os": "linux",
            "config": {
                "Entrypoint": [format!("/{BINARY_IN_IMAGE}")],
                "Cmd": ["run"],
                "Env": ["PATH=/usr/local/bin"],
                "WorkingDir": "/",
                "Labels": labels,
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": EPOCH, "created_by": format!("cargo xtask image (static musl nldns for {} on scratch)", platform.target) }],
        });
        if let Some(v) = platform.variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": descriptor(MT_CONFIG, &config),
            "layers": [descriptor(MT_LAYER, &layer_gz)],
            "annotations": { "org.opencontainers.image.version": version },
        });
        let manifest = serde_json::to_vec(&manifest)?;
        let mut entry = descriptor(MT_MANIFEST, &manifest);
        entry["platform"] = platform.json();
        manifests.push(entry);
        if platform.arch == "amd64" {
            // `docker load` (before OCI-archive support) reads this one: one image per
            // tag, so the amd64 one.
            docker_manifest.push(json!({
                "Config": format!("blobs/sha256/{}", sha256_hex(&config)),
                "RepoTags": [format!("{IMAGE_NAME}:{IMAGE_TAG}")],
                "Layers": [format!("blobs/sha256/{}", sha256_hex(&layer_gz))],
            }));
        }
        layer_sizes.push(layer_gz.len());
        for data in [config, layer_gz, manifest] {
            blobs.insert(sha256_hex(&data), data);
        }
    }
    // The image index a runtime picks its platform from; index.json names it.
    let image_index = json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": manifests,
        "annotations": { "org.opencontainers.image.version": version },
    });
    let image_index = serde_json::to_vec(&image_index)?;
    let mut top = descriptor(MT_INDEX, &image_index);
    top["annotations"] = json!({
        "org.opencontainers.image.ref.name": IMAGE_TAG,
        "io.containerd.image.name": format!("docker.io/library/{IMAGE_NAME}:{IMAGE_TAG}"),
    });
    blobs.insert(sha256_hex(&image_index), image_index);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [top],
    });

    let mut b = tar::Builder::new(Vec::new());
    append_file(
        &mut b,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append_file(&mut b, "index.json", 0o644, &serde_json::to_vec(&index)?)?;
    append_file(
        &mut b,
        "manifest.json",
        0o644,
        &serde_json::to_vec(&docker_manifest)?,
    )?;
    append_dir(&mut b, "blobs/")?;
    append_dir(&mut b, "blobs/sha256/")?;
    for (digest, data) in &blobs {
        append_file(&mut b, &format!("blobs/sha256/{digest}"), 0o644, data)?;
    }
    let bytes = b.into_inner()?;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("tar.tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("image: writing {}", tmp.display()))?;
    fs::rename(&tmp, out)?;
    Ok(Summary { layer_sizes })
}

/// ELF `e_machine` (0x3e x86-64, 0xb7 aarch64).
pub fn elf_machine(elf: &[u8]) -> Result<u16> {
    ensure!(
        elf.len() >= 20 && &elf[..4] == b"\x7fELF",
        "not an ELF file"
    );
    Ok(u16::from_le_bytes([elf[18], elf[19]]))
}

/// True when the ELF file asks for a program interpreter (dynamic linking).
pub fn elf_has_interpreter(elf: &[u8]) -> Result<bool> {
    ensure!(
        elf.len() >= 64 && &elf[..4] == b"\x7fELF",
        "not an ELF file"
    );
    ensure!(
        elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        ensure!(o + 4 <= elf.len(), "truncated ELF program headers");
        if u32::from_le_bytes(elf[o..o + 4].try_into()?) == 3 {
            return Ok(true); // PT_INTERP
        }
    }
    Ok(false)
}

fn read_archive(archive: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let file = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(file).entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            files.insert(path, data);
        }
    }
    Ok(files)
}

fn blob<'a>(
    files: &'a BTreeMap<String, Vec<u8>>,
    descriptor: &Value,
    what: &str,
) -> Result<&'a [u8]> {
    let digest = descriptor["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("{what}: descriptor without digest"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("{what}: digest {digest} is not sha256"))?;
    let data = files
        .get(&format!("blobs/sha256/{hex}"))
        .ok_or_else(|| anyhow!("{what}: blob {digest} missing from the archive"))?;
    ensure!(
        sha256_hex(data) == hex,
        "{what}: blob {digest} does not match its content"
    );
    ensure!(
        descriptor["size"].as_u64() == Some(data.len() as u64),
        "{what}: size {} in the descriptor, {} in the blob",
        descriptor["size"],
        data.len()
    );
    Ok(data)
}

/// Checks an archive written by [`build`]: layout, the image index and one manifest per
/// platform, digests, sizes, diff_ids, each config's and binary's architecture; unpacks
/// each platform's layer into `<archive>.rootfs-<arch>/` and runs the entrypoint there
/// with `--version` under `chroot` (nothing from the host is reachable: it runs only if
/// static; a foreign binary under its user-mode emulator, copied into that root).
pub fn verify(archive: &Path) -> Result<()> {
    let files = read_archive(archive)?;
    let layout: Value = serde_json::from_slice(
        files
            .get("oci-layout")
            .ok_or_else(|| anyhow!("image check: no oci-layout file"))?,
    )?;
    ensure!(
        layout["imageLayoutVersion"] == "1.0.0",
        "image check: oci-layout is {layout}"
    );
    let index: Value = serde_json::from_slice(
        files
            .get("index.json")
            .ok_or_else(|| anyhow!("image check: no index.json"))?,
    )?;
    let top = &index["manifests"][0];
    ensure!(
        top["mediaType"] == MT_INDEX
            && top["annotations"]["org.opencontainers.image.ref.name"] == IMAGE_TAG,
        "image check: index.json does not name an image index {IMAGE_TAG}"
    );
    let image_index: Value =
        serde_json::from_slice(blob(&files, top, "image check: image index")?)?;
    let manifests = image_index["manifests"]
        .as_array()
        .ok_or_else(|| anyhow!("image check: the image index lists no manifests"))?;
    for platform in PLATFORMS {
        let found: Vec<&Value> = manifests
            .iter()
            .filter(|m| m["platform"] == platform.json())
            .collect();
        ensure!(
            found.len() == 1,
            "image check: {} manifests for linux/{} in the image index",
            found.len(),
            platform.arch
        );
        verify_platform(archive, &files, found[0], platform)
            .with_context(|| format!("image check: linux/{}", platform.arch))?;
    }
    ensure!(
        manifests.len() == PLATFORMS.len(),
        "image check: {} manifests in the image index, {} platforms",
        manifests.len(),
        PLATFORMS.len()
    );
    eprintln!(
        "image check: ok (linux/{}; archive {} bytes)",
        PLATFORMS
            .iter()
            .map(|p| p.arch)
            .collect::<Vec<_>>()
            .join(", linux/"),
        fs::metadata(archive)?.len()
    );
    Ok(())
}

fn verify_platform(
    archive: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    descriptor: &Value,
    platform: &Platform,
) -> Result<()> {
    ensure!(
        descriptor["mediaType"] == MT_MANIFEST,
        "the index entry is not an image manifest"
    );
    let manifest: Value = serde_json::from_slice(blob(files, descriptor, "manifest")?)?;
    let config: Value = serde_json::from_slice(blob(files, &manifest["config"], "config")?)?;
    ensure!(
        config["architecture"] == platform.arch && config["os"] == "linux",
        "config says {}/{}",
        config["os"],
        config["architecture"]
    );
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| anyhow!("manifest has no layers"))?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        layers.len() == diff_ids.len(),
        "{} layers but {} diff_ids",
        layers.len(),
        diff_ids.len()
    );

    let rootfs = archive.with_extension(format!("rootfs-{}", platform.arch));
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs)?;
    }
    fs::create_dir_all(&rootfs)?;
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let gz = blob(files, layer, "layer")?;
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut tar_bytes)
            .context("layer is not gzip")?;
        ensure!(
            diff_id.as_str() == Some(format!("sha256:{}", sha256_hex(&tar_bytes)).as_str()),
            "layer diff_id {diff_id} does not match the uncompressed layer"
        );
        let mut ar = tar::Archive::new(tar_bytes.as_slice());
        ar.set_preserve_permissions(true);
        ar.unpack(&rootfs).context("unpacking the layer")?;
    }

    let entrypoint: Vec<String> = config["config"]["Entrypoint"]
        .as_array()
        .ok_or_else(|| anyhow!("config has no Entrypoint"))?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let program = entrypoint
        .first()
        .ok_or_else(|| anyhow!("empty Entrypoint"))?;
    let in_root = rootfs.join(program.trim_start_matches('/'));
    let elf =
        fs::read(&in_root).with_context(|| format!("entrypoint {program} is not in the image"))?;
    ensure!(
        !elf_has_interpreter(&elf)?,
        "{program} is dynamically linked"
    );
    ensure!(
        elf_machine(&elf)? == platform.elf_machine,
        "{program} is an ELF for machine {:#x}, not {} ({:#x})",
        elf_machine(&elf)?,
        platform.arch,
        platform.elf_machine
    );

    // chroot: the image's root is all the binary sees, as in a FROM-scratch container.
    // A foreign binary runs under the static user-mode emulator, copied in for the check.
    let mut cmd = match (platform.native(), platform.emulator) {
        (true, _) => Command::new(program),
        (false, Some(emulator)) => {
            let inside = "/.nldns-image-check-emulator";
            fs::copy(emulator, rootfs.join(&inside[1..])).with_context(|| {
                format!("copying {emulator} (qemu-user-static; cargo xtask setup)")
            })?;
            let mut c = Command::new(inside);
            c.arg(program);
            c
        }
        (false, None) => bail!("no emulator to run a linux/{} binary here", platform.arch),
    };
    cmd.args(&entrypoint[1..]).arg("--version");
    let new_root = rootfs.clone();
    // SAFETY: runs in the forked child before exec; only async-signal-safe syscalls
    // (chroot, chdir) are made.
    unsafe {
        cmd.pre_exec(move || {
            std::os::unix::fs::chroot(&new_root)?;
            std::env::set_current_dir("/")
        });
    }
    cmd.env_clear()
        .env("PATH", "/usr/local/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, stdout, stderr) =
        run_bounded(cmd, Duration::from_secs(30)).with_context(|| {
            format!(
                "running {program} chrooted into {} (needs root)",
                rootfs.display()
            )
        })?;
    ensure!(
        status.success(),
        "`{} --version` in the image exited with {status}: {}",
        program,
        stderr.trim()
    );
    let printed = stdout.trim();
    ensure!(
        printed.contains("nldns"),
        "`--version` printed {printed:?}, expected it to name nldns"
    );
    eprintln!(
        "image check: linux/{}: {printed}{} ({} layer(s), binary {} bytes)",
        platform.arch,
        if platform.native() {
            ""
        } else {
            " (under qemu-user)"
        },
        layers.len(),
        elf.len()
    );
    fs::remove_dir_all(&rootfs)?;
    Ok(())
}

/// Runs `cmd`, killing it after `limit`; returns status, stdout, stderr.
fn run_bounded(
    mut cmd: Command,
    limit: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    let mut child = cmd.spawn()?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut s) = child.stdout.take() {
                s.read_to_string(&mut out)?;
            }
            if let Some(mut s) = child.stderr.take() {
                s.read_to_string(&mut err)?;
            }
            return Ok((status, out, err));
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            bail!("did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("nldns-image-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A 64-byte ELF header without program headers (so "static") for `machine`.
    fn fake_elf(machine: u16) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        elf
    }

    #[test]
    fn the_index_has_one_manifest_per_platform_and_a_wrong_architecture_is_caught() {
        let d = scratch("platforms");
        let a = d.join("a.tar");
        // Both platforms get an x86-64 binary: the arm64 manifest must be refused.
        let binaries: Vec<(&Platform, Vec<u8>)> =
            PLATFORMS.iter().map(|p| (p, fake_elf(0x3e))).collect();
        write_archive(&binaries, "1.2.3", &a).unwrap();
        let files = read_archive(&a).unwrap();
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let top = &index["manifests"][0];
        assert_eq!(
            top["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        let image_index: Value =
            serde_json::from_slice(blob(&files, top, "index").unwrap()).unwrap();
        let platforms: Vec<String> = image_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let p = &m["platform"];
                format!(
                    "{}/{}{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap(),
                    p["variant"]
                        .as_str()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
        let arm64 = &image_index["manifests"][1];
        let err = format!(
            "{:#}",
            verify_platform(&a, &files, arm64, &PLATFORMS[1]).unwrap_err()
        );
        assert!(err.contains("not arm64"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dynamic_binaries_have_an_interpreter() {
        let sh = fs::read("/bin/sh").unwrap();
        assert!(elf_has_interpreter(&sh).unwrap());
        assert!(elf_has_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn archive_is_reproducible_and_tampering_is_caught() {
        let d = scratch("repro");
        // Any bytes will do for the layout checks; /bin/sh is dynamic, so the run step
        // must then refuse it, by name.
        let sh = fs::read("/bin/sh").unwrap();
        let binaries: Vec<(&Platform, Vec<u8>)> =
            PLATFORMS.iter().map(|p| (p, sh.clone())).collect();
        let (a, b) = (d.join("a.tar"), d.join("b.tar"));
        write_archive(&binaries, "1.2.3", &a).unwrap();
        write_archive(&binaries, "1.2.3", &b).unwrap();
        assert_eq!(
            fs::read(&a).unwrap(),
            fs::read(&b).unwrap(),
            "two builds differ"
        );
        let err = format!("{:#}", verify(&a).unwrap_err());
        assert!(err.contains("dynamically linked"), "{err}");

        // Flip one byte inside the gzip layer blob: the digest check must name it.
        let mut bytes = fs::read(&a).unwrap();
        let files = read_archive(&a).unwrap();
        let (_, layer) = files
            .iter()
            .filter(|(k, _)| k.starts_with("blobs/"))
            .max_by_key(|(_, v)| v.len())
            .unwrap();
        let at = bytes
            .windows(64)
            .position(|w| w == &layer[100..164])
            .unwrap();
        bytes[at] ^= 0xff;
        fs::write(&a, &bytes).unwrap();
        let err = format!("{:#}", verify(&a).unwrap_err());
        assert!(err.contains("does not match its content"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }
}
