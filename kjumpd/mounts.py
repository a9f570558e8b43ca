"""The mount table (``/proc/self/mountinfo``, proc(5)), parsed once for every part of kjumpd.

The machine layer picks the file systems to freeze from it, the daemon's
device tracker the file systems that sit on removable or unbound devices.

A mount carries two sets of options: the mount's own (``ro`` for a read-only
bind mount, as ``ProtectSystem=strict`` makes every mount in kjumpd's
namespace) and the superblock's (``ro`` only when the file system itself
cannot be written through any mount). Both are kept: "can this file system
change under us" is the superblock's question, "can we write here" the
mount's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import MachineError

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    """One line of a mountinfo file."""

    mount_point: str
    major: int
    minor: int
    fstype: str
    source: str
    mount_writable: bool    # the mount's own options say rw
    super_writable: bool    # the superblock's options say rw: some mount may write the file system

    @property
    def writable(self) -> bool:
        """Writable through this very mount (mount and superblock options both ``rw``)."""
        return self.mount_writable and self.super_writable

    @property
    def device(self) -> str:
        """``major:minor``, the same for every mount of one file system."""
        return f"{self.major}:{self.minor}"


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, where: str = MOUNTINFO) -> list[Mount]:
    """Parse mountinfo ``text``; MachineError naming ``where`` and the line number for a malformed line."""
    mounts = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            sep = fields.index("-", 6)
            major, minor = (int(n) for n in fields[2].split(":"))
            fstype, source, super_options = fields[sep + 1], fields[sep + 2], fields[sep + 3]
        except (ValueError, IndexError) as exc:
            raise MachineError(f"{where}:{number}: malformed mountinfo line {line!r}") from exc
        mounts.append(Mount(_unescape(fields[4]), major, minor, fstype, _unescape(source),
                            "rw" in fields[5].split(","), "rw" in super_options.split(",")))
    return mounts


def read_mountinfo(path: str = MOUNTINFO) -> list[Mount]:
    """Read and parse a mountinfo file; MachineError naming the file when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except OSError as exc:
        raise MachineError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_mountinfo(text, path)


def mount_of(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """The mount that holds ``path`` (an absolute path without symbolic links): the longest, latest mount point."""
    best: Mount | None = None
    for mount in mounts:
        prefix = mount.mount_point.rstrip("/") + "/"
        if path == mount.mount_point or path.startswith(prefix):
            if best is None or len(mount.mount_point) >= len(best.mount_point):
                best = mount
    return best
