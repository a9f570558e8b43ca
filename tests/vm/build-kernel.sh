#!/bin/bash
# Build the kjumpd VM test kernel (Debian linux-source-6.12 with CONFIG_KEXEC_JUMP)
# and cache it outside the work tree:
#
#   /var/cache/kjumpd-test/kernel-<key>/bzImage     (+ config, version)
#
# <key> = sha256 of the linux-source package version and this directory's
# kjump.config, so a repeated run with the same inputs does not rebuild.
# The last line printed on success is the bzImage path.
#
#   tests/vm/build-kernel.sh            build (or reuse) and print the path
#   tests/vm/build-kernel.sh --path     print the path it would use, build nothing
#   CONFIG_ONLY=1 tests/vm/build-kernel.sh   configure and check only
#
# Takes ~20 minutes on 2 cores (make -j$(nproc) bzImage). Needs: linux-source-6.12,
# bison flex libelf-dev bc libssl-dev (packaging/deps/vm.txt).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
FRAGMENT=$HERE/kjump.config
CACHE=${KJUMPD_TEST_CACHE:-/var/cache/kjumpd-test}
SRC_PKG=${KJUMPD_KERNEL_SRC_PKG:-linux-source-6.12}
TARBALL=/usr/src/$SRC_PKG.tar.xz
JOBS=${JOBS:-$(nproc)}

die() { echo "build-kernel: $*" >&2; exit 1; }

[ -r "$FRAGMENT" ] || die "missing $FRAGMENT"
[ -r "$TARBALL" ] || die "missing $TARBALL (apt-get install $SRC_PKG)"
SRC_VERSION=$(dpkg-query -W -f '${Version}' "$SRC_PKG" 2>/dev/null) \
    || die "$SRC_PKG is not installed"

KEY=$( { printf '%s\n%s\n' "$SRC_PKG" "$SRC_VERSION"; cat "$FRAGMENT"; } | sha256sum | cut -c1-16)
OUT=$CACHE/kernel-$KEY
if [ "${1:-}" = "--path" ]; then
    echo "$OUT/bzImage"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9          # one build at a time; a second caller waits and then reuses it

if [ -s "$OUT/bzImage" ] && [ -z "${CONFIG_ONLY:-}" ]; then
    echo "build-kernel: cached ($SRC_PKG $SRC_VERSION, key $KEY)" >&2
    echo "$OUT/bzImage"
    exit 0
fi

SRC=$CACHE/src-$SRC_PKG-$SRC_VERSION
if [ ! -f "$SRC/.unpacked" ]; then
    echo "build-kernel: unpacking $TARBALL -> $SRC" >&2
    rm -rf "$SRC"
    mkdir -p "$SRC"
    tar -xJf "$TARBALL" -C "$SRC" --strip-components=1
    touch "$SRC/.unpacked"
fi

BUILD=$CACHE/build-$KEY
mkdir -p "$BUILD"
cd "$SRC"
echo "build-kernel: configuring in $BUILD" >&2
make -s O="$BUILD" x86_64_defconfig >&2
KCONFIG_CONFIG="$BUILD/.config" scripts/kconfig/merge_config.sh -m -O "$BUILD" \
    "$BUILD/.config" kernel/configs/kvm_guest.config "$FRAGMENT" >&2
make -s O="$BUILD" olddefconfig >&2

# Every line of the fragment must have survived olddefconfig.
bad=0
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*)
        grep -qxF -- "$line" "$BUILD/.config" || { echo "MISMATCH: want '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$BUILD/.config" || echo unset)'" >&2; bad=1; } ;;
    "# CONFIG_"*" is not set")
        opt=${line#\# }; opt=${opt%% *}
        if grep -qE "^$opt=" "$BUILD/.config"; then
            echo "MISMATCH: want '$line', got '$(grep -E "^$opt=" "$BUILD/.config")'" >&2; bad=1
        fi ;;
    esac
done < "$FRAGMENT"
[ "$bad" = 0 ] || die "fragment lines lost in olddefconfig (see above)"
echo "build-kernel: config OK (every fragment line kept)" >&2
[ -z "${CONFIG_ONLY:-}" ] || { echo "$BUILD/.config"; exit 0; }

echo "build-kernel: make -j$JOBS bzImage (about 20 min on 2 cores) $(date -Is)" >&2
start=$(date +%s)
make O="$BUILD" -j"$JOBS" bzImage >&2
echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2

tmp=$OUT.tmp.$$
rm -rf "$tmp"; mkdir -p "$tmp"
cp "$BUILD/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$BUILD/.config" "$tmp/config"
cp "$FRAGMENT" "$tmp/kjump.config"
printf '%s %s\n' "$SRC_PKG" "$SRC_VERSION" > "$tmp/source"
make -s O="$BUILD" kernelrelease > "$tmp/release" 2>/dev/null || true
rm -rf "$OUT"; mv "$tmp" "$OUT"
echo "$OUT/bzImage"
