//! Builds container root filesystems from Debian's `busybox-static`.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// Where Debian's `busybox-static` installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Fills `dir` with a minimal userland: `/bin/busybox` with a symlink per
/// applet in `/bin` and `/sbin`, the usual empty mount points, and
/// `/etc/passwd` and `/etc/group` with `root` (0), `daemon` (1), `nobody`
/// (65534) and a test user `carrack` (1000, group `carrack` 1000, also in
/// group `wheel` 10).
pub fn write_busybox_rootfs(dir: &Path) -> io::Result<()> {
    for sub in [
        "bin",
        "sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/carrack",
        "var/log",
        "usr/bin",
    ] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    for applet in busybox_applets()? {
        for bin_dir in ["bin", "sbin"] {
            let link = dir.join(bin_dir).join(&applet);
            if applet != "busybox" && fs::symlink_metadata(&link).is_err() {
                symlink("/bin/busybox", link)?;
            }
        }
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
         carrack:x:1000:1000:carrack:/home/carrack:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        dir.join("etc/group"),
        "root:x:0:\n\
         daemon:x:1:\n\
         wheel:x:10:carrack\n\
         carrack:x:1000:\n\
         nogroup:x:65534:\n",
    )?;
    Ok(())
}

/// The applet names the installed busybox provides.
pub fn busybox_applets() -> io::Result<Vec<String>> {
    let out = Command::new(BUSYBOX).arg("--list").output()?;
    if !out.status.success() {
        return Err(io::Error::other("busybox --list failed"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_has_shell_and_users() {
        crate::prerequisite::require_file(BUSYBOX, "busybox-static");
        let dir = std::env::temp_dir().join(format!("carrack-rootfs-test-{}", std::process::id()));
        write_busybox_rootfs(&dir).unwrap();
        assert!(
            fs::symlink_metadata(dir.join("bin/sh"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let passwd = fs::read_to_string(dir.join("etc/passwd")).unwrap();
        assert!(passwd.contains("carrack:x:1000:1000"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
