//! Layer unpacking: a (gzip, zstd or plain) tar layer into an empty snapshot
//! directory, with OCI whiteouts turned into overlayfs whiteouts.
//!
//! Safety rules (each violation fails with [`ImageError::UnsafeLayer`], naming
//! the layer digest and the entry):
//! - entry paths and hardlink targets must be relative and free of `..`;
//! - every parent of an entry must be a real directory inside the snapshot
//!   (checked with `lstat`, never followed through a symlink; only this
//!   process writes into the snapshot while it unpacks, so the check holds);
//! - a symlink is data: its target is stored as the layer has it, absolute
//!   or relative, even one that climbs above the root (`../../../tmp/x`; in
//!   the container `..` at `/` stays at `/`, and containerd stores it too).
//!   The unpacker never follows a link, so no entry is written through one;
//! - character and block devices are refused (fifos are allowed); the only
//!   device nodes in a snapshot are the 0/0 whiteouts written here;
//! - extended attributes are kept only in the `user.` and `security.capability`
//!   namespaces (a layer must not set `trusted.overlay.*` itself).
//!
//! `.wh.<name>` becomes a 0/0 character device `<name>`; `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory. A hardlink whose target is not
//! in this layer (it is in a lower one) is returned as deferred, for the caller
//! to resolve once the lower snapshots are in place.
//!
//! The diff id (sha256 of the uncompressed tar) is computed while reading.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::error::ImageError;

/// The opaque-directory marker entry name.
const OPAQUE: &str = ".wh..wh..opq";
/// Prefix of whiteout entries.
const WHITEOUT: &str = ".wh.";

/// What unpacking a layer produced.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream (`sha256:…`).
    pub diff_id: String,
    /// Hardlinks whose target is in a lower layer: (link, target), both
    /// relative to the snapshot root.
    pub deferred_links: Vec<(PathBuf, PathBuf)>,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks the layer blob read from `blob` (compression detected from its
/// first bytes) into `dest`, an existing empty directory.
pub fn unpack_layer(layer: &str, blob: impl Read, dest: &Path) -> Result<Unpacked, ImageError> {
    let invalid = |reason: String| ImageError::InvalidLayer {
        layer: layer.to_owned(),
        reason,
    };
    let mut buffered = BufReader::with_capacity(256 << 10, blob);
    let head = buffered
        .fill_buf()
        .map_err(|e| invalid(format!("read: {e}")))?;
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| invalid(format!("zstd: {e}")))?,
        )
    } else {
        Box::new(buffered)
    };
    let mut reader = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let mut unpacker = Unpacker {
        layer,
        dest,
        known_dirs: HashSet::new(),
        dirs: Vec::new(),
        deferred: Vec::new(),
        buf: vec![0; 256 << 10],
    };
    {
        let mut archive = tar::Archive::new(&mut reader);
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| invalid(format!("bad tar entry: {e}")))?;
            unpacker.entry(entry)?;
        }
    }
    // The diff id covers the whole stream, including the padding after the
    // end-of-archive blocks.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| invalid(format!("read: {e}")))?;
    for (dir, mtime) in unpacker.dirs.iter().rev() {
        // A later entry may have replaced the directory, or one of its
        // parents, with a symlink: touch only what is still a real directory.
        if let Ok(rel) = dir.strip_prefix(dest)
            && real_dirs(dest, rel)
        {
            set_times(dir, *mtime, true);
        }
    }
    Ok(Unpacked {
        diff_id: format!("sha256:{}", hex::encode(reader.hasher.finalize())),
        deferred_links: unpacker.deferred,
    })
}

struct Unpacker<'a> {
    layer: &'a str,
    dest: &'a Path,
    /// Relative paths known to be real directories.
    known_dirs: HashSet<PathBuf>,
    /// Directories to give their mtime at the end.
    dirs: Vec<(PathBuf, u64)>,
    deferred: Vec<(PathBuf, PathBuf)>,
    buf: Vec<u8>,
}

/// Normalises a tar path: relative, no `..`, `.` dropped. `None` for the root.
fn normalise(p: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path".into());
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn set_times(path: &Path, mtime: u64, nofollow: bool) {
    let Ok(c) = cpath(path) else { return };
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: `c` is a valid NUL-terminated path and `times` points to two
    // timespecs, as utimensat(2) requires. Failure only loses an mtime.
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags);
    }
}

