"""The resume hook: runs early in an ordinary boot C (``kjumpctl resume-check``).

It looks for a hibernation image on the configured target, checks that it is
complete, not consumed, whole (every chunk verified) and made on this machine
with this RAM layout, then loads R into the B region the image records and
jumps. Anything wrong is said on the console and in the kernel log, the
image is left alone, and the hook exits 0 so the normal boot carries on.

Where the image is: ``--target``/``--offset`` or ``kjump.resume=`` and
``kjump.resume_offset=`` on the kernel command line. The hibernate kernel
and its initramfs: ``--kernel``/``--initrd``, ``kjump.kernel=``/``kjump.initrd=``,
or the defaults below (the initramfs hook copies them there).

Exit codes: 0 the normal boot continues (no image, or why not on the
console); 2 usage error. On success the process does not return.
"""

from __future__ import annotations

import argparse
import sys

from .. import image, kexec
from ..errors import FormatError, KjumpError
from ..format import State
from ..kexec import KernelParameters, LoadSpec
from ..machine import Machine, machine_from_command_line
from ..memmap import Range
from .common import read_command_line

DEFAULT_KERNEL = "/usr/lib/kjumpd/hibernate/vmlinuz"
DEFAULT_INITRD = "/usr/lib/kjumpd/hibernate/initrd.img"

EXIT_CONTINUE = 0
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hook's options (shared by ``python -m kjumpd.boot.resume`` and ``kjumpctl resume-check``)."""
    parser.add_argument("--cmdline", help="kernel command line to use instead of /proc/cmdline")
    parser.add_argument("--target", help="image target (default: kjump.resume= on the command line)")
    parser.add_argument("--offset", type=int, help="offset of the image on the target in bytes")
    parser.add_argument("--kernel", help=f"hibernate kernel to load as R (default {DEFAULT_KERNEL})")
    parser.add_argument("--initrd", help=f"its initramfs (default {DEFAULT_INITRD})")
    parser.add_argument("--dry-run", action="store_true", help="check the image but do not load or jump")


def restore_spec(machine: Machine, params: dict[str, str], target_id: str, offset: int, region: Range,
                 kernel: str, initrd: str) -> LoadSpec:
    """R's load spec: the B region of the image, ``kjump.role=restore``, C's console settings."""
    consoles = " ".join(f"{k}={v}" for k, v in params.items() if k in ("console", "earlyprintk"))
    command_line = kexec.kernel_command_line(KernelParameters(
        ram=machine.system_ram(), region=region, role=kexec.ROLE_RESTORE, target=target_id,
        offset=offset, extra=consoles))
    return LoadSpec(kernel, initrd, command_line, region, preserve_context=False)


def check(machine: Machine, name: str, offset: int) -> tuple[int, Range, str]:
    """Check the image; returns (offset, region, target id) or raises KjumpError saying why not."""
    with machine.open_target(name, offset=offset, writable=False) as target:
        try:
            superblock = image.read_superblock(target)
        except FormatError as exc:
            raise KjumpError(f"the image superblock is unreadable: {exc}") from exc
        if superblock.state == State.EMPTY:
            raise KjumpError("no hibernation image")
        reason = superblock.identity.mismatch(machine.identity())
        if reason:
            raise KjumpError(reason)
        found_on = machine.stable_target_id(name)
        if superblock.target_id and superblock.target_id != found_on:
            raise KjumpError(f"the image was written to {superblock.target_id} but found on {found_on}: "
                             "it belongs to another disk")
        image.verify(target)      # ImageError: incomplete, consumed, discarded or corrupt
    region = Range(superblock.region_base, superblock.region_base + superblock.region_size)
    return offset, region, superblock.target_id or name


def run(options: argparse.Namespace) -> int:
    """Do the check and, when everything is right, load R and jump."""
    params = read_command_line(options.cmdline)
    machine = machine_from_command_line(params, kernel="C")
    name = options.target or params.get("kjump.resume", "")
    if not name:
        machine.console("no kjump.resume= image target configured; normal boot")
        return EXIT_CONTINUE
    try:
        offset = options.offset if options.offset is not None else int(params.get("kjump.resume_offset", "0"), 0)
        offset, region, target_id = check(machine, name, offset)
    except (KjumpError, ValueError) as exc:
        machine.console(f"not resuming: {exc}; normal boot")
        return EXIT_CONTINUE
    kernel = options.kernel or params.get("kjump.kernel") or DEFAULT_KERNEL
    initrd = options.initrd or params.get("kjump.initrd") or DEFAULT_INITRD
    try:
        spec = restore_spec(machine, params, target_id, offset, region, kernel, initrd)
        if options.dry_run:
            machine.console(f"image on {name} is valid; would load {kernel} into {region} and resume")
            return EXIT_CONTINUE
        machine.console(f"resuming the hibernated system from {name}")
        machine.kexec_load(spec)
        machine.kexec_execute()
        machine.console("kexec returned: the restore kernel did not start; normal boot")
    except KjumpError as exc:
        machine.console(f"cannot start the restore kernel: {exc}; normal boot (the image is left alone)")
    return EXIT_CONTINUE


def main(argv: list[str] | None = None) -> int:
    """``python -m kjumpd.boot.resume``."""
    parser = argparse.ArgumentParser(prog="kjumpd.boot.resume", description="Resume a hibernated system (runs in C).")
    add_arguments(parser)
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_CONTINUE
    try:
        return run(options)
    except (KjumpError, OSError) as exc:
        print(f"kjump: resume check failed: {exc}; normal boot", flush=True)
        return EXIT_CONTINUE


if __name__ == "__main__":
    sys.exit(main())
