#!/usr/bin/env bash
# Carrack's VM tests: every test that needs a kernel or an init other than
# the host's boots Debian's kernel (linux-image-amd64: 6.1 on bookworm) under
# qemu, software emulation unless CARRACK_VM_ACCEL=kvm. The development and
# CI hosts run cgroup v1 (hybrid), kernel 6.18 and no systemd; most nodes run
# cgroup v2, an older kernel and systemd as PID 1. Two modes:
#
#   cgroup2  busybox as PID 1 on the host's root, read-only over virtio-9p,
#            cgroup2 at /sys/fs/cgroup with every controller enabled
#            (guest-cgroup2.sh). Runs test executables built on the host:
#            by default carrack-cgroups' tests and carrack-runtime's `cgroups`
#            and `lifecycle` tests.
#   systemd  systemd as PID 1 (the host's, 252 on bookworm) on a copy-on-write
#            view of the host's root (init.sh), cgroup v2 unified, a network
#            of its own (loopback only, no link to the host) and its own
#            docker-registry on 127.0.0.1:5000. guest-systemd.sh installs
#            carrackd, carrack-shim, carrack-runtime and
#            deploy/systemd/carrackd.service as an operator would, starts the
#            service and runs e2e/tests/systemd_service.rs against it once per
#            variant (e2e/vm/variants/<name>.toml: carrackd config keys), then
#            the end-to-end tests of SYSTEMD_SUITES below with daemons of
#            their own.
#
# The guest prints the tests' output (each test by name) and
# "CARRACK-VM-RESULT <status>" on the serial console, which this script
# copies to stdout, and powers off. Exit status: the tests' (non-zero when
# any failed or the VM reported no result).
#
# Nothing is installed into the host's /boot: the kernel package is
# downloaded with `apt-get download` and unpacked with `dpkg -x` into the
# cache directory ($CARRACK_VM_CACHE, default /var/cache/carrack-vm), once;
# qemu-system-x86, busybox-static and kmod are installed when missing.
#
# Usage: run.sh cgroup2 [-p PACKAGE [--test NAME]]... [--no-build]
#                       [TEST-EXECUTABLE...] [-- TEST-ARGS...]
#          `-p`/`--test` select what `cargo test --no-run` builds instead of
#          the default; arguments after `--` go to every test executable
#          (e.g. a test name filter).
#        run.sh systemd [--variant NAME]... [--service-only] [--no-build]
#          `--variant` runs only the named variants (default: every file
#          in e2e/vm/variants/); `--service-only` runs only the tests of the
#          installed service, not SYSTEMD_SUITES; `--no-build` uses the
#          binaries and test executables already built.
#        run.sh systemd --run SCRIPT [--release] [--no-build] [-- ARGS...]
#          Not a test run: the guest installs the binaries and the unit as
#          above, starts nothing, and runs `bash SCRIPT ARGS...` from the
#          repository (a path on the host, which the guest sees at the same
#          place); its exit status is the result. For what does not fit
#          CI: critest and the benchmarks on a systemd node
#          (e2e/vm/systemd-node.sh). `--release`
#          installs release binaries.
# Environment: CARRACK_VM_CACHE, CARRACK_VM_TIMEOUT (seconds, default 1800),
#   CARRACK_VM_MEM (MiB, default 2048 for cgroup2, 3072 for systemd),
#   CARRACK_VM_CPUS (default 2), CARRACK_VM_ACCEL (tcg, the default, or kvm);
#   CARGO_TARGET_DIR is honoured.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CARRACK_VM_CACHE:-/var/cache/carrack-vm}
vm_timeout=${CARRACK_VM_TIMEOUT:-1800}
vm_cpus=${CARRACK_VM_CPUS:-2}