/// Sets an xattr on `path` itself (a final symlink is not followed).
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    xattr::set(path, name, value)
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, entry: &Path, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeLayer {
            layer: self.layer.to_owned(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, entry: &Path, what: &str, e: io::Error) -> ImageError {
        ImageError::InvalidLayer {
            layer: self.layer.to_owned(),
            reason: format!("entry {:?}: {what}: {e}", entry.display().to_string()),
        }
    }

    /// Makes sure every component of `rel` is a real directory, creating the
    /// missing ones. Refuses symlinks and non-directories on the way.
    fn ensure_dir(&mut self, rel: &Path, entry: &Path) -> Result<(), ImageError> {
        if rel.as_os_str().is_empty() || self.known_dirs.contains(rel) {
            return Ok(());
        }
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            if self.known_dirs.contains(&cur) {
                continue;
            }
            let abs = self.dest.join(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(
                        self.unsafe_entry(entry, format!("parent {} is a symlink", cur.display()))
                    );
                }
                Ok(_) => {
                    return Err(self.unsafe_entry(
                        entry,
                        format!("parent {} is not a directory", cur.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&abs).map_err(|e| self.io_err(entry, "mkdir parent", e))?;
                }
                Err(e) => return Err(self.io_err(entry, "lstat parent", e)),
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Clears the way for a new non-directory (or directory) at `rel`.
    fn replace(&mut self, rel: &Path, want_dir: bool) -> Result<bool, ImageError> {
        let abs = self.dest.join(rel);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() && want_dir => return Ok(true),
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&abs).map_err(|e| self.io_err(rel, "replace directory", e))?;
                self.known_dirs.retain(|d| !d.starts_with(rel));
            }
            Ok(_) => fs::remove_file(&abs).map_err(|e| self.io_err(rel, "replace file", e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err(rel, "lstat", e)),
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry
            .path()
            .map_err(|e| ImageError::InvalidLayer {
                layer: self.layer.to_owned(),
                reason: format!("entry path: {e}"),
            })?
            .into_owned();
        let rel = match normalise(&raw) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()), // the root itself
            Err(reason) => return Err(self.unsafe_entry(&raw, reason)),
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let name = rel
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let header = entry.header();
        let kind = header.entry_type();

        // Whiteouts.
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            self.ensure_dir(&parent, &raw)?;
            if name == OPAQUE {
                let dir = self.dest.join(&parent);
                return set_xattr(&dir, "trusted.overlay.opaque", b"y")
                    .map_err(|e| self.io_err(&raw, "set trusted.overlay.opaque", e));
            }
            if hidden.starts_with(WHITEOUT) {
                return Ok(()); // other AUFS metadata (.wh..wh.plnk …)
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(self.unsafe_entry(&raw, "whiteout of an invalid name"));
            }
            let target = parent.join(hidden);
            self.replace(&target, false)?;
            let abs = self.dest.join(&target);
            return nix::sys::stat::mknod(
                &abs,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| self.io_err(&raw, "create whiteout device", e.into()));
        }

        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);
        self.ensure_dir(&parent, &raw)?;
        let abs = self.dest.join(&rel);

        match kind {
            EntryType::Directory => {
                if !self.replace(&rel, true)? {
                    fs::create_dir(&abs).map_err(|e| self.io_err(&raw, "mkdir", e))?;
                }
                std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                    .map_err(|e| self.io_err(&raw, "chown", e))?;
                fs::set_permissions(&abs, fs::Permissions::from_mode(mode))
                    .map_err(|e| self.io_err(&raw, "chmod", e))?;
                self.known_dirs.insert(rel.clone());
                self.dirs.push((abs.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                self.replace(&rel, false)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&abs)
                    .map_err(|e| self.io_err(&raw, "create", e))?;
                loop {
                    let n = entry
                        .read(&mut self.buf)
                        .map_err(|e| self.io_err(&raw, "read", e))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n])
                        .map_err(|e| self.io_err(&raw, "write", e))?;
                }
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                    .map_err(|e| self.io_err(&raw, "chown", e))?;
                // After chown, which clears set-id bits.
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| self.io_err(&raw, "chmod", e))?;
                drop(f);
                set_times(&abs, mtime, true);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                self.replace(&rel, false)?;
                std::os::unix::fs::symlink(&target, &abs)
                    .map_err(|e| self.io_err(&raw, "symlink", e))?;
                std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                    .map_err(|e| self.io_err(&raw, "chown", e))?;
                set_times(&abs, mtime, true);
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hardlink without a target"))?
                    .into_owned();
                let target = match normalise(&target) {
                    Ok(Some(t)) => t,
                    Ok(None) => return Err(self.unsafe_entry(&raw, "hardlink to the root")),
                    Err(reason) => {
                        return Err(self.unsafe_entry(
                            &raw,
                            format!("hardlink target {}: {reason}", target.display()),
                        ));
                    }
                };
                if target == rel {
                    return Err(self.unsafe_entry(&raw, "hardlink to itself"));
                }
                match self.lookup(&target, &raw)? {
                    Some(m) if m.is_dir() => {
                        return Err(self.unsafe_entry(&raw, "hardlink to a directory"));
                    }
                    Some(_) => {
                        self.replace(&rel, false)?;
                        fs::hard_link(self.dest.join(&target), &abs)
                            .map_err(|e| self.io_err(&raw, "hardlink", e))?;
                    }
                    None => {
                        self.replace(&rel, false)?;
                        self.deferred.push((rel.clone(), target));
                    }
                }
            }
            EntryType::Fifo => {
                self.replace(&rel, false)?;
                nix::sys::stat::mknod(
                    &abs,
                    nix::sys::stat::SFlag::S_IFIFO,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    0,
                )
                .map_err(|e| self.io_err(&raw, "mkfifo", e.into()))?;
                std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                    .map_err(|e| self.io_err(&raw, "chown", e))?;
            }
            EntryType::Char | EntryType::Block => {
                return Err(self.unsafe_entry(&raw, "device nodes are not allowed in layers"));
            }
            other => {
                return Err(
                    self.unsafe_entry(&raw, format!("unsupported tar entry type {other:?}"))
                );
            }
        }

        if matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::Directory
        ) && let Ok(Some(exts)) = entry.pax_extensions()
        {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                if let Some(attr) = key.strip_prefix("SCHILY.xattr.")
                    && (attr.starts_with("user.") || attr == "security.capability")
                {
                    set_xattr(&abs, attr, ext.value_bytes())
                        .map_err(|e| self.io_err(&raw, "set xattr", e))?;
                }
            }
        }
        Ok(())
    }

    /// lstat of `rel` inside the snapshot without following symlinks on the
    /// way; `None` when absent.
    fn lookup(&self, rel: &Path, entry: &Path) -> Result<Option<fs::Metadata>, ImageError> {
        let mut cur = PathBuf::new();
        let n = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            cur.push(c);
            let m = match fs::symlink_metadata(self.dest.join(&cur)) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.io_err(entry, "lstat", e)),
            };
            if i + 1 == n {
                return Ok(Some(m));
            }
            if !m.is_dir() {
                return Err(self.unsafe_entry(
                    entry,
                    format!(
                        "hardlink target goes through non-directory {}",
                        cur.display()
                    ),
                ));
            }
        }
        Ok(None)
    }
}

