#!/bin/busybox sh
# /init of the early initramfs of A's (and C's) boot in the kjumpd VM test.
#
# This is where a real system's initramfs hook runs the resume check: before
# the root file system is mounted at all, so nothing A had mounted is touched
# (no journal replay) when a hibernated A is resumed. If the hook finds a
# valid image it loads R and jumps and never returns; otherwise the root file
# system is mounted read-only and /sbin/init takes over (boot A).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=/usr/lib/python3/dist-packages PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LC_ALL=C.UTF-8
mkdir -p /proc /sys /dev /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
exec </dev/console >/dev/console 2>&1

say() { echo "KJVM[$(cut -d' ' -f1 /proc/uptime)] $*"; }
root=/dev/vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=/dev/*) root=${arg#root=} ;; esac
done
say "initramfs: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s)"
say "resume-check: start (initramfs, root not mounted)"
kjumpctl resume-check </dev/null
rc=$?
if [ "$rc" -eq 3 ]; then
    # a saved image that cannot be discarded: booting on could resume it later
    # over a changed root fs (docs/initramfs.md); the VM stops here.
    say "resume-check: exit status 3: the image cannot be discarded; boot stopped"
    exec sh
fi
say "resume-check: exit status $rc (no resume, booting normally)"

tries=0
until mount -t ext4 -o ro "$root" /root 2>/dev/null; do
    tries=$((tries + 1))
    [ $tries -gt 50 ] && { say "cannot mount $root"; exec sh; }
    sleep 0.2
done
mount --move /dev /root/dev
mount --move /run /root/run
umount /sys /proc
exec switch_root /root /sbin/init
