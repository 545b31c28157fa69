#!/usr/bin/env bash
# Runs Carrack's cgroup integration tests on a pure cgroup v2 kernel.
#
# The development and CI hosts run cgroup v1 (hybrid), so this boots
# Debian's linux-image-amd64 kernel under qemu (software emulation unless
# CARRACK_VM_ACCEL=kvm) with a small busybox initramfs. The guest
# mounts the host's root file system read-only over virtio-9p, switches
# into it, mounts cgroup2 at /sys/fs/cgroup with every controller enabled,
# runs the test executables that `cargo test --no-run` built on the host,
# prints their output on the serial console and powers off. This script
# exits with the tests' status (non-zero when any test failed or the VM did
# not report a result).
#
# Nothing is installed into the host's /boot: the kernel package is
# downloaded with `apt-get download` and unpacked with `dpkg -x` into the
# cache directory ($CARRACK_VM_CACHE, default /var/cache/carrack-vm).
# Downloads are done once; qemu-system-x86 and busybox-static are installed
# with apt-get when missing.
#
# Usage: run-cgroup2-tests.sh [-p PACKAGE [--test NAME]]... [--no-build]
#                             [TEST-EXECUTABLE...] [-- TEST-ARGS...]
#   Without executables or packages, builds and runs the tests of
#   carrack-cgroups and, when they exist, carrack-runtime's `cgroups` and
#   `lifecycle` tests
#   (CARGO_TARGET_DIR is honoured). `-p`/`--test` select what
#   `cargo test --no-run` builds instead. Arguments after `--` are passed to
#   every test binary (e.g. a test name filter).
# Environment: CARRACK_VM_CACHE, CARRACK_VM_TIMEOUT (seconds, default 1800),
#   CARRACK_VM_MEM (MiB, default 2048), CARRACK_VM_CPUS (default 2),
#   CARRACK_VM_ACCEL (tcg, the default, or kvm).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cache=${CARRACK_VM_CACHE:-/var/cache/carrack-vm}
vm_timeout=${CARRACK_VM_TIMEOUT:-1800}
vm_mem=${CARRACK_VM_MEM:-2048}
vm_cpus=${CARRACK_VM_CPUS:-2}

log() { echo "== vm: $*" >&2; }
die() { echo "run-cgroup2-tests: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "must run as root (the guest runs root-only tests)"

build=1
executables=()
test_args=()
cargo_args=()
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        -p | --package | --test)
            (($# >= 2)) || die "$1 needs a value"
            cargo_args+=("$1" "$2"); shift ;;
        --) shift; test_args=("$@"); break ;;
        -*) die "unknown option $1" ;;
        *) executables+=("$(realpath "$1")") ;;
    esac
    shift
done

# --- host packages ---------------------------------------------------------
missing=()
for p in qemu-system-x86 busybox-static; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
busybox=/bin/busybox
[[ -x $busybox ]] || busybox=/usr/bin/busybox
[[ -x $busybox ]] || die "busybox-static installed but no busybox binary found"

