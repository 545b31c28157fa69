//! The rootfs chown of a user namespace pod, on a real directory (root):
//! ids move into the mapped range, setuid bits stay, and file capabilities
//! survive the chown, rewritten rooted at the pod's root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use carrackd::file_caps;
use carrackd::id_maps::{IdRange, PodIdMaps};
use carrackd::userns::shift_rootfs;

const HOST_ID: u32 = 5 * 65536;

/// `security.capability` revision 2 with cap_net_raw permitted and the
/// effective flag (what `setcap cap_net_raw+ep` writes).
fn net_raw_v2() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for w in [1u32 << 13, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

#[test]
fn shift_keeps_setuid_and_file_capabilities() {
    if !carrack_e2e::prerequisite::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ping = root.join("ping");
    std::fs::write(&ping, b"#!/bin/sh\n").unwrap();
    file_caps::write(&ping, &net_raw_v2()).unwrap();
    let su = root.join("su");
    std::fs::write(&su, b"").unwrap();
    std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("ping", root.join("link")).unwrap();
    let range = IdRange {
        container_id: 0,
        host_id: HOST_ID,
        length: 65536,
    };
    shift_rootfs(
        root,
        &PodIdMaps {
            uids: range,
            gids: range,
        },
    )
    .unwrap();

    let meta = std::fs::metadata(&ping).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (HOST_ID, HOST_ID));
    let caps = file_caps::read(&ping)
        .unwrap()
        .expect("capabilities dropped by the chown");
    assert_eq!(caps.len(), 24, "not revision 3: {caps:?}");
    assert_eq!(&caps[..4], &0x0300_0001u32.to_le_bytes());
    assert_eq!(&caps[4..20], &net_raw_v2()[4..]);
    assert_eq!(&caps[20..], &HOST_ID.to_le_bytes(), "root id");
    let su_meta = std::fs::metadata(&su).unwrap();
    assert_eq!(su_meta.uid(), HOST_ID);
    assert_eq!(su_meta.mode() & 0o7777, 0o4755, "setuid bit lost");
    assert_eq!(
        std::fs::symlink_metadata(root.join("link")).unwrap().uid(),
        HOST_ID
    );
}
