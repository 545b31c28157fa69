#!/usr/bin/env bash
# Installs what Carrack needs on this node, builds it, installs the binaries to
# /usr/local/bin and starts carrackd with its built-in defaults (no config file
# needed): as a systemd service where systemd runs, otherwise in the background
# with its log in /var/log/carrackd.log. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (carrackd manages namespaces, mounts, cgroups)" >&2; exit 1; }

packages=(protobuf-compiler pkg-config iptables iproute2 containernetworking-plugins)
# Where the kernel runs AppArmor, carrackd loads its default profile
# (carrack-default, for RuntimeDefault containers) with apparmor_parser.
if grep -qx Y /sys/module/apparmor/parameters/enabled 2>/dev/null; then
    packages+=(apparmor)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "quickstart: needs a Rust toolchain (cargo) on PATH" >&2; exit 1; }

cargo build --release --workspace --bins
# The runtime and the shim linked statically, into target/static/.
bash deploy/build-static.sh
target=${CARGO_TARGET_DIR:-target}
install -m 0755 "$target/release/carrackd" /usr/local/bin/
install -m 0755 "$target/static/carrack-shim" "$target/static/carrack-runtime" /usr/local/bin/

socket=/run/carrack/carrack.sock
if [ -d /run/systemd/system ]; then
    install -m 0644 deploy/systemd/carrackd.service /etc/systemd/system/carrackd.service
    systemctl daemon-reload
    systemctl enable --now carrackd.service
elif ! pgrep -x carrackd >/dev/null; then
    nohup /usr/local/bin/carrackd >>/var/log/carrackd.log 2>&1 &
fi
for _ in $(seq 1 100); do
    [ -S "$socket" ] && break
    sleep 0.1
done
[ -S "$socket" ] || { echo "quickstart: carrackd did not open $socket; see /var/log/carrackd.log" >&2; exit 1; }
echo "carrackd is serving CRI on unix://$socket"
echo "  crictl --runtime-endpoint unix://$socket version"
