"""kjumpctl: control and inspect kjumpd, in the manner of loginctl.

Each group of subcommands lives in its own module with a ``register(sub)``
function that adds its parsers; every parser sets ``func`` to a callable that
takes the parsed arguments and returns the exit code.

Exit codes (documented in docs/kjumpctl.md):
  0  success
  1  the operation failed, or the image is invalid or corrupt (reason on stderr)
  2  usage error
  3  not available (kjumpd not running, hibernation not possible here)
  4  access denied
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import KjumpError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4

# Subcommand groups. A group whose third-party library is missing is left out:
# the early-boot initramfs carries only what `resume-check` needs (no gi, no
# pyudev), and `kjumpctl resume-check` must still run there.
GROUPS = ("bus", "image", "target", "devices", "boot", "key")


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every available subcommand group."""
    parser = argparse.ArgumentParser(
        prog="kjumpctl",
        description="Control kjumpd, the kexec-jump hibernation daemon, and work with hibernation images.",
    )
    parser.add_argument("--version", action="version", version=f"kjumpctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "kjumpd":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kjumpctl``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KjumpError as exc:
        print(f"kjumpctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
