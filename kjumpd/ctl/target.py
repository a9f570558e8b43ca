"""``kjumpctl target``: make a device or file kjumpd's image target.

``kjumpctl target init DEVICE`` is to kjumpd what ``mkswap`` is to swap: it
writes kjumpd's signature (an empty superblock with a new UUID, see
docs/format.md), after which the daemon, the save program (B), the resume
check (C) and the restore program (R) accept the target. A target that holds
anything else (a file system, swap, LUKS, RAID, a partition table, a saved
hibernation image, unknown data) is only overwritten with ``--force``, after
saying what would be destroyed. A device in use (mounted, active swap, held by
device-mapper, md or LVM) is refused even then.

Exit codes: 0 initialised (or already a kjumpd target), 1 refused or failed
(reason on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from ..errors import ImageError
from ..format import State
from ..target import ImageTarget
from . import EXIT_FAILED, EXIT_OK
from .image import offset_argument


def cmd_init(args: argparse.Namespace) -> int:
    """kjumpctl target init DEVICE [--offset N] [--force]."""
    try:
        with ImageTarget.open_unclaimed(args.device, offset=args.offset) as target:
            superblock, found = target.survey()
            if superblock is not None and not found and not args.force:
                print(f"{args.device}: already a kjumpd image target (UUID {uuid.UUID(bytes=superblock.target_uuid)},"
                      f" {superblock.state.name}); nothing changed")
                return EXIT_OK
            if found and not args.force:
                for what in found:
                    print(f"{args.device}: holds {what}", file=sys.stderr)
                print(f"kjumpctl: initialising {args.device} destroys what it holds (above); "
                      "run again with --force to do it", file=sys.stderr)
                return EXIT_FAILED
            for what in found:
                print(f"{args.device}: destroying {what}", file=sys.stderr)
            new = target.initialise()
            capacity = target.capacity
    except ImageError as exc:
        print(f"kjumpctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.device}: kjumpd image target, UUID {uuid.UUID(bytes=new)}, {capacity} bytes, "
          f"state {State.EMPTY.name}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``kjumpctl target …``."""
    parser = sub.add_parser("target", help="make a device or file kjumpd's image target",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="target_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="write kjumpd's signature to DEVICE (like mkswap)",
        description="Write kjumpd's signature (an empty superblock with a new UUID) to DEVICE. Says what it "
                    "would destroy and needs --force when DEVICE holds anything.")
    init.add_argument("device", metavar="DEVICE", help="block device or file")
    init.add_argument("--offset", type=offset_argument, default=0,
                      help="byte offset of the target in DEVICE, a multiple of 4096 (default 0)")
    init.add_argument("--force", action="store_true",
                      help="overwrite whatever DEVICE holds (a device in use is refused even so)")
    init.set_defaults(func=cmd_init)
