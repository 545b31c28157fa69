#!/bin/bash
# The tests of the systemd test VM (e2e/vm/run.sh systemd), run by
# carrack-vm-tests.service once systemd (PID 1) has reached basic.target.
# Argument: the plan run.sh wrote (shell variables: repo, bin_dir,
# operator_dir, operator_exe, variants, variants_dir, suites).
#
# As an operator would: carrackd, carrack-shim and carrack-runtime go to
# /usr/local/bin and deploy/systemd/carrackd.service to /etc/systemd/system;
# for each variant, /etc/carrack/config.toml gets the variant's keys
# (e2e/vm/variants/<variant>.toml) and the node registry's, carrackd is
# started by systemctl, `carrackd check` is printed, and
# e2e/tests/systemd_service.rs runs against it (CARRACK_E2E_CGROUP_DRIVER is
# the variant's name when that names a driver); then carrackd is stopped and
# its state wiped. Then the end-to-end suites of the plan, whose tests start
# daemons of their own. Each test is printed by name; the last line is
# "CARRACK-VM-RESULT <status>", and the VM powers off.
# With run_script set (run.sh --run), the installation is all: the script
# runs instead of the variants and suites, and its status is the result.
# shellcheck disable=SC2154 # repo, bin_dir…: the plan's variables
set -uo pipefail
plan=$1
# shellcheck source=/dev/null
. "$plan"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root CI=1 RUST_BACKTRACE=1
# Debian's kernel runs AppArmor: the tests that need it must find it here.
export CARRACK_TEST_APPARMOR=1
# The console is a serial line read by a log: no colours, no hyperlinks.
export SYSTEMD_COLORS=0 SYSTEMD_URLIFY=0

log() { echo "== guest: $*"; }
status=0
failed() {
    log "FAILED: $*"
    status=1
}
finish() {
    echo "CARRACK-VM-RESULT $status"
    sync
    systemctl --force poweroff
    exit "$status"
}
# Bounded: a hung test must not hold the VM until run.sh's timeout.
run_test() { # dir executable args...
    local dir=$1 exe=$2 rc
    shift 2
    log "running $(basename "$exe") $*"
    (cd "$dir" && timeout 1200 "$exe" --color never "$@" </dev/null 2>&1)
    rc=$?
    log "$(basename "$exe") exited $rc"
    return "$rc"
}

log "kernel $(uname -r); PID 1 is $(cat /proc/1/comm) ($(systemctl --version | head -n1));" \
    "$(stat -fc %T /sys/fs/cgroup) on /sys/fs/cgroup with $(cat /sys/fs/cgroup/cgroup.subtree_control);" \
    "booted in $(cut -d' ' -f1 /proc/uptime) s"
failed_units=$(systemctl --failed --no-legend --plain | awk '{print $1}')
[[ -z $failed_units ]] || log "failed units at boot: $failed_units"

# The node's own registry: Debian's docker-registry service, anonymous, on
# loopback (the package's config asks for htpasswd files it does not ship).
mkdir -p /etc/carrack-vm /etc/systemd/system/docker-registry.service.d
cat >/etc/carrack-vm/registry.yml <<'EOF'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
http:
  addr: 127.0.0.1:5000
EOF
cat >/etc/systemd/system/docker-registry.service.d/carrack-vm.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/docker-registry serve /etc/carrack-vm/registry.yml
EOF

log "installing carrackd, carrack-shim, carrack-runtime and carrackd.service"
install -m 0755 "$bin_dir/carrackd" "$bin_dir/carrack-shim" "$bin_dir/carrack-runtime" /usr/local/bin/ \
    || { failed "install the binaries"; finish; }
install -m 0644 "$repo/deploy/systemd/carrackd.service" /etc/systemd/system/carrackd.service
systemctl daemon-reload

if [[ -n ${run_script:-} ]]; then
    log "running $run_script ${run_args[*]}"
    (cd "$repo" && bash "$run_script" "${run_args[@]}" </dev/null 2>&1)
    rc=$?
    log "$(basename "$run_script") exited $rc"
    ((rc == 0)) || failed "$run_script"
    finish
fi
systemctl start docker-registry.service || failed "start docker-registry.service"

for variant in $variants; do
    log "variant $variant: /etc/carrack/config.toml"
    mkdir -p /etc/carrack
    {
        cat "$variants_dir/$variant.toml"
        printf '\n[registries."127.0.0.1:5000"]\ninsecure = true\n'
    } >/etc/carrack/config.toml
    cat /etc/carrack/config.toml
    if ! systemctl enable --now carrackd.service; then
        failed "systemctl enable --now carrackd.service ($variant)"
        journalctl --no-pager -u carrackd.service | tail -n 40
        continue
    fi
    log "carrackd check ($variant)"
    /usr/local/bin/carrackd --config /etc/carrack/config.toml check || failed "carrackd check ($variant)"
    driver=
    [[ $variant == systemd || $variant == cgroupfs ]] && driver=$variant
    CARRACK_E2E_CGROUP_DRIVER=$driver run_test "$operator_dir" "$operator_exe" \
        --ignored --test-threads=1 || failed "$(basename "$operator_exe") ($variant)"
    systemctl status --no-pager --lines=0 carrackd.service
    if ((status)); then
        journalctl --no-pager -u carrackd.service | tail -n 60
    fi
    systemctl disable --now carrackd.service
    # KillMode=process leaves whatever the tests left; a fresh node for the next variant.
    systemctl kill --signal=KILL carrackd.service 2>/dev/null
    rm -rf /var/lib/carrack/* /run/carrack
done

while IFS=$'\t' read -r dir exe vars args; do
    [[ $vars == - ]] && vars=
    # shellcheck disable=SC2086 # the test names and variables are split on purpose
    (
        [[ -z $vars ]] || { log "with $vars"; export $vars; }
        run_test "$dir" "$exe" --test-threads=1 $args
    ) || failed "$vars $(basename "$exe") $args"
done <"$suites"
finish
