//! The node installer (`deploy/kubernetes/installer/carrack-install`) against
//! a temporary directory that stands for a node's root, with fakes for
//! kubectl and the host's systemctl that record what they are asked; and the
//! Kubernetes manifests validated offline against the Kubernetes schemas.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A temporary node root, a payload and the fakes' call log; removed on drop.
struct FakeNode {
    dir: PathBuf,
}

const KUBELET_CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\n\
kind: KubeletConfiguration\n\
cgroupDriver: systemd\n\
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n\
imageServiceEndpoint: unix:///run/containerd/containerd.sock\n\
clusterDNS:\n- 10.96.0.10\n";

const KUBEADM_FLAGS: &str = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n";

impl FakeNode {
    fn new(name: &str) -> FakeNode {
        let dir =
            std::env::temp_dir().join(format!("carrack-test-deploy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let node = FakeNode { dir };
        let host = node.host();
        fs::create_dir_all(host.join("etc")).unwrap();
        fs::create_dir_all(host.join("var/lib/kubelet")).unwrap();
        fs::create_dir_all(node.payload().join("bin")).unwrap();
        for b in ["carrackd", "carrack-shim", "carrack-runtime"] {
            write_exec(
                &node.payload().join("bin").join(b),
                &format!("#!/bin/sh\necho {b}\n"),
            );
        }
        fs::copy(
            repo_root().join("deploy/systemd/carrackd.service"),
            node.payload().join("carrackd.service"),
        )
        .unwrap();
        fs::write(node.payload().join("config.toml"), "# carrackd defaults\n").unwrap();
        // kubectl and the host's commands only log their arguments; the fake
        // systemctl makes carrackd's socket appear, as the real service would.
        write_exec(
            &node.dir.join("kubectl"),
            &format!(
                "#!/bin/sh\necho \"kubectl $*\" >> {}\n",
                node.calls().display()
            ),
        );
        write_exec(
            &node.dir.join("host-exec"),
            &format!(
                "#!/bin/sh\necho \"host $*\" >> {log}\n\
                 case \"$*\" in *'enable --now carrackd'*) mkdir -p {h}/run/carrack; touch {h}/run/carrack/carrack.sock;; esac\n",
                log = node.calls().display(),
                h = host.display()
            ),
        );
        node
    }

    fn host(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn payload(&self) -> PathBuf {
        self.dir.join("payload")
    }

    fn calls(&self) -> PathBuf {
        self.dir.join("calls.log")
    }

    fn run(&self, action: &str) -> Output {
        Command::new(repo_root().join("deploy/kubernetes/installer/carrack-install"))
            .arg(action)
            .arg("--host-root")
            .arg(self.host())
            .arg("--payload")
            .arg(self.payload())
            .env("NODE_NAME", "node-a")
            .env("KUBECTL", self.dir.join("kubectl"))
            .env("CARRACK_HOST_EXEC", self.dir.join("host-exec"))
            .env("CARRACK_SOCKET_WAIT", "2")
            .output()
            .unwrap()
    }

    fn take_calls(&self) -> Vec<String> {
        let calls = fs::read_to_string(self.calls()).unwrap_or_default();
        let _ = fs::remove_file(self.calls());
        calls.lines().map(str::to_owned).collect()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn write_exec(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "installer failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn install_switches_kubelet_and_uninstall_restores_it_byte_for_byte() {
    let node = FakeNode::new("roundtrip");
    let host = node.host();
    fs::write(host.join("var/lib/kubelet/config.yaml"), KUBELET_CONFIG).unwrap();
    fs::write(
        host.join("var/lib/kubelet/kubeadm-flags.env"),
        KUBEADM_FLAGS,
    )
    .unwrap();
    fs::set_permissions(
        host.join("var/lib/kubelet/config.yaml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    assert_ok(&node.run("install"));

    for b in ["carrackd", "carrack-shim", "carrack-runtime"] {
        let meta = fs::metadata(host.join("usr/local/bin").join(b)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{b} mode");
    }
    assert_eq!(
        read(host.join("etc/systemd/system/carrackd.service")),
        read(repo_root().join("deploy/systemd/carrackd.service"))
    );
    assert_eq!(
        read(host.join("etc/carrack/config.toml")),
        "# carrackd defaults\n"
    );
    let cfg = read(host.join("var/lib/kubelet/config.yaml"));
    assert!(
        cfg.contains("containerRuntimeEndpoint: unix:///run/carrack/carrack.sock\n"),
        "{cfg}"
    );
    assert!(
        cfg.contains("imageServiceEndpoint: unix:///run/carrack/carrack.sock\n"),
        "{cfg}"
    );
    assert!(cfg.contains("cgroupDriver: cgroupfs\n"), "{cfg}");
    assert!(
        cfg.contains("clusterDNS:\n- 10.96.0.10\n"),
        "unrelated keys kept: {cfg}"
    );
    let flags = read(host.join("var/lib/kubelet/kubeadm-flags.env"));
    assert!(
        flags.contains("--container-runtime-endpoint=unix:///run/carrack/carrack.sock "),
        "{flags}"
    );
    assert!(flags.contains("--pod-infra-container-image=registry.k8s.io/pause:3.10"));
    assert_eq!(
        node.take_calls(),
        [
            "kubectl cordon node-a",
            "kubectl drain node-a --ignore-daemonsets --delete-emptydir-data --timeout=300s",
            "host systemctl daemon-reload",
            "host systemctl enable --now carrackd.service",
            "host systemctl restart kubelet.service",
            "kubectl uncordon node-a",
        ]
    );

    // A second install (the DaemonSet pod restarted) keeps the first backup.
    assert_ok(&node.run("install"));
    node.take_calls();

    assert_ok(&node.run("uninstall"));
    assert_eq!(
        read(host.join("var/lib/kubelet/config.yaml")),
        KUBELET_CONFIG
    );
    assert_eq!(
        read(host.join("var/lib/kubelet/kubeadm-flags.env")),
        KUBEADM_FLAGS
    );
    let mode = fs::metadata(host.join("var/lib/kubelet/config.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "restored with its mode");
    for gone in [
        "usr/local/bin/carrackd",
        "usr/local/bin/carrack-shim",
        "usr/local/bin/carrack-runtime",
        "etc/systemd/system/carrackd.service",
        "etc/carrack",
        "var/lib/carrack-installer",
    ] {
        assert!(!host.join(gone).exists(), "{gone} left after uninstall");
    }
    assert_eq!(
        node.take_calls(),
        [
            "kubectl cordon node-a",
            "kubectl drain node-a --ignore-daemonsets --delete-emptydir-data --timeout=300s",
            "host systemctl restart kubelet.service",
            "host systemctl disable --now carrackd.service",
            "host systemctl daemon-reload",
            "kubectl uncordon node-a",
        ]
    );
}

#[test]
fn install_keeps_an_operators_existing_config() {
    let node = FakeNode::new("keepcfg");
    let host = node.host();
    fs::write(
        host.join("var/lib/kubelet/config.yaml"),
        "kind: KubeletConfiguration\n",
    )
    .unwrap();
    fs::create_dir_all(host.join("etc/carrack")).unwrap();
    fs::write(host.join("etc/carrack/config.toml"), "# mine\n").unwrap();

    assert_ok(&node.run("install"));
    assert_eq!(read(host.join("etc/carrack/config.toml")), "# mine\n");
    let cfg = read(host.join("var/lib/kubelet/config.yaml"));
    assert!(cfg.contains("containerRuntimeEndpoint: unix:///run/carrack/carrack.sock\n"));

    assert_ok(&node.run("uninstall"));
    assert_eq!(
        read(host.join("etc/carrack/config.toml")),
        "# mine\n",
        "not ours to remove"
    );
    assert_eq!(
        read(host.join("var/lib/kubelet/config.yaml")),
        "kind: KubeletConfiguration\n"
    );
}

#[test]
fn install_refuses_a_node_without_kubelet_config_and_names_it() {
    let node = FakeNode::new("nokubelet");
    let out = node.run("install");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("var/lib/kubelet/config.yaml"), "{err}");
}

#[test]
fn installer_rejects_bad_arguments_with_the_field_named() {
    let node = FakeNode::new("badargs");
    let out = Command::new(repo_root().join("deploy/kubernetes/installer/carrack-install"))
        .args(["install", "--host-root", "/nonexistent-carrack-root"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host-root"));
    let out = node.run("uninstall");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to uninstall"));
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let validator = "kubernetes-validate";
    let present = Command::new(validator).arg("--version").output().is_ok();
    if !carrack_e2e::prerequisite::check(present, "kubernetes-validate (PyPI)") {
        return;
    }
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests found: {files:?}");
    let out = Command::new(validator)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's commands run as root on a fresh machine, which may have no
/// sudo: no command in its shell blocks starts with `sudo`.
#[test]
fn readme_commands_do_not_need_sudo() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut in_sh = false;
    let mut commands = 0;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            cmd if in_sh && !cmd.is_empty() => {
                commands += 1;
                assert_ne!(cmd.split_whitespace().next(), Some("sudo"), "README: {cmd}");
            }
            _ => {}
        }
    }
    assert!(commands >= 2, "the README's shell blocks were not found");
}
