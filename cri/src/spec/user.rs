//! The user a container's process runs as, resolved as kubelet and
//! containerd do, through the image's `/etc/passwd` and `/etc/group`
//! ([`RootfsFiles`], read without following symlinks out of the rootfs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use carrack_proto::cri;

use crate::spec_error::{SpecError, invalid};

/// Reads files of the image's rootfs (`/etc/passwd`, `/etc/group`).
pub trait RootfsFiles {
    /// The file's content, None when it does not exist.
    fn read(&self, path: &str) -> Option<String>;
}

impl RootfsFiles for PathBuf {
    fn read(&self, path: &str) -> Option<String> {
        // No symlink is followed (an image's `/etc -> /host/etc` must not
        // make carrackd read the host's files): every directory on the way
        // must be a real directory and the file a regular file.
        let mut p = self.clone();
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." || *part == "." {
                return None;
            }
            p.push(part);
            let ft = std::fs::symlink_metadata(&p).ok()?.file_type();
            let last = i + 1 == parts.len();
            if (last && !ft.is_file()) || (!last && !ft.is_dir()) {
                return None;
            }
        }
        std::fs::read_to_string(p).ok()
    }
}

impl RootfsFiles for BTreeMap<String, String> {
    fn read(&self, path: &str) -> Option<String> {
        self.get(path).cloned()
    }
}

/// The user a process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

fn passwd_lookup(
    files: &dyn RootfsFiles,
    pred: &dyn Fn(&str, u32) -> bool,
) -> Option<(String, u32, u32)> {
    let text = files.read("/etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let uid = f[2].parse().ok()?;
        let gid = f[3].parse().ok()?;
        pred(f[0], uid).then(|| (f[0].to_owned(), uid, gid))
    })
}

fn group_lookup(files: &dyn RootfsFiles, name: &str) -> Option<u32> {
    let text = files.read("/etc/group")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

fn member_groups(files: &dyn RootfsFiles, user: &str) -> Vec<u32> {
    let Some(text) = files.read("/etc/group") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m == user) {
                return None;
            }
            f[2].parse().ok()
        })
        .collect()
}

/// Resolves the process user as kubelet and containerd do: `run_as_username`
/// (through the image's /etc/passwd), else `run_as_user` (gid from
/// /etc/passwd when the uid has an entry), else the image's `User`
/// (`user[:group]`, names or numbers); `run_as_group` overrides the gid;
/// supplementary groups are the user's groups in /etc/group plus
/// `supplemental_groups`.
pub fn resolve_user(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
    files: &dyn RootfsFiles,
) -> Result<User, SpecError> {
    let field = "config.linux.security_context";
    let (uid, mut gid, name): (u32, u32, Option<String>);
    let username = sc.map(|s| s.run_as_username.as_str()).unwrap_or("");
    let run_as_user = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    // As containerd: a group alone would run as the image's user with a
    // group it did not ask for.
    if sc.is_some_and(|s| s.run_as_group.is_some()) && run_as_user.is_none() && username.is_empty()
    {
        return Err(invalid(
            &format!("{field}.run_as_group"),
            "is set without run_as_user or run_as_username",
        ));
    }
    if !username.is_empty() {
        let (n, u, g) = passwd_lookup(files, &|n, _| n == username).ok_or_else(|| {
            invalid(
                &format!("{field}.run_as_username"),
                format!("user {username:?} is not in the image's /etc/passwd"),
            )
        })?;
        (uid, gid, name) = (u, g, Some(n));
    } else if let Some(u) = run_as_user {
        let u = u32::try_from(u).map_err(|_| {
            invalid(
                &format!("{field}.run_as_user"),
                format!("{u} is not a uid (0..2^32)"),
            )
        })?;
        match passwd_lookup(files, &|_, id| id == u) {
            Some((n, _, g)) => (uid, gid, name) = (u, g, Some(n)),
            None => (uid, gid, name) = (u, 0, None),
        }
    } else {
        let (user_part, group_part) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        if user_part.is_empty() {
            (uid, gid, name) = (0, 0, passwd_lookup(files, &|_, id| id == 0).map(|p| p.0));
        } else if let Ok(u) = user_part.parse::<u32>() {
            match passwd_lookup(files, &|_, id| id == u) {
                Some((n, _, g)) => (uid, gid, name) = (u, g, Some(n)),
                None => (uid, gid, name) = (u, 0, None),
            }
        } else {
            let (n, u, g) = passwd_lookup(files, &|n, _| n == user_part).ok_or_else(|| {
                invalid(
                    "image config User",
                    format!("user {user_part:?} is not in the image's /etc/passwd"),
                )
            })?;
            (uid, gid, name) = (u, g, Some(n));
        }
        if let Some(g) = group_part.filter(|g| !g.is_empty()) {
            gid = match g.parse::<u32>() {
                Ok(g) => g,
                Err(_) => group_lookup(files, g).ok_or_else(|| {
                    invalid(
                        "image config User",
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?,
            };
        }
    }
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value) {
        gid = u32::try_from(g).map_err(|_| {
            invalid(
                &format!("{field}.run_as_group"),
                format!("{g} is not a gid"),
            )
        })?;
    }
    let mut additional = Vec::new();
    let strict = sc
        .map(|s| s.supplemental_groups_policy == 1)
        .unwrap_or(false);
    if let (Some(n), false) = (&name, strict) {
        additional.extend(member_groups(files, n));
    }
    for g in sc.map(|s| s.supplemental_groups.as_slice()).unwrap_or(&[]) {
        let g = u32::try_from(*g).map_err(|_| {
            invalid(
                &format!("{field}.supplemental_groups"),
                format!("{g} is not a gid"),
            )
        })?;
        additional.push(g);
    }
    // The primary group is a supplementary group too, as containerd and
    // Docker set it (kubelet's SupplementalGroupsPolicy expects it there).
    additional.push(gid);
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}
