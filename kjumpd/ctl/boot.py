"""``kjumpctl resume-check``: the early-boot resume hook (kernel C), see kjumpd.resumehook."""

from __future__ import annotations

import argparse

from .. import resumehook


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``resume-check``."""
    parser = sub.add_parser(
        "resume-check",
        help="resume a hibernated system if a valid image is found (early boot)",
        description="Look for a hibernation image of this machine; if one is valid, load the restore "
                    "kernel and jump. Exits 0 whenever the normal boot should continue.")
    resumehook.add_arguments(parser)
    parser.set_defaults(func=resumehook.run)
