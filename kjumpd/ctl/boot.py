"""Boot-time commands of kjumpctl.

``resume-check``: the early-boot resume hook (kernel C), see kjumpd.boot.resume.
``initramfs build``: the hibernate kernel's initramfs for B and R, see kjumpd.host.initramfs.
"""

from __future__ import annotations

import argparse
import sys

from ..boot import resume
from . import EXIT_FAILED, EXIT_OK


def _initramfs_build(args: argparse.Namespace) -> int:
    """Build the initramfs and print what went into it."""
    from ..host import initramfs  # builds need no D-Bus or udev; keep resume-check's imports small

    try:
        result = initramfs.build(
            args.output, roles=args.role or tuple(initramfs.ROLE_PROGRAMS), python=args.python,
            kexec=None if args.no_kexec else initramfs.DEFAULT_KEXEC, extra_modules=args.module,
            compress=args.compress, log=(lambda m: print(m, file=sys.stderr)) if args.verbose else None)
    except initramfs.InitramfsError as exc:
        print(f"kjumpctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(result.summary())
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resume-check`` and ``initramfs build``."""
    parser = sub.add_parser(
        "resume-check",
        help="resume a hibernated system if a valid image is found (early boot)",
        description="Look for a hibernation image of this machine; if one is valid, load the restore "
                    "kernel and jump. Exits 0 whenever the normal boot should continue.")
    resume.add_arguments(parser)
    parser.set_defaults(func=resume.run)

    group = sub.add_parser("initramfs", help="build the hibernate kernel's initramfs",
                           description="Work with the initramfs of the hibernate kernel (B and R).")
    actions = group.add_subparsers(dest="initramfs_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="build the initramfs B and R boot with",
        description="Build a cpio archive with busybox, kexec-tools, a minimal Python and kjumpd, whose "
                    "/init runs the save or restore program as kjump.role= on the kernel command line says.")
    build.add_argument("output", metavar="OUTPUT", help="where to write the archive (replaced atomically)")
    build.add_argument("--role", action="append", choices=("save", "restore"),
                       help="only what this role needs (repeatable; default both)")
    build.add_argument("--python", default="/usr/bin/python3", help="the interpreter to copy")
    build.add_argument("--no-kexec", action="store_true", help="leave kexec-tools out")
    build.add_argument("--module", action="append", default=[], help="one more Python module to include")
    build.add_argument("--compress", choices=("gzip", "none"), default="gzip")
    build.add_argument("-v", "--verbose", action="store_true", help="list what goes in")
    build.set_defaults(func=_initramfs_build)
