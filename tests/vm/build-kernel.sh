#!/bin/bash
# Build (or reuse) the kjumpd VM test kernel with the tool the package ships,
# packaging/tools/kjumpd-build-kernel: Debian's linux-source-6.12 with
# x86_64_defconfig + kvm_guest.config + packaging/kernel/kjump.config
# (virtio and the serial console built in, CONFIG_KEXEC_JUMP), cached outside
# the work tree in /var/cache/kjumpd-test/kernel-<key>/. The system test
# (tests/system) builds its Debian kernel package from the same build tree,
# so one cold build serves both VM tests.
#
#   tests/vm/build-kernel.sh            build (or reuse) and print the bzImage path
#   tests/vm/build-kernel.sh --path     print the path it would use, build nothing
#   tests/vm/build-kernel.sh --deb      also the Debian package; prints the .deb path
#   CONFIG_ONLY=1 tests/vm/build-kernel.sh   configure and check only
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
args=(--base=qemu "--cache=${KJUMPD_TEST_CACHE:-/var/cache/kjumpd-test}"
      "--source=${KJUMPD_KERNEL_SRC_PKG:-linux-source-6.12}" "--jobs=${JOBS:-$(nproc)}")
[ -z "${CONFIG_ONLY:-}" ] || args+=(--config-only)
exec "$HERE/../../packaging/tools/kjumpd-build-kernel" "${args[@]}" "$@"
