//! File capabilities (the `security.capability` xattr) across the rootfs
//! chown of a user namespace pod ([`crate::userns::shift_rootfs`]).
//!
//! chown(2) removes a file's capabilities, and a plain (revision 2) xattr
//! would not count inside the pod's user namespace anyway: the kernel only
//! honours file capabilities whose root id is the root of the namespace the
//! process runs in, and revision 2 means the host's root. So the xattr is
//! read before the chown and written back after it as revision 3, whose root
//! id is the host uid that the pod's uid 0 maps to (what an idmapped mount
//! would show the kernel). The layout is the kernel's `vfs_ns_cap_data`
//! (linux/capability.h); the xattr itself is read and written with the
//! `xattr` crate, but no crate converts to the namespaced form, and that
//! is three little-endian words, so it is done here.

use std::path::Path;

/// The xattr that holds file capabilities.
const XATTR: &str = "security.capability";
/// `VFS_CAP_REVISION_MASK`.
const REVISION_MASK: u32 = 0xFF00_0000;
/// `VFS_CAP_REVISION_2`: permitted/inheritable words, no root id.
const REVISION_2: u32 = 0x0200_0000;
/// `VFS_CAP_REVISION_3`: revision 2 plus the namespace's root id.
const REVISION_3: u32 = 0x0300_0000;
/// Bytes of a revision 2 xattr (magic + 2 × {permitted, inheritable}).
const SIZE_2: usize = 20;
/// Bytes of a revision 3 xattr (revision 2 + root id).
const SIZE_3: usize = 24;

/// The raw `security.capability` of `path` (not following a symlink), or
/// None when it has none or its filesystem has no xattrs.
pub fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match xattr::get(path, XATTR) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(None),
        r => r,
    }
}

/// Writes `value` as the `security.capability` of `path` (not following a
/// symlink).
pub fn write(path: &Path, value: &[u8]) -> std::io::Result<()> {
    xattr::set(path, XATTR, value)
}

/// `raw` (revision 2 or 3) as a revision 3 xattr whose root id is the one
/// `root_of` gives for its current root id (0 for revision 2). None for a
/// value the kernel would not take either (wrong size or revision), or a
/// root id `root_of` does not map.
pub fn namespaced(raw: &[u8], root_of: impl Fn(u32) -> Option<u32>) -> Option<Vec<u8>> {
    let word = |i: usize| {
        raw.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = word(0)?;
    let old_root = match (magic & REVISION_MASK, raw.len()) {
        (REVISION_2, SIZE_2) => 0,
        (REVISION_3, SIZE_3) => word(5)?,
        _ => return None,
    };
    let root = root_of(old_root)?;
    let mut out = Vec::with_capacity(SIZE_3);
    out.extend_from_slice(&((magic & !REVISION_MASK) | REVISION_3).to_le_bytes());
    out.extend_from_slice(&raw[4..SIZE_2]);
    out.extend_from_slice(&root.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cap_net_raw (bit 13) permitted, effective flag set.
    fn v2() -> Vec<u8> {
        let mut v = (REVISION_2 | 1).to_le_bytes().to_vec();
        for w in [1u32 << 13, 0, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    #[test]
    fn revision_2_becomes_revision_3_rooted_at_the_mapped_root() {
        let out = namespaced(&v2(), |id| Some(196_608 + id)).unwrap();
        assert_eq!(out.len(), SIZE_3);
        assert_eq!(&out[..4], &(REVISION_3 | 1).to_le_bytes());
        assert_eq!(&out[4..SIZE_2], &v2()[4..]);
        assert_eq!(&out[SIZE_2..], &196_608u32.to_le_bytes());
        // Revision 3 in: its root id is mapped in turn.
        let again = namespaced(&out, |id| Some(id + 1)).unwrap();
        assert_eq!(&again[SIZE_2..], &196_609u32.to_le_bytes());
    }

    #[test]
    fn malformed_or_unmapped_values_are_refused() {
        assert_eq!(namespaced(&v2()[..12], Some), None);
        let mut bad = v2();
        bad[3] = 0x01;
        assert_eq!(namespaced(&bad, Some), None);
        assert_eq!(namespaced(&v2(), |_| None), None);
    }
}
