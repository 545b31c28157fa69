#!/usr/bin/env bash
# A full node, carrackd vs containerd 1.6 + runc (Debian packages): PODS pods
# started at once on a CNI chain (Debian's bridge + host-local + portmap,
# each runtime on a bridge and a private subnet of its own, in conf dirs of
# the bench's own: never /etc/cni), each a container writing FILES files of
# FILE_BYTES into its writable layer; then kubelet's polling for WINDOW
# seconds; then everything stopped and removed at once, and what was left.
# The runtimes run one after the other, each alone. Run as root from the
# repository. Not a test: prints figures (bench/src/node_scale/).
#
#   REG        registry holding e2e-test-images/busybox:1.29-2 and pause:3.9
#              (../shared/tools/critest-images.py pushes them; default 127.0.0.1:5000)
#   PODS       pods per runtime (default 250); WINDOW polling seconds (default 120)
#   FILES, FILE_BYTES   what each container writes (default 200 × 20971 ≈ 4 MiB)
#   RUNTIMES   which to run, in order (default "carrackd containerd")
#   SKIP_BUILD=1   run the binaries already in target/release and target/static
#   METRICS_PORT   carrackd's /metrics on loopback (default 9471): at the end
#              the mean time per call of each phase of its pods' start and
#              stop (carrack_pod_start_phase_seconds) is printed, and the
#              scrape kept in $WORK/carrackd.metrics
#
# Everything it makes (daemons, shims, containers, mounts, network
# namespaces, veths, bridges, iptables rules, cgroups) is removed on exit,
# also when interrupted or when a step fails; a run interrupted by SIGKILL
# is cleaned up by the next one.
set -euo pipefail
cd "$(dirname "$0")/.."
REG=${REG:-127.0.0.1:5000}
WORK=${WORK:-/tmp/carrack-node-scale}
PODS=${PODS:-250}
WINDOW=${WINDOW:-120}
FILES=${FILES:-200}
FILE_BYTES=${FILE_BYTES:-20971}
RUNTIMES=${RUNTIMES:-carrackd containerd}
METRICS_PORT=${METRICS_PORT:-9471}
IMAGE="$REG/e2e-test-images/busybox:1.29-2"

# Per runtime: its bridge, subnet and CNI network name. The cgroup parent
# of its pods is /node-scale-<runtime> (bench/src/node_scale/target.rs).
declare -A BRIDGE=([carrackd]=nscarrack0 [containerd]=nscontainerd0)
declare -A SUBNET=([carrackd]=10.247.0.0/16 [containerd]=10.248.0.0/16)
declare -A SHIM=([carrackd]=carrack-shim [containerd]=containerd-shim)
BUILTIN_BRIDGE=nscarrackbi0 # carrackd's built-in network, unused beside a CNI config

exec 9>"$WORK.lock"
flock -n 9 || { echo "node-scale: another run holds $WORK.lock" >&2; exit 1; }

curl -sf "http://$REG/v2/e2e-test-images/busybox/manifests/1.29-2" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null \
    || { echo "no $IMAGE: start a registry on $REG and run ../shared/tools/critest-images.py" >&2; exit 1; }

# shellcheck source=bench/cleanup.sh
. bench/cleanup.sh

work_pids() { pids_naming "$WORK"; }

# PIDs in the cgroups of the bench's pods, in every hierarchy.
pod_pids() {
    local rt
    for rt in carrackd containerd; do
        find /sys/fs/cgroup/*/"node-scale-$rt" /sys/fs/cgroup/"node-scale-$rt" \
            -name cgroup.procs -exec cat {} + 2>/dev/null || true
    done
}

cleaning=
cleanup() {
    local rt p
    [ -n "$cleaning" ] && return
    cleaning=1
    # A second Ctrl-C must not cut the clean-up short.
    trap '' INT TERM HUP
    # Daemons, shims and the bench first, politely; then whatever is left,
    # and the containers in the pods' cgroups.
    work_pids | kill_all TERM
    for _ in $(seq 1 50); do
        [ -z "$(work_pids)" ] && break
        sleep 0.1
    done
    for _ in 1 2 3; do
        work_pids | kill_all KILL
        pod_pids | kill_all KILL
        sleep 0.2
    done
    # containerd's shims' sockets (in its fixed /run/containerd/s) that
    # a killed shim left: those made since this run began and unheard.
    if [ -e "$WORK/started" ]; then
        find /run/containerd/s -type s -newer "$WORK/started" 2>/dev/null | while read -r p; do
            grep -qF -- " $p" /proc/net/unix || rm -f "$p"
        done
    fi
    # Mounts under $WORK, deepest first (rootfs overlays, shm, pinned
    # network namespaces); lazily if still busy.
    unmount_under "$WORK"
    for rt in carrackd containerd; do
        find /sys/fs/cgroup/*/"node-scale-$rt" /sys/fs/cgroup/"node-scale-$rt" -depth -type d \
            -exec rmdir {} + 2>/dev/null || true
        remove_cni_rules "node-scale-$rt"
        if ip link show "${BRIDGE[$rt]}" >/dev/null 2>&1; then
            for p in /sys/class/net/"${BRIDGE[$rt]}"/brif/*; do
                [ -e "$p" ] && ip link del "${p##*/}" 2>/dev/null || true
            done
            ip link del "${BRIDGE[$rt]}" 2>/dev/null || true
        fi
        rm -f /var/lib/cni/results/"node-scale-$rt"-* 2>/dev/null || true
    done
    if [ -x "$WORK/bin/carrackd" ] && [ -f "$WORK/carrackd/carrack.toml" ]; then
        "$WORK/bin/carrackd" --config "$WORK/carrackd/carrack.toml" network remove-builtin 2>/dev/null \
            || echo "node-scale: carrackd's built-in bridge $BUILTIN_BRIDGE may be left" >&2
    fi
    # The daemons' logs stay; the pods' data and the images go.
    if awk -v w="$WORK/" 'index($5, w) == 1 {n++} END {exit n > 0 ? 0 : 1}' /proc/self/mountinfo; then
        echo "node-scale: mounts left under $WORK; not removing it" >&2
    else
        rm -rf --one-file-system "$WORK"/carrackd/root "$WORK"/carrackd/state \
            "$WORK"/containerd/root "$WORK"/containerd/state "$WORK"/containerd/runc "$WORK"/ipam "$WORK"/logs
    fi
    cleaning=
    trap 'exit 130' INT TERM HUP
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

