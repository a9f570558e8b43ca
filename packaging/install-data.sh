#!/bin/sh
# Install kjumpd's system files (everything but the Python package, which the
# distribution's Python tooling installs) into a staging root. Used by both
# packaging/debian/rules and packaging/rpm/kjumpd.spec, which differ only in
# the directories; run from the top of the source tree.
#
#   packaging/install-data.sh DESTDIR UNITDIR UDEVRULESDIR
#
# UNITDIR:      systemd system units (Debian 12: /lib/systemd/system,
#               Fedora: /usr/lib/systemd/system)
# UDEVRULESDIR: udev rules (/lib/udev/rules.d, /usr/lib/udev/rules.d)
#
# The units, drop-ins, D-Bus and polkit policies and udev rules are taken as
# they exist in the tree (units/, dbus-policy/, packaging/udev/);
# tests/test_packaging.py checks that the required ones are in the package.
set -eu

if [ $# -ne 3 ]; then
	echo "usage: $0 DESTDIR UNITDIR UDEVRULESDIR" >&2
	exit 2
fi
destdir=$1 unitdir=$2 udevrulesdir=$3

# put MODE DIR FILE...: install each existing FILE into DESTDIR/DIR
put() {
	mode=$1 dir=$2
	shift 2
	for f in "$@"; do
		[ -e "$f" ] || continue
		install -D -m "$mode" "$f" "$destdir$dir/${f##*/}"
	done
}

put 0644 "$unitdir" units/*.service units/*.target units/*.timer
for d in units/*.d; do
	[ -d "$d" ] || continue
	put 0644 "$unitdir/${d##*/}" "$d"/*.conf
done
# run by the sleep drop-ins: kjumpd or systemd-sleep, and the system-sleep hooks systemd-sleep would run
put 0755 /usr/lib/kjumpd units/kjumpd-sleep units/kjumpd-sleep-hooks
put 0644 /usr/share/dbus-1/system.d dbus-policy/*.conf
put 0644 /usr/share/dbus-1/system-services dbus-policy/*.service
# the interface for D-Bus tooling (the daemon reads the copy in its Python package)
put 0644 /usr/share/dbus-1/interfaces kjumpd/org.kjump.Hibernate1.xml
put 0644 /usr/share/polkit-1/actions dbus-policy/*.policy
put 0644 "$udevrulesdir" packaging/udev/*.rules
put 0755 /usr/share/initramfs-tools/hooks packaging/initramfs-tools/hooks/kjumpd
put 0755 /usr/share/initramfs-tools/scripts/local-premount packaging/initramfs-tools/scripts/local-premount/kjumpd
install -D -m 0644 packaging/initramfs-tools/kjumpd-initramfs-files.py "$destdir/usr/share/kjumpd/initramfs-files.py"
install -D -m 0644 packaging/kjumpd.conf "$destdir/etc/kjumpd/kjumpd.conf"
put 0755 /usr/sbin packaging/tools/kjumpd-build-kernel
install -D -m 0644 packaging/kernel/kjump.config "$destdir/usr/share/kjumpd/kernel/kjump.config"
put 0644 /usr/share/man/man1 packaging/man/*.1
put 0644 /usr/share/man/man5 packaging/man/*.5
put 0644 /usr/share/man/man8 packaging/man/*.8