# The end-to-end tests the systemd guest runs after the installed daemon's,
# as "[VAR=value...] <package> <test target> [--flag...] [<test name>...]"
# (no names: the whole target; the variables are set for that run only).
# TCG makes the guest some ten times slower than the host: these are chosen
# to cover what differs on such a node (the check, the pod lifecycle and a
# carrackd SIGKILL with carrack-runtime on cgroup v2, pod networking and
# port mapping, container and pod stats from cgroup v2 files, a pod's view
# of cgroups in its cgroup namespace, AppArmor profiles enforced: the
# hosts' kernel has no AppArmor) and no more. Then the systemd cgroup
# driver's own: carrack-runtime's scope tests (the VM-only set, ignored
# elsewhere: 30 s here) and a pod's lifecycle, stats, update and restart
# under a test daemon on the systemd driver (60 s; the host runs it on
# cgroupfs). The installed service's systemd variant covers
# the rest of the lifecycle on that driver.
SYSTEMD_SUITES=(
    "carrackd check"
    "carrack-e2e cri_lifecycle cri_pod_lifecycle_with_carrack_runtime cri_sigkill_and_restart_keeps_containers"
    "carrack-e2e cri_network builtin_network_pods_talk_host_port_and_restart"
    "carrack-e2e cri_stats cri_container_and_pod_stats"
    "carrack-e2e cri_isolation"
    "carrack-e2e cri_apparmor"
    "carrack-runtime systemd_cgroup --include-ignored"
    "CARRACK_E2E_CGROUP_DRIVER=systemd carrack-e2e cri_cgroup_driver"
)

log() { echo "== vm: $*" >&2; }
die() { echo "e2e/vm/run.sh: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "must run as root (the guest runs root-only tests)"
(($#)) || die "usage: run.sh cgroup2|systemd [options] (see the header of $0)"
mode=$1
shift
case $mode in
    cgroup2) vm_mem=${CARRACK_VM_MEM:-2048} ;;
    systemd) vm_mem=${CARRACK_VM_MEM:-3072} ;;
    *) die "unknown mode '$mode': cgroup2 or systemd" ;;
esac

build=1
service_only=0
run_script=
profile=debug
executables=()
test_args=()
cargo_args=()
variants=()
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        -p | --package | --test)
            [[ $mode == cgroup2 ]] || die "$1 is an option of the cgroup2 mode"
            (($# >= 2)) || die "$1 needs a value"
            cargo_args+=("$1" "$2"); shift ;;
        --service-only)
            [[ $mode == systemd ]] || die "--service-only is an option of the systemd mode"
            service_only=1 ;;
        --run)
            [[ $mode == systemd ]] || die "--run is an option of the systemd mode"
            (($# >= 2)) || die "--run needs a script"
            [[ -f $2 ]] || die "--run $2: no such file"
            run_script=$(realpath "$2"); shift ;;
        --release)
            [[ $mode == systemd ]] || die "--release is an option of the systemd mode"
            profile=release ;;
        --variant)
            [[ $mode == systemd ]] || die "--variant is an option of the systemd mode"
            (($# >= 2)) || die "--variant needs a name"
            [[ -f $here/variants/$2.toml ]] || die "--variant $2: no $here/variants/$2.toml"
            variants+=("$2"); shift ;;
        --)
            [[ $mode == cgroup2 || -n $run_script ]] \
                || die "arguments after -- are for the cgroup2 mode or a --run script"
            shift; test_args=("$@"); break ;;
        -*) die "unknown option $1" ;;
        *)
            [[ $mode == cgroup2 ]] || die "test executables are for the cgroup2 mode"
            executables+=("$(realpath "$1")") ;;
    esac
    shift
done

# --- host packages ---------------------------------------------------------
missing=()
for p in qemu-system-x86 busybox-static kmod jq; do
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

