#!/usr/bin/env bash
# Pod lifecycle and memory, carrackd vs containerd 1.6 + runc (Debian
# packages), same image from the same loopback registry, interleaved by
# cri-bench. Run as root from the repository. Not a test: prints figures.
#
#   REG      registry holding e2e-test-images/busybox:1.29-2 and pause:3.9
#            (../shared/tools/critest-images.py pushes them; default 127.0.0.1:5000)
#   ITER     lifecycles per runtime (default 30); PODS pods for memory (default 50)
#   CGROUP_DRIVER  cgroupfs (default) or systemd: both daemons on that driver
#            (containerd's runc with SystemdCgroup = true), pods under
#            kubelet-style slices; systemd must be PID 1
#   SKIP_BUILD=1  use the release and static binaries already built (the
#            systemd VM runs this with them: e2e/vm/systemd-node.sh bench)
set -euo pipefail
cd "$(dirname "$0")/.."
REG=${REG:-127.0.0.1:5000}
WORK=${WORK:-/tmp/carrack-bench}
ITER=${ITER:-30}
PODS=${PODS:-50}
BRIDGE=crbench0
IMAGE="$REG/e2e-test-images/busybox:1.29-2"
CGROUP_DRIVER=${CGROUP_DRIVER:-cgroupfs}
case $CGROUP_DRIVER in
    cgroupfs) systemd_cgroup=false ;;
    systemd) systemd_cgroup=true ;;
    *) echo "CGROUP_DRIVER must be cgroupfs or systemd, not $CGROUP_DRIVER" >&2; exit 2 ;;
esac

curl -sf "http://$REG/v2/e2e-test-images/busybox/manifests/1.29-2" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null \
    || { echo "no $IMAGE: start a registry on $REG and run ../shared/tools/critest-images.py" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --bins -q
    bash deploy/build-static.sh --quiet
fi
target=${CARGO_TARGET_DIR:-target}/release

rm -rf "$WORK"; mkdir -p "$WORK/containerd/cni" "$WORK/carrack" "$WORK/logs"
cat > "$WORK/containerd/cni/10-bench.conflist" <<CNI
{"cniVersion":"1.0.0","name":"bench","plugins":[
 {"type":"bridge","bridge":"cbench0","isGateway":true,"ipMasq":false,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.234.0.0/16"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
CNI
sed -e "s|@WORK@|$WORK/containerd|g" -e "s|@REG@|$REG|g" -e "s|@SYSTEMD_CGROUP@|$systemd_cgroup|g" \
    bench/containerd.toml.in > "$WORK/containerd/config.toml"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pkill -f "containerd-shim-runc-v2 -namespace k8s.io -address $WORK" 2>/dev/null || true
    pkill -f "carrack-shim serve .*--state-dir $WORK/" 2>/dev/null || true
    umount -R "$WORK"/containerd/state/* "$WORK"/carrack/* 2>/dev/null || true
    ip link del cbench0 2>/dev/null || true
    # carrackd's built-in network on a bridge of the bench's own: the bridge,
    # its chains and the jumps to them (carrackd keeps them when it stops).
    if [ -x "$WORK/bin/carrackd" ] && [ -f "$WORK/carrack/carrack.toml" ]; then
        "$WORK/bin/carrackd" --config "$WORK/carrack/carrack.toml" network remove-builtin \
            || echo "pod-lifecycle: the bench's bridge $BRIDGE is left behind" >&2
    fi
    # The pods' cgroup parent (cri-bench removes each pod's own).
    find /sys/fs/cgroup/*/cri-bench /sys/fs/cgroup/cri-bench -depth -type d \
        -exec rmdir {} + 2>/dev/null || true
    [ "$CGROUP_DRIVER" != systemd ] || systemctl stop cribench.slice 2>/dev/null || true
}
trap cleanup EXIT

containerd --config "$WORK/containerd/config.toml" >"$WORK/containerd.log" 2>&1 &
ctr_pid=$!; pids+=("$ctr_pid")
# carrackd runs the shim and the runtime found beside it: the statically
# linked ones that the installers ship.
mkdir -p "$WORK/bin"
cp "$target/carrackd" "$WORK/bin/"
cp "$target/../static/carrack-shim" "$target/../static/carrack-runtime" "$WORK/bin/"
cat > "$WORK/carrack/carrack.toml" <<TOML
cgroup_driver = "$CGROUP_DRIVER"
[network.builtin]
bridge = "$BRIDGE"
subnet = "10.236.0.0/16"
TOML
"$WORK/bin/carrackd" --config "$WORK/carrack/carrack.toml" --root "$WORK/carrack/root" --state "$WORK/carrack/state" \
    --socket "$WORK/carrack/carrack.sock" --registry-insecure "$REG" \
    >"$WORK/carrackd.log" 2>&1 &
carrack_pid=$!; pids+=("$carrack_pid")
for s in "$WORK/containerd/containerd.sock" "$WORK/carrack/carrack.sock"; do
    for _ in $(seq 1 100); do [ -S "$s" ] && break; sleep 0.1; done
    [ -S "$s" ] || { echo "no socket $s" >&2; exit 1; }
done

"$target/cri-bench" --image "$IMAGE" --iterations "$ITER" --pods "$PODS" --log-dir "$WORK/logs" \
    --endpoint "carrackd=unix://$WORK/carrack/carrack.sock" \
    --endpoint "containerd=unix://$WORK/containerd/containerd.sock" \
    --daemon-pid "carrackd=$carrack_pid" --daemon-pid "containerd=$ctr_pid" \
    --shim-name "carrackd=carrack-shim" --shim-name "containerd=containerd-shim" \
    --cgroup-driver "$CGROUP_DRIVER"
