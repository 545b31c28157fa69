#!/usr/bin/env bash
# What runs on the systemd node but does not fit CI, inside the systemd VM
# (Debian's kernel under software emulation, systemd as PID 1, cgroup v2):
#
#   e2e/vm/run.sh systemd --release --run e2e/vm/systemd-node.sh -- critest DIR [CRITEST-ARGS...]
#   e2e/vm/run.sh systemd --release --run e2e/vm/systemd-node.sh -- bench DIR [VAR=VALUE...]
#
# DIR holds what ../shared/CONFORMANCE.md says to build outside the
# repository (crictl, critest, ginkgo: never committed) and the loopback
# registry: registry.yml (docker-registry's config on 127.0.0.1:5000) over
# the data that ../shared/tools/critest-images.py pushed, and carrackd.toml
# (the mirrors of registry.k8s.io, k8s.gcr.io and gcr.io to it). The guest
# reads them through its copy-on-write view of the host's root; nothing it
# writes reaches the host.
#
# critest: the installed carrackd.service with its built-in defaults plus
#   those mirrors, which on this node means the systemd cgroup driver. First
#   a pod under a kubelet slice is made by hand with crictl, to show
#   `crictl info` and the unit tree (`systemctl status`) of such a node.
# bench: bench/pod-lifecycle.sh with CGROUP_DRIVER=systemd against
#   containerd (Debian's, runc with SystemdCgroup = true), with the release
#   and static binaries built on the host beforehand (`cargo build --release
#   --bins && bash deploy/build-static.sh`); VAR=VALUE pairs (ITER, PODS)
#   go to it.
set -uo pipefail
usage="usage: systemd-node.sh critest|bench DIR [ARGS...] (see the header)"
what=${1:?$usage}
dir=${2:?$usage}
shift 2
[[ $what == critest || $what == bench ]] || { echo "$usage" >&2; exit 2; }
dir=$(realpath "$dir")
for f in crictl critest ginkgo registry.yml carrackd.toml; do
    [[ -e $dir/$f ]] || { echo "systemd-node.sh: no $dir/$f" >&2; exit 2; }
done
export PATH=$dir:$PATH
sock=unix:///run/carrack/carrack.sock
export CONTAINER_RUNTIME_ENDPOINT=$sock IMAGE_SERVICE_ENDPOINT=$sock
log() { echo "== systemd-node.sh: $*"; }
# crictl's default 2 s is short for a first pod under software emulation.
crictl() { command crictl --timeout 120s "$@"; }

log "registry from $dir/registry.yml"
docker-registry serve "$dir/registry.yml" >/var/log/critest-registry.log 2>&1 &
registry=$!
trap 'kill $registry 2>/dev/null' EXIT
for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:5000/v2/ >/dev/null && break
    sleep 0.2
done
curl -sf http://127.0.0.1:5000/v2/ >/dev/null || { echo "systemd-node.sh: the registry did not start" >&2; exit 1; }

if [[ $what == bench ]]; then
    log "bench/pod-lifecycle.sh on the systemd driver $*"
    env CGROUP_DRIVER=systemd SKIP_BUILD=1 "$@" bash bench/pod-lifecycle.sh
    exit
fi

mkdir -p /etc/carrack
cp "$dir/carrackd.toml" /etc/carrack/config.toml
systemctl start carrackd.service || { journalctl --no-pager -u carrackd.service | tail -n 40; exit 1; }
carrackd check
log "crictl info"
crictl info

# A pod as kubelet on the systemd driver makes it: its parent is the pod's
# slice below kubepods-besteffort.slice.
log "a pod by hand under kubepods-besteffort-podcritestbyhand.slice"
work=$(mktemp -d)
cat >"$work/pod.json" <<'EOF'
{"metadata": {"name": "by-hand", "namespace": "default", "uid": "critestbyhand", "attempt": 0},
 "log_directory": "/tmp/critest-by-hand",
 "linux": {"cgroup_parent": "kubepods-besteffort-podcritestbyhand.slice"}}
EOF
cat >"$work/ctr.json" <<'EOF'
{"metadata": {"name": "sleeper"}, "image": {"image": "registry.k8s.io/e2e-test-images/busybox:1.29-2"},
 "command": ["sleep", "3600"], "log_path": "sleeper.log"}
EOF
crictl pull registry.k8s.io/e2e-test-images/busybox:1.29-2 >/dev/null
if pod=$(crictl runp "$work/pod.json") && ctr=$(crictl create "$pod" "$work/ctr.json" "$work/pod.json") \
    && crictl start "$ctr" >/dev/null; then
    crictl ps
    systemctl status --no-pager --lines=0 kubepods.slice
    crictl stopp "$pod" >/dev/null && crictl rmp "$pod" >/dev/null
else
    log "the pod by hand failed"
fi
crictl rmi --all >/dev/null

log "critest $*"
start=$(date +%s)
critest --runtime-endpoint "$sock" --image-endpoint "$sock" "$@"
rc=$?
log "critest exited $rc after $(($(date +%s) - start)) s"
exit "$rc"