work=$(mktemp -d "$cache/run.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# The systemd guest loads modules with modprobe (bridge, veth, netfilter…),
# which needs the package's module index; it ships none.
if [[ $mode == systemd && ! -s $moddir/modules.dep ]]; then
    log "indexing the modules of $kver (depmod)"
    mkdir -p "$work/depmod/lib/modules"
    ln -s "$moddir" "$work/depmod/lib/modules/$kver"
    depmod -b "$work/depmod" "$kver"
fi

# --- initramfs: busybox, the modules 9p and the root need, init.sh --------
# Module dependencies come from each module's .modinfo "depends=", so the
# initramfs needs no module index.
declare -A modfile=() loaded=()
while read -r rel; do
    name=${rel##*/}; name=${name%%.ko*}; name=${name//-/_}
    modfile[$name]=$rel
done < <(cd "$moddir" && find kernel -name '*.ko*')
builtin=$(sed 's#.*/##; s#\.ko.*##; s#-#_#g' "$moddir/modules.builtin")

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
# overlay: the systemd guest's root; virtio_blk: a scratch disk, so io.max
# has a device to throttle.
for m in virtio_pci 9pnet_virtio 9p overlay virtio_blk; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$initdir/modules/order"
cp "$here/init.sh" "$initdir/init"
chmod +x "$initdir/init"

# --- test executables ------------------------------------------------------
target_dir=$(cd "$repo" && cargo metadata --no-deps --format-version 1 | jq -r .target_directory)
# Prints "<crate dir>\t<executable>" of each test target cargo builds for
# the cargo test arguments given.
test_executables() {
    local json
    json=$(cd "$repo" && cargo test --no-run --message-format=json "$@") || die "cargo test --no-run $* failed"
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | "\(.manifest_path | sub("/Cargo.toml$"; ""))\t\(.executable)"' <<<"$json"
}

plan=$work/plan
: >"$plan"
if [[ $mode == cgroup2 ]]; then
    if ((${#executables[@]})); then
        for e in "${executables[@]}"; do printf '%s\t%s\n' "$repo" "$e" >>"$plan"; done
    elif ((build)); then
        log "building test executables"
        if ((${#cargo_args[@]})); then
            test_executables "${cargo_args[@]}" >>"$plan"
        else
            test_executables -p carrack-cgroups >>"$plan"
            # The whole container lifecycle (namespaces, mounts, seccomp,
            # hooks, pause/resume through the v2 freezer) on cgroup v2 too,
            # and what a container sees beside runc (parity).
            for t in cgroups lifecycle parity; do
                [[ -f $repo/runtime/tests/$t.rs ]] && test_executables -p carrack-runtime --test "$t" >>"$plan"
            done
        fi
    else
        die "--no-build needs test executables as arguments"
    fi
    [[ -s $plan ]] || die "no test executables to run"
    printf 'ARGS\t%s\n' "${test_args[*]:-}" >>"$plan"
    log "tests: $(grep -vc '^ARGS' "$plan") executable(s)"
    stage2=$here/guest-cgroup2.sh
else
    if ((${#variants[@]} == 0)); then
        for f in "$here"/variants/*.toml; do
            n=${f##*/}
            variants+=("${n%.toml}")
        done
    fi
    [[ -n $run_script || $profile == debug ]] || die "--release goes with --run"
    ((${#test_args[@]} == 0)) || [[ -n $run_script ]] || die "arguments after -- need --run"
    bin_dir=$target_dir/$profile
    # One executable per suite: built now, or found among those built.
    suite_executable() { # package test
        if ((build)); then
            test_executables -p "$1" --test "$2" | head -n1
        else
            local exe
            exe=$(find "$bin_dir/deps" -maxdepth 1 -type f -executable -name "$2-*" -printf '%T@ %p\n' \
                | sort -rn | awk 'NR == 1 {print $2}')
            [[ -n $exe ]] || die "--no-build: no test executable $2 in $bin_dir/deps"
            printf '%s\t%s\n' "$repo" "$exe"
        fi
    }
    if ((build)); then
        log "building the binaries and the test executables"
        release=()
        [[ $profile == release ]] && release=(--release)
        (cd "$repo" && cargo build "${release[@]}" --bins --quiet -p carrackd -p carrack-shim -p carrack-runtime)
    fi
    for b in carrackd carrack-shim carrack-runtime; do
        [[ -x $bin_dir/$b ]] || die "no $bin_dir/$b (cargo build --workspace --bins)"
    done
    suites=$work/suites
    : >"$suites"
    operator=-$'\t'-
    if [[ -n $run_script ]]; then
        variants=()
        SYSTEMD_SUITES=()
    else
        operator=$(suite_executable carrack-e2e systemd_service)
    fi
    ((service_only)) && SYSTEMD_SUITES=()
    for s in "${SYSTEMD_SUITES[@]}"; do
        read -r -a words <<<"$s"
        vars=()
        while [[ ${words[0]} == *=* ]]; do vars+=("${words[0]}"); words=("${words[@]:1}"); done
        flags=()
        names=()
        for w in "${words[@]:2}"; do
            if [[ $w == --* ]]; then flags+=("$w"); else names+=("$w"); fi
        done
        line=$(suite_executable "${words[0]}" "${words[1]}")
        args="${flags[*]}${names[*]:+ --exact ${names[*]}}"
        # Tabs separate "<dir> <exe> <vars> <args>"; read(1) merges empty
        # fields between tabs, so no variables is "-".
        printf '%s\t%s\t%s\n' "$line" "${vars[*]:--}" "$args" >>"$suites"
    done
    {
        printf 'repo=%q\n' "$repo"
        printf 'bin_dir=%q\n' "$bin_dir"
        printf 'operator_dir=%q\n' "${operator%%$'\t'*}"
        printf 'operator_exe=%q\n' "${operator#*$'\t'}"
        printf 'variants=%q\n' "${variants[*]}"
        printf 'variants_dir=%q\n' "$here/variants"
        printf 'suites=%q\n' "$suites"
        printf 'run_script=%q\n' "$run_script"
        if ((${#test_args[@]})); then
            printf 'run_args=(%s)\n' "$(printf '%q ' "${test_args[@]}")"
        else
            printf 'run_args=()\n'
        fi
    } >"$plan"
    if [[ -n $run_script ]]; then
        log "running $run_script ${test_args[*]}"
    else
        log "variants: ${variants[*]}; suites: ${#SYSTEMD_SUITES[@]}"
    fi
    stage2=$here/guest-systemd.sh
fi

# What init.sh needs (and, in the systemd guest, the host directories that
# must stay visible where a tmpfs covers them).
{
    printf 'mode=%q\n' "$mode"
    printf 'stage2=%q\n' "$stage2"
    printf 'plan=%q\n' "$plan"
    printf 'kver=%q\n' "$kver"
    printf 'moddir=%q\n' "$moddir"
    printf 'keep=%q\n' "$repo $target_dir $moddir $work"
} >"$initdir/vm.env"
initrd=$work/initrd.gz
(cd "$initdir" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$initrd"

# --- boot ------------------------------------------------------------------
# Software emulation by default: the development VMs expose a /dev/kvm on
# which qemu aborts (MSR 0x10a), so KVM is only used when asked for.
case ${CARRACK_VM_ACCEL:-tcg} in
    kvm) accel=(-accel kvm -cpu host) ;;
    tcg) accel=(-accel tcg,thread=multi -cpu max) ;;
    *) die "CARRACK_VM_ACCEL must be tcg or kvm, not ${CARRACK_VM_ACCEL}" ;;
esac
cmdline="console=ttyS0 quiet loglevel=3 panic=-1"
if [[ $mode == systemd ]]; then
    cmdline+=" systemd.unit=carrack-vm.target systemd.unified_cgroup_hierarchy=1"
    cmdline+=" systemd.show_status=error"
fi
truncate -s 16M "$work/scratch.img"
console=$work/console.log
log "booting $kver ($(basename "$vmlinuz")), $mode mode"
start=$(date +%s)
set +e
timeout --foreground "$vm_timeout" qemu-system-x86_64 \
    "${accel[@]}" -smp "$vm_cpus" -m "$vm_mem" \
    -nographic -no-reboot -nic none \
    -kernel "$vmlinuz" -initrd "$initrd" -append "$cmdline" \
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
    echo "e2e/vm/run.sh: tests failed in the $mode VM (status $result)" >&2
fi
exit "$result"
