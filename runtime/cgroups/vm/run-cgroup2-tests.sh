#!/usr/bin/env bash
# Runs carrack-cgroups' tests (unit and kernel tests) on a pure cgroup v2
# host: Debian's kernel booted under qemu (software emulation, no KVM needed)
# with an initramfs that holds the test executables, their shared libraries
# and busybox. The init mounts cgroup2 at /sys/fs/cgroup with every
# controller enabled, runs the tests as root with CI=true, prints a result
# marker on the serial console and powers off.
#
# Development hosts and CI machines here have cgroup v1 (hybrid); real nodes
# are mostly v2: this is how the v2 code paths are proven. Idempotent: the
# kernel is fetched once into $CARRACK_VM_CACHE (default /var/cache/carrack-vm)
# with `apt-get download` + `dpkg -x`, never installed into the host's /boot.
#
# Usage: runtime/cgroups/vm/run-cgroup2-tests.sh [cargo test package…]
# (default: -p carrack-cgroups)
set -euo pipefail
cd "$(dirname "$0")/../../.."
cache=${CARRACK_VM_CACHE:-/var/cache/carrack-vm}
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(-p carrack-cgroups)

if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "== installing qemu-system-x86"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

mkdir -p "$cache"
vmlinuz=$(ls "$cache"/kernel/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
if [ -z "$vmlinuz" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "cannot find the kernel package behind linux-image-amd64 (apt-get update?)" >&2; exit 1; }
    echo "== fetching $pkg"
    (cd "$cache" && apt-get download -q "$pkg" 2>/dev/null && dpkg -x "$pkg"_*.deb kernel && rm -f "$pkg"_*.deb)
    vmlinuz=$(ls "$cache"/kernel/boot/vmlinuz-* | head -n 1)
fi

echo "== building the test executables (${packages[*]})"
mapfile -t tests < <(cargo test "${packages[@]}" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
[ ${#tests[@]} -gt 0 ] || { echo "no test executables built" >&2; exit 1; }

work=$(mktemp -d /tmp/carrack-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,tests,etc,root}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
for t in "${tests[@]}"; do
    cp "$t" "$root/tests/"
    for lib in $(ldd "$t" | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin CI=true HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control
done
echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
rc=0
for t in /tests/*; do
    echo "== $t"
    "$t" --test-threads=1 || rc=1
done
echo "CARRACK-VM-RESULT=$rc"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"

echo "== booting $(basename "$vmlinuz") with cgroup v2 (${#tests[@]} test executables)"
start=$(date +%s)
timeout 900 qemu-system-x86_64 -machine accel=tcg -cpu max -smp 2 -m 1024 \
    -nographic -no-reboot -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" </dev/null | tee "$work/console.log" || true
code=$(grep -ao 'CARRACK-VM-RESULT=[0-9]*' "$work/console.log" | tail -n 1 | cut -d= -f2 || true)
echo "== cgroup v2 VM finished in $(( $(date +%s) - start )) s"
if [ -z "$code" ]; then
    echo "the VM never reported a result" >&2
    exit 1
fi
exit "$code"
