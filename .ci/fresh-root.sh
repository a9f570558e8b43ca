#!/bin/bash
# The README's commands on a fresh Debian 12, as a newcomer runs them: clone
# the committed HEAD of this repository into a copy of a minimal Debian root
# and run make targets in it as root (chroot). Proves that every package a
# step needs is installed by that step (issue 15); CI runs it (.ci/run).
#
# Usage: .ci/fresh-root.sh [make-target ...]        (default: demo)
#
# The root: debootstrap --variant=minbase of this machine's Debian suite from
# the archive its apt uses, plus only what a newcomer needs to get the
# sources (git, make, ca-certificates). It is built once and cached as a
# tarball in $KJUMPD_FRESH_CACHE (default /var/cache/kjumpd-fresh-root),
# keyed by suite, archive and the recipe below, so a changed recipe builds a
# new one. Downloads are cached beside it (apt's .debs, pip's wheels, the
# packaging tests' own debootstrap root): the packages are still installed
# by the make targets in every run, only not fetched again.
#
# Each run gets its own copy, which is a mount point of its own (else / is
# missing from /proc/self/mountinfo, and kjumpd rightly refuses a target on a
# file system it cannot find), with /proc, /sys and /dev from the host. The
# host's CA bundle is handed to the root's pip and git, for hosts that reach
# the registries through their own CA. Each target is bounded by
# $KJUMPD_FRESH_TIMEOUT (default 40m); its log goes to
# $KJUMPD_FRESH_LOGS/fresh-root.TARGET.log (default /tmp), and its tail is
# printed when it fails. Exit status: 0 when every target passed, 1 when one
# failed, 2 when the root could not be made.
#
# Times on the development machine (2 cores): see docs/fresh-root.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
targets=("${@:-demo}")
cache=${KJUMPD_FRESH_CACHE:-/var/cache/kjumpd-fresh-root}
logs=${KJUMPD_FRESH_LOGS:-/tmp}
limit=${KJUMPD_FRESH_TIMEOUT:-40m}
apt_get=(apt-get -o DPkg::Lock::Timeout=600 -q -y)
export DEBIAN_FRONTEND=noninteractive

die() { echo "fresh-root: $*" >&2; exit 2; }

# The first URI of this machine's apt sources that ends in /$1 (debian, debian-security).
archive() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^\s*#' | grep -oE "https?://[^ ]+/$1/?( |$)" | head -1 | tr -d ' ' || true
}

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror=$(archive debian)
security=$(archive debian-security)
[ -n "$suite" ] || die "no VERSION_CODENAME in /etc/os-release"
[ -n "$mirror" ] || die "no Debian archive (…/debian) in this machine's apt sources"

# Mount what a root needs to run programs; the copy itself becomes a private
# mount point first, so nothing mounted under it propagates back to the host.
mount_root() {
    local root=$1
    mount --bind "$root" "$root"
    mount --make-private "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
    mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
}

# Stop what still runs inside the root (only processes this script started
# can have it as their root), then unmount everything under it and delete it.
remove_root() {
    local root=$1 pid
    [ -d "$root" ] || return 0
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && kill -KILL "$pid" 2>/dev/null || true
    done
    umount -R "$root" 2>/dev/null || umount -R -l "$root" 2>/dev/null || true
    if grep -q " $root[/ ]" /proc/self/mountinfo; then
        echo "fresh-root: $root is still mounted; left in place" >&2
        return 0
    fi
    rm -rf --one-file-system "$root"
}

# The recipe of the cached root. Its text is part of the cache key.
build_root() {
    local root=$1
    chmod 755 "$root"   # mktemp made it 0700: as / of the root, nobody could use anything in it
    debootstrap --variant=minbase "$suite" "$root" "$mirror"
    {
        echo "deb $mirror $suite main"
        echo "deb $mirror $suite-updates main"
        [ -z "$security" ] || echo "deb $security $suite-security main"
    } >"$root/etc/apt/sources.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount_root "$root"
    chroot "$root" "${apt_get[@]}" update
    chroot "$root" "${apt_get[@]}" install --no-install-recommends git make ca-certificates
    chroot "$root" apt-get clean
    umount -R "$root"
}

key=$( { echo "$suite $mirror $security"; declare -f build_root mount_root; } | sha256sum | cut -c1-16)
tarball=$cache/root-$suite-$key.tar
mkdir -p "$cache/apt-archives/partial" "$cache/pip" "$cache/kjumpd-test" "$logs"

# Build the root once (a lock keeps two runs from building it together).
exec 9>"$cache/.lock"
flock 9
if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { apt-get -q update && "${apt_get[@]}" install debootstrap; } >/dev/null
    start=$(date +%s)
    work=$(mktemp -d "$cache/build.XXXXXX")
    trap 'remove_root "$work"' EXIT
    build_root "$work" >"$logs/fresh-root.build.log" 2>&1 ||
        { tail -30 "$logs/fresh-root.build.log" >&2; die "building the root failed (log: $logs/fresh-root.build.log)"; }
    tar -C "$work" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    remove_root "$work"
    trap - EXIT
    find "$cache" -maxdepth 1 -name "root-$suite-*.tar" ! -path "$tarball" -delete
    echo "fresh-root: built the $suite root in $(( $(date +%s) - start )) s ($tarball)"
fi
flock -u 9
exec 9>&-

# A run that was killed (SIGKILL: no trap) leaves its copy mounted; the copy
# is named after the run's process, so a later run can clear it away safely.
for old in /var/tmp/kjumpd-fresh-root.*; do
    pid=${old##*.}
    if [[ $pid =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null; then remove_root "$old"; fi
done
root=/var/tmp/kjumpd-fresh-root.$$
remove_root "$root"
mkdir -m 755 "$root"
trap 'remove_root "$root"' EXIT
tar -C "$root" -xf "$tarball"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount_root "$root"
mkdir -p "$root/root/.cache/pip" "$root/var/cache/kjumpd-test"
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
mount --bind "$cache/pip" "$root/root/.cache/pip"
mount --bind "$cache/kjumpd-test" "$root/var/cache/kjumpd-test"
chroot "$root" chown _apt:root /var/cache/apt/archives/partial   # apt downloads as _apt
ca=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca-bundle.crt"
    ca=(SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt PIP_CERT=/etc/ssl/host-ca-bundle.crt
        REQUESTS_CA_BUNDLE=/etc/ssl/host-ca-bundle.crt GIT_SSL_CAINFO=/etc/ssl/host-ca-bundle.crt)
fi
git clone -q "$repo" "$root/root/kjumpd"
echo "fresh-root: $(git -C "$root/root/kjumpd" log --oneline -1) in a fresh $suite root ($root)"

# A make target runs in the background so that a TERM (CI's own timeout) is
# handled at once: it is passed on, and the EXIT trap cleans up.
child=
trap '[ -z "$child" ] || kill -TERM "$child" 2>/dev/null; exit 143' TERM INT
status=0
for target in "${targets[@]}"; do
    log=$logs/fresh-root.$target.log
    start=$(date +%s)
    timeout --kill-after=60 "$limit" chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${ca[@]}" \
        bash -c 'cd /root/kjumpd && make "$1"' make "$target" >"$log" 2>&1 &
    child=$!
    if wait "$child"; then
        result=ok
    else
        result="FAILED (exit $?)"
        status=1
        tail -40 "$log" | sed "s/^/  $target| /" >&2
    fi
    echo "fresh-root: make $target: $result in $(( $(date +%s) - start )) s (log: $log)"
done
exit $status
