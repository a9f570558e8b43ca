# shellcheck shell=sh
# (no "#!" line here: the builder writes "#!/bin/busybox sh" above this file as /init)
# /init of kjumpd's hibernate kernel (B: kjump.role=save, R: kjump.role=restore).
# Installed by kjumpd.host.initramfs from kjumpd/boot/init.sh; the contract is in docs/initramfs.md.
# @SITE_DIR@ is replaced with the archive's Python path when the archive is built.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=@SITE_DIR@ PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LC_ALL=C.UTF-8
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

say() { echo "kjump-init: $*"; }

role= ; debug=
# The command line is one line of words; only kjump.role= and kjump.debug= (never quoted) are read here.
# shellcheck disable=SC2013
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    kjump.role=*) role=${arg#kjump.role=} ;;
    kjump.debug=*) debug=${arg#kjump.debug=} ;;
    esac
done

# The role names are the program modules' names (kjumpd/boot/save.py, restore.py).
case "$role" in
save|restore) prog=kjumpd.boot.$role ;;
*) prog= ;;
esac

# The program may leave its decision for the case it returns: one word in
# /run/kjumpd/next (jump-back | poweroff | reboot | halt | shell).
mkdir -p /run/kjumpd
[ "$debug" = shell-first ] && { say "kjump.debug=shell-first: shell (exit to go on)"; setsid cttyhack sh; }

if [ -n "$prog" ]; then
    say "role $role, $(cat /proc/sys/kernel/osrelease), $(grep -c ^processor /proc/cpuinfo) cpu(s): python3 -m $prog"
    /usr/bin/python3 -S -m "$prog"
    rc=$?
    say "$prog exited with status $rc"
else
    say "no usable kjump.role= on the kernel command line ('$role')"
    rc=127
fi

next=
[ -s /run/kjumpd/next ] && read -r next < /run/kjumpd/next
if [ -z "$next" ]; then
    case "$role" in
    save) next=jump-back ;;
    *) next=reboot ;;
    esac
fi
[ "$debug" = shell ] && next=shell
[ "$rc" != 0 ] && say "FAILED: $prog did not finish (status $rc); next: $next"

case "$next" in
jump-back)
    say "jumping back to the hibernating kernel"
    sync
    /usr/bin/python3 -S /usr/lib/kjumpd/jumpback.py
    say "jump back failed (status $?); powering off"
    ;;
shell)
    say "debug shell on the console"
    setsid cttyhack sh
    ;;
reboot)
    say "rebooting"; sync; reboot -f; sleep 5 ;;
halt)
    say "halting"; sync; halt -f; sleep 5 ;;
esac
say "powering off"
sync
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
while :; do sleep 3600; done
