//! An initramfs image: a `newc` cpio archive (the format the kernel unpacks into its
//! rootfs, see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst),
//! written directly so the VM needs no cpio tool.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// Archive entries by path (relative to `/`, no leading slash). Parent directories are
/// added automatically; a BTreeMap writes them before their children.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Initramfs {
    pub fn dir(&mut self, path: &str) {
        let path = clean(path);
        self.parents(&path);
        self.entries.entry(path).or_insert(Entry::Dir);
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let path = clean(path);
        self.parents(&path);
        self.entries.insert(path, Entry::File { data, mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = clean(path);
        self.parents(&path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    /// Total bytes of file data (for the log line).
    pub fn data_size(&self) -> usize {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }

    /// Writes the archive, uncompressed: the kernel unpacks it faster than it would
    /// inflate a gzip under TCG.
    pub fn write_to(&self, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (0o040755, &[]),
                Entry::File { data, mode } => (0o100000 | mode, data),
                Entry::Symlink { target } => (0o120777, target.as_bytes()),
            };
            write_entry(&mut w, ino, mode, path, data)?;
        }
        write_entry(&mut w, 0, 0, "TRAILER!!!", &[])?;
        w.flush()?;
        Ok(())
    }
}

fn write_entry(w: &mut impl Write, ino: u32, mode: u32, name: &str, data: &[u8]) -> Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for field in fields {
        header.push_str(&format!("{field:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    let rest = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..rest])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parents_come_first() {
        let mut fs = Initramfs::default();
        fs.file("/usr/bin/x", b"hello".to_vec(), 0o755);
        fs.symlink("/lib", "usr/lib");
        let dir = std::env::temp_dir().join(format!("nldns-cpio-test-{}", std::process::id()));
        fs.write_to(&dir).unwrap();
        let bytes = std::fs::read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let usr = text.find("usr\0").unwrap();
        let bin = text.find("usr/bin\0").unwrap();
        let x = text.find("usr/bin/x\0").unwrap();
        assert!(usr < bin && bin < x, "parents first: {usr} {bin} {x}");
        assert!(text.contains("hello"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
        // Every header starts with the newc magic at a 4-byte boundary.
        assert_eq!(&bytes[..6], b"070701");
    }
}
