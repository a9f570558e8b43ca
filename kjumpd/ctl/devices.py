"""``kjumpctl devices``: what kjumpd's device tracker sees and what it would do at a hibernation.

It reads udev and the mount table directly (no daemon needed): the image
target and its identity, the devices tagged KJUMP_UNBIND=1 by udev rules,
filesystems on removable media, the memory blocks, and the problems that
would stop a hibernation now. Exit code 0 even when there are problems
(they are part of the answer); 1 when the configuration cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..daemon import config as configmod

COLUMNS = ("role", "device", "state", "action")


def _table(entries: list[dict[str, object]]) -> str:
    """The entries as aligned columns, the last one unpadded."""
    rows = [[c.upper() for c in COLUMNS]] + [[str(e.get(c, "")) for c in COLUMNS] for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([cell.ljust(w) for cell, w in zip(r, widths, strict=False)] + [r[-1]]) for r in rows)


def cmd_devices(args: argparse.Namespace) -> int:
    """Print the tracker's view, as a table or as JSON."""
    from ..daemon.devices import DeviceTracker

    target = args.target if args.target is not None else configmod.load(args.config).image_target
    tracker = DeviceTracker(target)
    entries = tracker.describe()
    problems = tracker.problems()
    if args.json:
        json.dump({"image-target": target, "identity": tracker.target_identity(), "devices": entries,
                   "problems": problems, "problems-with-force": tracker.problems(force=True)},
                  sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print(_table(entries))
    print()
    if problems:
        print("Hibernation would be refused:")
        print("\n".join(f"  {p}" for p in problems))
    else:
        print("No device stands in the way of hibernation.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kjumpctl devices``."""
    parser = sub.add_parser("devices", help="show the devices a hibernation depends on and what kjumpd does with them",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--target", metavar="PATH",
                        help="the image target to check (default: [Image] Target= of the configuration)")
    parser.add_argument("--config", metavar="DIR", default=str(configmod.DEFAULT_DIR),
                        help="configuration directory (default: %(default)s)")
    parser.set_defaults(func=cmd_devices)
