//! Measuring a directory tree: allocated bytes and inodes, as `du` counts
//! them (a file with several links once).
//!
//! The trees measured include containers' writable layers, whose content
//! the container controls while it is measured: every step is taken
//! relative to the open parent directory without following symlinks
//! (`openat(O_NOFOLLOW)`, `fstatat(AT_SYMLINK_NOFOLLOW)`), so a directory
//! swapped for a symlink mid-walk cannot lead the walk out of the tree.
//! Nesting deeper than [`MAX_DEPTH`] is counted as the directory itself
//! only (each level holds a file descriptor open).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::FsUsage;

/// Directory levels walked below the root.
pub const MAX_DEPTH: usize = 128;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Measures the tree at `root`, calling `on_dir` with each directory's
/// descriptor before its entries are read (so that a watch placed there
/// sees every change the walk does not).
pub fn measure(root: &Path, on_dir: &mut dyn FnMut(BorrowedFd<'_>)) -> Result<FsUsage, nix::Error> {
    let dir = Dir::open(root, DIR_FLAGS, Mode::empty())?;
    let mut usage = FsUsage {
        path: root.to_owned(),
        ..Default::default()
    };
    add(&mut usage, &fstat(dir.as_fd())?);
    let mut walk = Walk {
        usage,
        seen: HashSet::new(),
        on_dir,
    };
    walk.dir(dir, 0);
    Ok(walk.usage)
}

struct Walk<'a> {
    usage: FsUsage,
    /// (dev, ino) of the multiply linked files counted.
    seen: HashSet<(u64, u64)>,
    on_dir: &'a mut dyn FnMut(BorrowedFd<'_>),
}

fn add(usage: &mut FsUsage, st: &FileStat) {
    usage.used_bytes += st.st_blocks as u64 * 512;
    usage.inodes_used += 1;
}

impl Walk<'_> {
    /// Counts the entries of `dir` (itself already counted), and below.
    /// Entries that vanish or cannot be read while walking are skipped.
    fn dir(&mut self, mut dir: Dir, depth: usize) {
        (self.on_dir)(dir.as_fd());
        let names: Vec<(CString, Option<Type>)> = dir
            .iter()
            .flatten()
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .map(|e| (e.file_name().to_owned(), e.file_type()))
            .collect();
        for (name, kind) in names {
            if kind == Some(Type::Directory) {
                self.subdir(&dir, &name, depth);
                continue;
            }
            let Ok(st) = fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                // A file system without d_type.
                self.subdir(&dir, &name, depth);
                continue;
            }
            if st.st_nlink > 1 && !self.seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            add(&mut self.usage, &st);
        }
    }

    fn subdir(&mut self, parent: &Dir, name: &CString, depth: usize) {
        let Ok(child) = Dir::openat(parent.as_fd(), name.as_c_str(), DIR_FLAGS, Mode::empty())
        else {
            // Gone, or swapped for something else: counted as it is now.
            if let Ok(st) = fstatat(
                parent.as_fd(),
                name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                add(&mut self.usage, &st);
            }
            return;
        };
        let Ok(st) = fstat(child.as_fd()) else { return };
        add(&mut self.usage, &st);
        if depth < MAX_DEPTH {
            self.dir(child, depth + 1);
        }
    }
}

/// The path of an open descriptor, for calls that take a path (inotify):
/// `/proc/self/fd/N` resolves to what the descriptor holds, whatever the
/// tree's names say by now.
pub fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn measure_plain(root: &Path) -> FsUsage {
        measure(root, &mut |_| {}).unwrap()
    }

    #[test]
    fn counts_files_dirs_and_links_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), vec![1u8; 64 << 10]).unwrap();
        let base = measure_plain(root);
        // root, a, b, f
        assert_eq!(base.inodes_used, 4);
        assert!(base.used_bytes >= 64 << 10, "{base:?}");

        fs::hard_link(root.join("a/b/f"), root.join("a/g")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/etc")).unwrap();
        let linked = measure_plain(root);
        // The hard link is the same inode; the symlink is one of its own
        // and is not followed.
        assert_eq!(linked.inodes_used, 5, "{linked:?}");
        assert!(
            linked.used_bytes < base.used_bytes + (16 << 10),
            "{linked:?}"
        );

        fs::remove_file(root.join("a/b/f")).unwrap();
        fs::remove_file(root.join("a/g")).unwrap();
        let emptied = measure_plain(root);
        assert_eq!(emptied.inodes_used, 4);
        assert!(emptied.used_bytes < base.used_bytes, "{emptied:?}");
    }

    #[test]
    fn on_dir_sees_every_directory_before_its_entries() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("x/y")).unwrap();
        fs::create_dir_all(d.path().join("z")).unwrap();
        let mut seen = Vec::new();
        measure(d.path(), &mut |fd| {
            seen.push(fs::read_link(fd_path(fd)).unwrap());
        })
        .unwrap();
        seen.sort();
        let want: Vec<_> = ["", "x", "x/y", "z"]
            .iter()
            .map(|p| {
                d.path()
                    .join(p)
                    .components()
                    .collect::<std::path::PathBuf>()
            })
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(measure(Path::new("/nonexistent/upper"), &mut |_| {}).is_err());
    }
}
