//! Image volumes (Kubernetes' ImageVolume): a CRI mount that names an
//! image (`Mount.image`) instead of a host path. The image, already pulled,
//! is mounted as a read-only view owned by carrackd (an overlay of its
//! snapshots with no upper layer, `nosuid`, `nodev`, `noexec`; the image
//! store's [`carrack_image::ImageStore::mount_view`]) under the container's
//! directory, one view per mount, and bind-mounted read-only at the
//! container path; `image_sub_path` mounts a directory of the image
//! instead of its root.
//!
//! - [`check`] (before anything is made): the mount names no host path,
//!   its image is pulled (NotFound naming `config.mounts[i].image`), its
//!   sub path is relative and has no `..`;
//! - [`mount`]: the views, and each mount's host path (a sub path resolved
//!   beneath the view, never through a symlink that leaves it);
//! - the views go with the container (`Daemon::destroy_container`), and
//!   those of containers gone while carrackd was away at start-up
//!   (`Daemon::recover`); while one exists its image is not removed
//!   (RemoveImage answers FailedPrecondition naming the container).
//!
//! As containerd (which mounts one view per pod; here one per container
//! mount, so a view lives as long as its container): the mount is
//! read-only whatever `readonly` says, and a sub path must be a directory.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use carrack_image::{ImageError, ImageStore};
use carrack_proto::cri;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

use crate::cri_error::CriError;

/// An image mount of a container config, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolume {
    /// Its index in `config.mounts`.
    pub index: usize,
    /// The image's id.
    pub image_id: String,
    /// The directory of the image to mount (empty: its root).
    pub sub_path: String,
}

/// The image a mount names and its sub path (None: a host path mount).
fn image_of(m: &cri::Mount) -> Option<(&str, &str)> {
    m.image
        .as_ref()
        .map(|i| (i.image.as_str(), m.image_sub_path.as_str()))
}

/// Checks the image mounts of `mounts`: no host path, the image pulled,
/// the sub path relative and without `..`.
pub fn check(mounts: &[cri::Mount], images: &ImageStore) -> Result<Vec<ImageVolume>, CriError> {
    let mut out = Vec::new();
    for (index, m) in mounts.iter().enumerate() {
        let Some((image, sub_path)) = image_of(m) else {
            continue;
        };
        let field = format!("config.mounts[{index}]");
        if image.is_empty() {
            return Err(CriError::invalid(
                &format!("{field}.image.image"),
                "must not be empty",
            ));
        }
        if !m.host_path.is_empty() {
            return Err(CriError::invalid(
                &format!("{field}.host_path"),
                format!("{:?}: a mount of an image has no host path", m.host_path),
            ));
        }
        check_sub_path(sub_path, &format!("{field}.image_sub_path"))?;
        let img = images.resolve(image)?.ok_or_else(|| {
            CriError::NotFound(format!(
                "{field}.image: image {image:?} not found (pull it first)"
            ))
        })?;
        out.push(ImageVolume {
            index,
            image_id: img.id,
            sub_path: sub_path.to_owned(),
        });
    }
    Ok(out)
}

/// A sub path is relative and never climbs (`..`).
fn check_sub_path(sub_path: &str, field: &str) -> Result<(), CriError> {
    let p = Path::new(sub_path);
    if p.is_absolute() {
        return Err(CriError::invalid(
            field,
            format!("{sub_path:?}: expected a path relative to the image's root"),
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(CriError::invalid(
            field,
            format!("{sub_path:?} must not contain \"..\""),
        ));
    }
    Ok(())
}

/// Mounts the views of `volumes` for container `container_id`; returns
/// each mount's host path by index. The caller unmounts them
/// ([`ImageStore::unmount_views`]) when this or what follows fails.
pub fn mount(
    images: &ImageStore,
    container_id: &str,
    volumes: &[ImageVolume],
) -> Result<BTreeMap<usize, PathBuf>, CriError> {
    let mut out = BTreeMap::new();
    for v in volumes {
        let field = format!("config.mounts[{}]", v.index);
        let root = images
            .mount_view(&v.image_id, container_id, &v.index.to_string())
            .map_err(|e| match e {
                ImageError::NotFound(_) => CriError::NotFound(format!("{field}.image: {e}")),
                e => CriError::Internal(format!("{field}.image: mounting the image: {e}")),
            })?;
        let path = if v.sub_path.is_empty() {
            root
        } else {
            sub_dir(&root, &v.sub_path, &format!("{field}.image_sub_path"))?
        };
        out.insert(v.index, path);
    }
    Ok(out)
}

/// The directory `sub_path` names beneath `root`, resolved by the kernel
/// (openat2 `RESOLVE_BENEATH`): a symlink may not lead out of `root`,
/// absolute ones included. The view is read-only and carrackd's own, so
/// the path found stays what it names until the container is gone.
fn sub_dir(root: &Path, sub_path: &str, field: &str) -> Result<PathBuf, CriError> {
    let dir = std::fs::File::open(root)
        .map_err(|e| CriError::Internal(format!("opening {}: {e}", root.display())))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = nix::fcntl::openat2(&dir, sub_path, how).map_err(|e| match e {
        Errno::ENOENT => {
            CriError::NotFound(format!("{field}: {sub_path:?} does not exist in the image"))
        }
        Errno::ENOTDIR => CriError::invalid(
            field,
            format!("{sub_path:?} is not a directory of the image"),
        ),
        Errno::EXDEV | Errno::ELOOP => CriError::invalid(
            field,
            format!("{sub_path:?} leads out of the image (through a symlink)"),
        ),
        e => CriError::Internal(format!("{field}: resolving {sub_path:?}: {e}")),
    })?;
    let found = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| CriError::Internal(format!("{field}: resolving {sub_path:?}: {e}")))?;
    if !found.starts_with(root) {
        return Err(CriError::invalid(
            field,
            format!("{sub_path:?} leads out of the image"),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_are_relative_and_never_climb() {
        check_sub_path("", "f").unwrap();
        check_sub_path("data/models", "f").unwrap();
        check_sub_path("./data", "f").unwrap();
        let e = check_sub_path("/etc", "config.mounts[1].image_sub_path").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("config.mounts[1].image_sub_path: \"/etc\""),
            "{e}"
        );
        let e = check_sub_path("data/../../etc", "f").unwrap_err();
        assert!(e.message().contains("\"..\""), "{e}");
    }

    #[test]
    fn sub_dirs_resolve_beneath_the_root_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("data/models")).unwrap();
        std::fs::write(root.join("data/file"), "x").unwrap();
        std::os::unix::fs::symlink("data/models", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("data/up")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("out")).unwrap();
        assert_eq!(
            sub_dir(&root, "data/models", "f").unwrap(),
            root.join("data/models")
        );
        assert_eq!(
            sub_dir(&root, "inside", "f").unwrap(),
            root.join("data/models")
        );
        for (escape, code) in [
            ("data/up", tonic::Code::InvalidArgument),
            ("abs", tonic::Code::InvalidArgument),
            ("out", tonic::Code::InvalidArgument),
            ("data/file", tonic::Code::InvalidArgument),
            ("nothing/here", tonic::Code::NotFound),
        ] {
            let e = sub_dir(&root, escape, "config.mounts[0].image_sub_path").unwrap_err();
            assert_eq!(e.code(), code, "{escape}: {e}");
            assert!(
                e.message().starts_with("config.mounts[0].image_sub_path: "),
                "{e}"
            );
        }
    }
}