# --- kernel (downloaded once, unpacked into the cache) ---------------------
mkdir -p "$cache"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z $kpkg ]]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[[ -n $kpkg ]] || die "apt-cache knows no linux-image-amd64 dependency (is the Debian archive configured?)"
kdir=$cache/$kpkg
if ! compgen -G "$kdir/boot/vmlinuz-*" >/dev/null; then
    deb=$(compgen -G "$cache/${kpkg}_*_amd64.deb" | head -n1 || true)
    if [[ -z $deb ]]; then
        log "downloading $kpkg"
        (cd "$cache" && apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
        deb=$(compgen -G "$cache/${kpkg}_*_amd64.deb" | head -n1 || true)
        [[ -n $deb ]] || die "apt-get download $kpkg produced no .deb in $cache"
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$kdir.tmp"
    dpkg -x "$deb" "$kdir.tmp"
    mv "$kdir.tmp" "$kdir"
fi
vmlinuz=$(compgen -G "$kdir/boot/vmlinuz-*" | head -n1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$(compgen -G "$kdir/lib/modules/$kver" || compgen -G "$kdir/usr/lib/modules/$kver") \
    || die "no modules for $kver in $kdir"

# --- initramfs: busybox, the modules 9p needs, /init ----------------------
# Module dependencies come from each module's .modinfo "depends=" (the
# package ships no modules.dep; depmod is not needed on the host).
declare -A modfile=() loaded=()
while read -r rel; do
    name=${rel##*/}; name=${name%%.ko*}; name=${name//-/_}
    modfile[$name]=$rel
done < <(cd "$moddir" && find kernel -name '*.ko*')
builtin=$(sed 's#.*/##; s#\.ko.*##; s#-#_#g' "$moddir/modules.builtin")

work=$(mktemp -d "$cache/run.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
initdir=$work/initramfs
mkdir -p "$initdir"/{bin,dev,proc,sys,newroot,modules}
cp "$busybox" "$initdir/bin/busybox"

decompress() { # src dst
    case $1 in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" >"$2" ;;
        *.ko.zst) zstd -qdc "$1" >"$2" ;;
        *.ko.gz) gzip -dc "$1" >"$2" ;;
        *) die "unknown module format $1" ;;
    esac
}
order=()
add_module() {
    local name=${1//-/_} deps d
    [[ -n ${loaded[$name]:-} ]] && return 0
    loaded[$name]=1
    if [[ -z ${modfile[$name]:-} ]]; then
        grep -qx "$name" <<<"$builtin" && return 0
        die "kernel module $name not found in $moddir"
    fi
    decompress "$moddir/${modfile[$name]}" "$initdir/modules/$name.ko"
    deps=$(tr '\0' '\n' <"$initdir/modules/$name.ko" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do add_module "$d"; done
    order+=("$name")
}
# virtio_blk: a scratch disk, so io.max has a device to throttle.
for m in virtio_pci 9pnet_virtio 9p overlay virtio_blk; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$initdir/modules/order"

cat >"$initdir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "CARRACK-VM-RESULT 3 ($*)"; poweroff -f; }
for m in $(cat /modules/order); do
    insmod /modules/$m.ko || fail "insmod $m"
done
for arg in $(cat /proc/cmdline); do
    case $arg in carrack.stage2=*) stage2=${arg#carrack.stage2=} ;; carrack.plan=*) plan=${arg#carrack.plan=} ;; esac
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot \
    || fail "mount 9p host root"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/busybox sh "$stage2" "$plan"
INIT
chmod +x "$initdir/init"
initrd=$work/initrd.gz
(cd "$initdir" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$initrd"

# --- test executables ------------------------------------------------------
plan=$work/plan
: >"$plan"
add_tests() { # cargo test args...
    local json
    json=$(cd "$repo" && cargo test --no-run --message-format=json "$@") || die "cargo test --no-run $* failed"
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | "\(.manifest_path | sub("/Cargo.toml$"; ""))\t\(.executable)"' <<<"$json" >>"$plan"
}
if ((${#executables[@]})); then
    for e in "${executables[@]}"; do printf '%s\t%s\n' "$repo" "$e" >>"$plan"; done
elif ((build)); then
    command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
    log "building test executables"
    if ((${#cargo_args[@]})); then
        add_tests "${cargo_args[@]}"
    else
        add_tests -p carrack-cgroups
    fi
    if ((${#cargo_args[@]} == 0)) && [[ -f $repo/runtime/tests/cgroups.rs ]]; then
        add_tests -p carrack-runtime --test cgroups
    fi
    # The whole container lifecycle (namespaces, mounts, seccomp, hooks,
    # pause/resume through the v2 freezer) on a pure cgroup v2 kernel too.
    if ((${#cargo_args[@]} == 0)) && [[ -f $repo/runtime/tests/lifecycle.rs ]]; then
        add_tests -p carrack-runtime --test lifecycle
        add_tests -p carrack-runtime --test parity
    fi
else
    die "--no-build needs test executables as arguments"
fi
[[ -s $plan ]] || die "no test executables to run"
printf 'ARGS\t%s\n' "${test_args[*]:-}" >>"$plan"
log "tests: $(grep -vc '^ARGS' "$plan") executable(s)"

# --- boot ------------------------------------------------------------------
# Software emulation by default: the development VMs expose a /dev/kvm on
# which qemu aborts (MSR 0x10a), so KVM is only used when asked for.
case ${CARRACK_VM_ACCEL:-tcg} in
    kvm) accel=(-accel kvm -cpu host) ;;
    tcg) accel=(-accel tcg,thread=multi -cpu max) ;;
    *) die "CARRACK_VM_ACCEL must be tcg or kvm, not ${CARRACK_VM_ACCEL}" ;;
esac
truncate -s 16M "$work/scratch.img"
console=$work/console.log
log "booting $kver ($(basename "$vmlinuz"))"
start=$(date +%s)
set +e
timeout --foreground "$vm_timeout" qemu-system-x86_64 \
    "${accel[@]}" -smp "$vm_cpus" -m "$vm_mem" \
    -nographic -no-reboot -nic none \
    -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 carrack.stage2=$here/guest-stage2.sh carrack.plan=$plan" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -drive "file=$work/scratch.img,if=virtio,format=raw" \
    </dev/null 2>&1 | tee "$console"
qemu_rc=${PIPESTATUS[0]}
set -e
log "VM ran $(($(date +%s) - start)) s (qemu exit $qemu_rc)"
result=$(tr -d '\r' <"$console" | sed -n 's/^CARRACK-VM-RESULT \([0-9]*\).*/\1/p' | tail -n1)
if [[ -z $result ]]; then
    die "the VM reported no result (qemu exit $qemu_rc; timeout ${vm_timeout}s)"
fi
if [[ $result != 0 ]]; then
    echo "run-cgroup2-tests: tests failed in the cgroup v2 VM (status $result)" >&2
fi
exit "$result"
