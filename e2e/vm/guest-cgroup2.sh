# Second stage of the cgroup v2 test VM (run by /bin/busybox sh as PID 1
# after the initramfs switched into the host's root, mounted read-only over
# virtio-9p). Argument: the plan file written by run.sh, lines
# "<directory>\t<test executable>" and one "ARGS\t<extra test arguments>".
# Prints the tests' output and "CARRACK-VM-RESULT <status>" on the console,
# then powers the VM off.
bb=/bin/busybox
plan=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp CI=1 RUST_BACKTRACE=1 TMPDIR=/tmp
# Debian's kernel runs AppArmor: the tests that need it must find it here.
export CARRACK_TEST_APPARMOR=1

finish() {
    echo "CARRACK-VM-RESULT $1"
    $bb sync
    $bb poweroff -f
}

$bb mkdir -p /dev/pts /dev/mqueue /dev/shm
# Scratch tmpfs over the read-only host tree, except over a directory that
# holds the checkout or the test executables (CI may clone under /tmp):
# hiding it would hide the tests. Temporary files then go to /dev/shm.
for d in /tmp /run /var/tmp /dev/shm; do
    if $bb grep -q "$d/" "$plan"; then
        echo "== guest: $d holds the tests; not covering it with a tmpfs"
        export TMPDIR=/dev/shm
        continue
    fi
    $bb mount -t tmpfs -o mode=1777 tmpfs "$d" || finish 3
done
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup || finish 3
$bb mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# securityfs: AppArmor's profile list and the parser's interface.
$bb mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
for c in $($bb cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || finish 3
done
echo "== guest: kernel $($bb uname -r), cgroup2 controllers: $($bb cat /sys/fs/cgroup/cgroup.subtree_control)," \
    "AppArmor: $($bb cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo absent)"

args=$($bb sed -n 's/^ARGS\t//p' "$plan")
status=0
while IFS="$($bb printf '\t')" read -r dir exe; do
    [ "$dir" = ARGS ] && continue
    echo "== guest: running $exe"
    cd "$dir" || { status=1; continue; }
    # shellcheck disable=SC2086 # extra arguments are split on purpose
    $bb timeout 900 "$exe" --test-threads=2 $args </dev/null 2>&1
    rc=$?
    echo "== guest: $($bb basename "$exe") exited $rc"
    [ $rc -eq 0 ] || status=1
done <"$plan"
finish $status
