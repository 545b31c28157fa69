#!/bin/busybox sh
# /init of the test VMs' initramfs (built by e2e/vm/run.sh, which writes
# /vm.env beside it): loads the modules that reach the host's root over
# virtio-9p, builds the guest's root from it and switches to the mode's
# second stage.
#
# cgroup2: the host's root read-only, busybox sh running guest-cgroup2.sh.
# systemd: a copy-on-write view of the host's root (the 9p mount under an
#   overlay whose upper layer is a tmpfs), tmpfs on /tmp and /var/lib/carrack
#   (overlayfs cannot take its upper dirs on an overlay, and container
#   storage needs them), host directories the tests need bound back where a
#   tmpfs hid them, the Debian kernel's modules at /lib/modules/<release>,
#   an empty fstab (the host's disks are not the guest's), no container
#   marker, the units of guest-systemd.sh, and systemd as PID 1.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "CARRACK-VM-RESULT 3 ($*)"; poweroff -f; }
. /vm.env || fail "no /vm.env"
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || fail "insmod $m"
done
ninep="trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144"

if [ "$mode" = cgroup2 ]; then
    mount -t 9p -o "$ninep" hostroot /newroot || fail "mount 9p host root"
    mount --move /proc /newroot/proc
    mount --move /sys /newroot/sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot /bin/busybox sh "$stage2" "$plan"
fi

[ "$mode" = systemd ] || fail "unknown mode $mode"
mkdir -p /host /cow
mount -t 9p -o "$ninep" hostroot /host || fail "mount 9p host root"
mount -t tmpfs -o mode=0755 cow /cow || fail "mount tmpfs for the overlay"
mkdir -p /cow/upper /cow/work
mount -t overlay -o lowerdir=/host,upperdir=/cow/upper,workdir=/cow/work overlay /newroot \
    || fail "mount the copy-on-write root"
for d in /tmp:1777 /var/lib/carrack:0711; do
    mkdir -p "/newroot${d%:*}"
    mount -t tmpfs -o "mode=${d#*:}" tmpfs "/newroot${d%:*}" || fail "mount tmpfs on ${d%:*}"
done
# shellcheck disable=SC2154 # keep: set in /vm.env
for d in $keep; do
    [ -e "/newroot$d" ] && continue
    mkdir -p "/newroot$d"
    mount --bind "/host$d" "/newroot$d" || fail "bind $d"
done
mkdir -p /newroot/lib/modules
ln -sfn "$moddir" "/newroot/lib/modules/$kver"
: >/newroot/etc/fstab
# The host may be a container: its marker would make systemd think it runs
# in one (and ignore the kernel command line, which names our target).
rm -f /newroot/.dockerenv /newroot/run/.containerenv
units=/newroot/etc/systemd/system
mkdir -p "$units"
cat >"$units/carrack-vm.target" <<EOF
[Unit]
Description=Carrack VM tests
Requires=basic.target carrack-vm-tests.service
After=basic.target
AllowIsolate=yes
EOF
cat >"$units/carrack-vm-tests.service" <<EOF
[Unit]
Description=Carrack VM tests ($stage2)
After=basic.target

[Service]
Type=oneshot
ExecStart=/bin/bash $stage2 $plan
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
EOF
# No network time on a machine without a network.
ln -sfn /dev/null "$units/systemd-timesyncd.service"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