cleanup # what a run killed with SIGKILL left
for rt in $RUNTIMES; do
    ip route | grep -qF "${SUBNET[$rt]}" \
        && { echo "node-scale: ${SUBNET[$rt]} is routed on this host already" >&2; exit 1; }
done

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p carrackd -p carrack-bench --bins -q
    bash deploy/build-static.sh --quiet
fi
target=${CARGO_TARGET_DIR:-target}/release

rm -rf --one-file-system "$WORK/carrackd" "$WORK/containerd" "$WORK/ipam" "$WORK/logs"
mkdir -p "$WORK/bin" "$WORK/ipam" "$WORK/logs"
touch "$WORK/started"
ulimit -n "$(ulimit -Hn)" # 250 pods: sockets, pipes and fds in both daemons

conflist() { # runtime
    cat <<CNI
{"cniVersion":"1.0.0","name":"node-scale-$1","plugins":[
 {"type":"bridge","bridge":"${BRIDGE[$1]}","isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","dataDir":"$WORK/ipam","ranges":[[{"subnet":"${SUBNET[$1]}"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
CNI
}

args=()
for rt in $RUNTIMES; do
    mkdir -p "$WORK/$rt/cni"
    conflist "$rt" >"$WORK/$rt/cni/10-node-scale.conflist"
    case $rt in
    carrackd)
        # The shim and the runtime found beside carrackd: the statically
        # linked ones that the installers ship.
        cp "$target/carrackd" "$WORK/bin/"
        cp "$target/../static/carrack-shim" "$target/../static/carrack-runtime" "$WORK/bin/"
        cat >"$WORK/carrackd/carrack.toml" <<TOML
metrics_address = "127.0.0.1:$METRICS_PORT"
[network]
cni_conf_dir = "$WORK/carrackd/cni"
cni_bin_dirs = ["/usr/lib/cni"]
[network.builtin]
bridge = "$BUILTIN_BRIDGE"
subnet = "10.249.0.0/16"
TOML
        "$WORK/bin/carrackd" --config "$WORK/carrackd/carrack.toml" \
            --root "$WORK/carrackd/root" --state "$WORK/carrackd/state" \
            --socket "$WORK/carrackd/carrack.sock" --registry-insecure "$REG" \
            >"$WORK/carrackd.log" 2>&1 &
        socket=$WORK/carrackd/carrack.sock
        ;;
    containerd)
        sed -e "s|@WORK@|$WORK/containerd|g" -e "s|@REG@|$REG|g" -e "s|@SYSTEMD_CGROUP@|false|g" bench/containerd.toml.in \
            >"$WORK/containerd/config.toml"
        containerd --config "$WORK/containerd/config.toml" >"$WORK/containerd.log" 2>&1 &
        socket=$WORK/containerd/containerd.sock
        ;;
    *) echo "node-scale: unknown runtime $rt" >&2; exit 1 ;;
    esac
    for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.1; done
    [ -S "$socket" ] || { echo "node-scale: no socket $socket" >&2; exit 1; }
    args+=(--target "$rt=unix://$socket" --daemon-pid "$rt=$!" --shim "$rt=${SHIM[$rt]}"
        --owner "$rt=$WORK/$rt" --bridge "$rt=${BRIDGE[$rt]}" --network "$rt=node-scale-$rt"
        --ipam-dir "$rt=$WORK/ipam")
done

# In the background: a signal to this shell runs the clean-up at once
# (bash runs a trap only once a foreground command has ended).
"$target/node-scale" --image "$IMAGE" --pods "$PODS" --window-secs "$WINDOW" \
    --files "$FILES" --file-bytes "$FILE_BYTES" --log-dir "$WORK/logs" "${args[@]}" &
wait $!

# Where carrackd's time went: mean ms per call of each phase, over the
# pods' start (all at once) and their removal.
if [[ " $RUNTIMES " == *" carrackd "* ]] \
    && curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/carrackd.metrics"; then
    echo
    echo "carrackd's phases, mean ms per call (carrack_pod_start_phase_seconds; $WORK/carrackd.metrics):"
    awk -f bench/phase-means.awk "$WORK/carrackd.metrics"
fi
