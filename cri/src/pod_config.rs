//! What a pod's `PodSandboxConfig` asks of the host, read in one place:
//! its namespace options, whether it runs on the host's network, and the
//! hostname its containers see.

use carrack_proto::cri;

/// Linux's HOST_NAME_MAX.
pub const HOSTNAME_MAX: usize = 64;

/// The pod's namespace options (protobuf's zero values when it sets none).
pub fn ns_options(c: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    c.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// Whether the pod runs in the host's network namespace.
pub fn host_network(c: &cri::PodSandboxConfig) -> bool {
    ns_options(c).network == cri::NamespaceMode::Node as i32
}

/// The pod's hostname: the config's, else (and always for host-network
/// pods) the node's, as containerd does (a pod name may be longer than the
/// 64 bytes a hostname can hold).
pub fn hostname(c: &cri::PodSandboxConfig) -> String {
    if host_network(c) || c.hostname.is_empty() {
        return nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    c.hostname.clone()
}
