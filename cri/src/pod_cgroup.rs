//! The pod's cgroup: where RunPodSandbox puts it, from kubelet's
//! `linux.cgroup_parent` (the pod cgroup kubelet made for the pod) or, when
//! kubelet names none, from the config's `cgroup_parent` and the sandbox id.
//! Containers and the pod infra process go below it.
//!
//! With the cgroupfs driver a path is a cgroupfs path from the hierarchy
//! root: `/kubepods/besteffort/pod<uid>` as given, and a relative one
//! (`kubepods/pod<uid>`, or a slice name such as
//! `kubepods-besteffort-pod<uid>.slice`) from the root too, as containerd's
//! cgroupfs driver takes it. It is never resolved below carrackd's own
//! cgroup, which is where the cgroups crate would put a relative path: under
//! systemd that is `carrackd.service`, a cgroup with processes, where cgroup
//! v2 refuses to enable controllers for children (EBUSY).
//!
//! Only the path is mapped here; its validity (`.`/`..` components, the
//! systemd driver's `slice:prefix:name`) is the cgroups crate's, whose error
//! the caller reports against `cgroup_parent`.

/// The pod cgroup's path, absolute from the hierarchy root: kubelet's
/// `cgroup_parent` when it gives one, else `<default_parent>/<sandbox_id>`.
pub fn pod_cgroup_path(cgroup_parent: &str, default_parent: &str, sandbox_id: &str) -> String {
    if cgroup_parent.is_empty() {
        let parent = from_root(default_parent);
        format!("{}/{sandbox_id}", parent.trim_end_matches('/'))
    } else {
        from_root(cgroup_parent)
    }
}

/// `path` anchored at the hierarchy root.
fn from_root(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelets_cgroupfs_parent_is_the_pod_cgroup() {
        assert_eq!(
            pod_cgroup_path("/kubepods/besteffort/pod1234", "/carrack", "abc"),
            "/kubepods/besteffort/pod1234"
        );
    }

    #[test]
    fn a_slice_or_relative_parent_is_taken_from_the_root() {
        assert_eq!(
            pod_cgroup_path("kubepods-besteffort-pod1234.slice", "/carrack", "abc"),
            "/kubepods-besteffort-pod1234.slice"
        );
        assert_eq!(
            pod_cgroup_path("kubepods/pod1234", "/carrack", "abc"),
            "/kubepods/pod1234"
        );
    }

    #[test]
    fn no_parent_means_the_configured_one_and_the_sandbox_id() {
        assert_eq!(pod_cgroup_path("", "/carrack/", "abc"), "/carrack/abc");
        assert_eq!(pod_cgroup_path("", "carrack", "abc"), "/carrack/abc");
    }
}
