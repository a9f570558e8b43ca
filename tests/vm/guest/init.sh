#!/bin/sh
# /sbin/init of A's root file system in the kjumpd VM test (busybox sh, PID 1).
#
# Boot C and boot A are the same boot: first the resume hook (kjumpctl
# resume-check) runs while / is still mounted read-only, as the kernel left it.
# If it finds a valid image it loads R and jumps, and never returns. Otherwise
# this is A: / becomes writable, then the system bus, the polkit stand-in,
# kjumpd (real machine), the workload, and the test agent on ttyS0.
#
# Consoles: ttyS0 = kernel console + agent (the host drives it);
#           ttyS1 = kjumpd's and polkit's log (a file on the host).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 HOME=/root
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
grep -q ' /dev/pts ' /proc/mounts || mount -t devpts devpts /dev/pts
grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

say() { echo "KJVM[$(cut -d' ' -f1 /proc/uptime)] $*"; }
cmdline=$(cat /proc/cmdline)
say "init: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s), root $(awk '$2=="/"{print $4}' /proc/mounts | cut -d, -f1)"

# --- C: the resume hook, before anything is mounted writable ---------------
# (kjvm.cstage=initramfs: the early initramfs ran it before mounting /)
case " $cmdline " in
*" kjvm.noresume "*) say "resume-check: skipped (kjvm.noresume)" ;;
*" kjvm.cstage=initramfs "*) say "resume-check: done in the initramfs" ;;
*)
    say "resume-check: start"
    kjumpctl resume-check </dev/null
    say "resume-check: exit status $? (no resume, booting normally)"
    ;;
esac

# --- A ---------------------------------------------------------------------
mount -o remount,rw / || say "remount rw / failed"
hostname -F /etc/hostname
mkdir -p /run/dbus /run/kjumpd /var/lib/work
dbus-daemon --system && say "dbus: system bus up"
stty -F /dev/ttyS1 -echo 2>/dev/null
setsid python3 /usr/lib/kjvm/polkit-root.py </dev/null >/dev/ttyS1 2>&1 &
setsid kjumpd --log-level debug </dev/null >/dev/ttyS1 2>&1 &
setsid /usr/lib/kjvm/workload.sh </dev/null >/dev/null 2>&1 &
say "agent: ready"

# The agent: commands come line by line from the host on ttyS0; sh reads the
# tty itself, with no prompt and no echo. The host wraps each command as ( cmd ) </dev/null 2>&1 and waits
# for its marker; it first says hello until one is answered (see vm_qemu.py).
stty -F /dev/ttyS0 -echo icanon 2>/dev/null
while :; do
    PS1= PS2= setsid sh </dev/ttyS0 >/dev/ttyS0 2>/run/agent.err
    say "agent: shell ended ($(tail -1 /run/agent.err 2>/dev/null)), restarting"
    sleep 1
done
