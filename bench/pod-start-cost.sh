#!/usr/bin/env bash
# carrackd's own cost in a pod start on a CNI chain: ITER pods started one
# after the other by cri-bench (RunPodSandbox, CreateContainer,
# StartContainer, then stopped and removed) on Debian's bridge + host-local
# + portmap, in a conf dir of the bench's own with its own bridge and
# subnet (never /etc/cni); then, from carrackd's log of its phases
# (carrackd::phases at DEBUG), the median and p90 of each phase and of
# carrackd's own cost in a pod start: the three calls less the CNI
# plugins' time (network_add) and the OCI runtime binary's
# (runtime_create, runtime_start). Its /metrics scrape is kept in
# $WORK/carrackd.metrics. Run as root from the repository. Not a test:
# prints figures.
#
#   REG        registry holding e2e-test-images/busybox:1.29-2 (default 127.0.0.1:5000)
#   ITER       pods (default 30); METRICS_PORT carrackd's /metrics (default 9472)
#   SKIP_BUILD=1   run the binaries already in target/release and target/static
#
# Everything it makes (carrackd, shims, containers, mounts, the bridge, its
# iptables rules, the pods' cgroups) is removed on exit, also when
# interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
REG=${REG:-127.0.0.1:5000}
WORK=${WORK:-/tmp/carrack-pod-start-cost}
ITER=${ITER:-30}
METRICS_PORT=${METRICS_PORT:-9472}
BRIDGE=pscost0
NETWORK=pod-start-cost
IMAGE="$REG/e2e-test-images/busybox:1.29-2"

exec 9>"$WORK.lock"
flock -n 9 || { echo "pod-start-cost: another run holds $WORK.lock" >&2; exit 1; }
curl -sf "http://$REG/v2/e2e-test-images/busybox/manifests/1.29-2" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null \
    || { echo "no $IMAGE: start a registry on $REG and run ../shared/tools/critest-images.py" >&2; exit 1; }

# shellcheck source=bench/cleanup.sh
. bench/cleanup.sh

cleanup() {
    # A second Ctrl-C must not cut the clean-up short.
    trap '' INT TERM HUP
    # carrackd and its shims: the processes whose command line names $WORK.
    pids_naming "$WORK" | kill_all TERM
    sleep 0.5
    pids_naming "$WORK" | kill_all KILL
    unmount_under "$WORK"
    find /sys/fs/cgroup/*/cri-bench /sys/fs/cgroup/cri-bench -depth -type d \
        -exec rmdir {} + 2>/dev/null || true
    remove_cni_rules "$NETWORK"
    ip link del "$BRIDGE" 2>/dev/null || true
    if [ -x "$WORK/bin/carrackd" ] && [ -f "$WORK/carrack.toml" ]; then
        "$WORK/bin/carrackd" --config "$WORK/carrack.toml" network remove-builtin 2>/dev/null || true
    fi
    rm -rf --one-file-system "$WORK/root" "$WORK/state" "$WORK/ipam" "$WORK/logs" 2>/dev/null || true
    trap 'exit 130' INT TERM HUP
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cleanup

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p carrackd -p carrack-bench --bins -q
    bash deploy/build-static.sh --quiet
fi
target=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$WORK/bin" "$WORK/cni" "$WORK/ipam" "$WORK/logs"
cp "$target/carrackd" "$WORK/bin/"
cp "$target/../static/carrack-shim" "$target/../static/carrack-runtime" "$WORK/bin/"
cat >"$WORK/cni/10-$NETWORK.conflist" <<CNI
{"cniVersion":"1.0.0","name":"$NETWORK","plugins":[
 {"type":"bridge","bridge":"$BRIDGE","isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","dataDir":"$WORK/ipam","ranges":[[{"subnet":"10.246.0.0/16"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
CNI
cat >"$WORK/carrack.toml" <<TOML
metrics_address = "127.0.0.1:$METRICS_PORT"
[network]
cni_conf_dir = "$WORK/cni"
cni_bin_dirs = ["/usr/lib/cni"]
[network.builtin]
bridge = "pscostbi0"
subnet = "10.245.0.0/16"
TOML
RUST_LOG=info,carrackd::phases=debug "$WORK/bin/carrackd" --config "$WORK/carrack.toml" \
    --root "$WORK/root" --state "$WORK/state" --socket "$WORK/carrack.sock" \
    --registry-insecure "$REG" --log-format json >"$WORK/carrackd.log" 2>&1 &
for _ in $(seq 1 100); do [ -S "$WORK/carrack.sock" ] && break; sleep 0.1; done
[ -S "$WORK/carrack.sock" ] || { echo "pod-start-cost: no socket $WORK/carrack.sock" >&2; exit 1; }

"$target/cri-bench" --image "$IMAGE" --iterations "$ITER" --pods 0 --log-dir "$WORK/logs" \
    --endpoint "carrackd=unix://$WORK/carrack.sock"
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/carrackd.metrics" || true
echo
echo "carrackd's phases, $ITER pods one at a time: median and p90 (ms), calls"
jq -r 'select(.target == "carrackd::phases" and (.fields.message // "" | endswith(" timed")))
        | [(.fields.message | split(" ")[0]), .fields.total_ms, .fields.phases] | @tsv' \
    "$WORK/carrackd.log" | awk -v tmp="$WORK/phases.txt" -f bench/phase-medians.awk