/// True when every component of `rel` below `root` is a real directory
/// (no symlink on the way).
fn real_dirs(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Resolves a deferred hardlink: copies `target` from the nearest of `lowers`
/// (top first) that has it as a regular file into `dest` at `link`. Walks
/// without following symlinks, on both sides: a later entry of the layer may
/// have turned a parent of `link` into a symlink, which is refused; a later
/// entry at `link` itself wins (nothing is copied).
pub fn resolve_deferred_link(
    layer: &str,
    dest: &Path,
    link: &Path,
    target: &Path,
    lowers: &[PathBuf],
) -> Result<(), ImageError> {
    let refuse = |reason: String| ImageError::UnsafeLayer {
        layer: layer.to_owned(),
        entry: link.display().to_string(),
        reason,
    };
    let parent = link.parent().unwrap_or(Path::new(""));
    if !real_dirs(dest, parent) {
        return Err(refuse(format!(
            "hardlink parent {} is no longer a directory",
            parent.display()
        )));
    }
    let abs = dest.join(link);
    if fs::symlink_metadata(&abs).is_ok() {
        return Ok(()); // replaced by a later entry of the same layer
    }
    let n = target.components().count();
    for lower in lowers {
        let mut cur = lower.clone();
        let mut found = None;
        for (i, c) in target.components().enumerate() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if i + 1 < n && m.is_dir() => {}
                Ok(m) if i + 1 == n && m.is_file() => found = Some(m),
                _ => break,
            }
        }
        let Some(meta) = found else { continue };
        let copy = || -> io::Result<()> {
            use std::os::unix::fs::MetadataExt;
            let mut src = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&cur)?;
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&abs)?;
            io::copy(&mut src, &mut out)?;
            std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))?;
            out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            Ok(())
        };
        return copy().map_err(|e| ImageError::InvalidLayer {
            layer: layer.to_owned(),
            reason: format!(
                "hardlink {} to lower-layer {}: {e}",
                link.display(),
                target.display()
            ),
        });
    }
    Err(refuse(format!(
        "hardlink target {} exists neither in this layer nor in a lower one",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_refuses_escapes() {
        assert_eq!(
            normalise(Path::new("./a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(normalise(Path::new("./")).unwrap(), None);
        assert!(normalise(Path::new("a/../../b")).is_err());
        assert!(normalise(Path::new("/etc/passwd")).is_err());
    }

    /// A deferred hardlink whose parent a later entry turned into a symlink
    /// must not be written through it.
    #[test]
    fn deferred_hardlink_through_later_symlink_is_refused() {
        if !carrack_e2e::prerequisite::require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let lower = dir.path().join("lower");
        let dest = dir.path().join("dest");
        for d in [&outside, &lower, &dest] {
            fs::create_dir(d).unwrap();
        }
        fs::write(lower.join("secret"), "lower file").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "a", &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "a/x", "secret").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "a", &outside).unwrap();
        let tar = b.into_inner().unwrap();
        let u = unpack_layer("sha256:test", &tar[..], &dest).unwrap();
        assert_eq!(u.deferred_links.len(), 1);
        let (link, target) = &u.deferred_links[0];
        let err = resolve_deferred_link(
            "sha256:test",
            &dest,
            link,
            target,
            std::slice::from_ref(&lower),
        );
        assert!(
            matches!(err, Err(ImageError::UnsafeLayer { .. })),
            "{err:?}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    /// A symlink whose relative target climbs above the root is stored as
    /// it is; an entry written through it later is still refused and
    /// nothing lands where it points on the host.
    #[test]
    fn climbing_symlinks_are_kept_and_never_written_through() {
        if !carrack_e2e::prerequisite::require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let dest = dir.path().join("dest");
        for d in [&outside, &dest] {
            fs::create_dir(d).unwrap();
        }
        let symlink = |b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).unwrap();
        };
        // Climbs from dest/usr/lib to the host's outside dir, whatever the depth.
        let up = format!("{}{}", "../".repeat(32), outside.display());
        let mut b = tar::Builder::new(Vec::new());
        symlink(&mut b, "usr/lib/tmp-x", "../../../../tmp/x");
        symlink(&mut b, "usr/lib/up", &up);
        let tar = b.into_inner().unwrap();
        unpack_layer("sha256:test", &tar[..], &dest).unwrap();
        assert_eq!(
            fs::read_link(dest.join("usr/lib/tmp-x")).unwrap(),
            Path::new("../../../../tmp/x")
        );
        assert_eq!(
            fs::read_link(dest.join("usr/lib/up")).unwrap(),
            Path::new(&up)
        );

        let mut b = tar::Builder::new(Vec::new());
        symlink(&mut b, "usr/lib/up", &up);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, "usr/lib/up/pwned", &b"x"[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let dest2 = dir.path().join("dest2");
        fs::create_dir(&dest2).unwrap();
        let err = unpack_layer("sha256:test", &tar[..], &dest2);
        assert!(
            matches!(&err, Err(ImageError::UnsafeLayer { entry, .. }) if entry == "usr/lib/up/pwned"),
            "{err:?}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}
