"""RAM layouts and the memory map: which physical pages B must save.

The layout comes from ``/sys/firmware/memmap`` (the firmware's map, complete
even when the kernel was started with ``mem=`` or ``memmap=``) or, failing
that, ``/proc/iomem`` (what the running kernel uses). Both readers take a root
directory or text so tests feed recorded layouts.

The *save map* is all of A's System RAM minus the B region and B's low
memory, in whole pages. Its binary encodings (extents or bitmap, whichever is
smaller) are in :mod:`kjumpd.format`.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .errors import FormatError

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# B's low memory: inside the first MiB that A's kernel keeps reserved (Linux
# >= 5.13), clear of A's real-mode trampoline (docs/machine.md, "kexec.py: every kexec call").
DEFAULT_LOW = (0x10000, 256 << 10)


@dataclass(frozen=True, order=True)
class Range:
    """A half-open physical address range ``[start, end)`` in bytes."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid range {self.start:#x}-{self.end:#x}")

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.end - 1:#x}"


@dataclass(frozen=True)
class Extent:
    """A run of pages: ``count`` pages from page frame ``start``."""

    start: int
    count: int


_IOMEM_LINE = re.compile(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.+?)\s*$")


def parse_iomem(text: str) -> list[Range]:
    """Return the top-level ``System RAM`` ranges of a ``/proc/iomem`` text.

    Nested entries (kernel code, crash kernel, ...) lie inside System RAM and
    do not change it; only unindented lines count.
    """
    ranges = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _IOMEM_LINE.match(line)
        if not match:
            raise FormatError(f"iomem line {lineno} is not 'START-END : NAME': {line!r}")
        indent, start, end, name = match.groups()
        if int(end, 16) < int(start, 16):
            raise FormatError(f"iomem line {lineno} ends before it starts: {line!r}")
        if indent == "" and name == "System RAM":
            ranges.append(Range(int(start, 16), int(end, 16) + 1))
    return normalise(ranges)


def parse_firmware_memmap(root: str) -> list[Range]:
    """Return the usable RAM of ``/sys/firmware/memmap`` under ``root``.

    Each entry is a directory with ``start``, ``end`` (inclusive) and ``type``
    files; type ``System RAM`` is usable.
    """
    base = os.path.join(root, "sys/firmware/memmap")

    def field(path: str, name: str) -> str:
        with open(os.path.join(path, name), encoding="ascii") as handle:
            return handle.read().strip()

    ranges = []
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if field(path, "type") == "System RAM":
            try:
                ranges.append(Range(int(field(path, "start"), 16), int(field(path, "end"), 16) + 1))
            except ValueError:
                raise FormatError(f"firmware memory map entry {path} is not a valid range") from None
    return normalise(ranges)


def read_system_ram(root: str = "/") -> list[Range]:
    """Read this machine's System RAM: firmware memmap first, else ``/proc/iomem``."""
    if os.path.isdir(os.path.join(root, "sys/firmware/memmap")):
        ranges = parse_firmware_memmap(root)
        if ranges:
            return ranges
    with open(os.path.join(root, "proc/iomem"), encoding="ascii") as handle:
        text = handle.read()
    ranges = parse_iomem(text)
    if not ranges:
        raise FormatError("no System RAM in /proc/iomem (are addresses hidden? read it as root)")
    return ranges


def normalise(ranges: Iterable[Range]) -> list[Range]:
    """Sort ranges and merge the ones that touch or overlap."""
    merged: list[Range] = []
    for r in sorted(x for x in ranges if x.size):
        if merged and r.start <= merged[-1].end:
            merged[-1] = Range(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged


def subtract(ranges: Sequence[Range], holes: Iterable[Range]) -> list[Range]:
    """Return ``ranges`` without any byte of ``holes``."""
    result = list(normalise(ranges))
    for hole in holes:
        out = []
        for r in result:
            if hole.end <= r.start or hole.start >= r.end:
                out.append(r)
                continue
            if r.start < hole.start:
                out.append(Range(r.start, hole.start))
            if hole.end < r.end:
                out.append(Range(hole.end, r.end))
        result = out
    return result


def choose_region(ram: Sequence[Range], size: int) -> Range:
    """Place the B region at the top of RAM: the last ``size`` bytes (MiB-aligned)
    of the highest RAM range that holds them.

    The region must lie in one contiguous RAM range and may not exceed half of
    all RAM (the kernel needs that much free memory to swap it out at the jump).
    UEFI firmware leaves only a few MiB of RAM between its reserved and ACPI
    areas at the top of low memory, so the highest range may be too small:
    the region then goes below it.
    """
    if size <= 0 or size % (1 << 20):
        raise ValueError("the B region size must be a positive multiple of 1 MiB")
    total = sum(r.size for r in ram)
    if size > total // 2:
        raise FormatError(
            f"B region of {size >> 20} MiB exceeds half of RAM ({total >> 20} MiB): "
            "the kernel could not swap it out at the jump")
    for candidate in sorted(ram, key=lambda r: r.end, reverse=True):
        end = candidate.end & ~((1 << 20) - 1)
        if end - size >= candidate.start:
            return Range(end - size, end)
    raise FormatError(f"no RAM range holds a contiguous {size >> 20} MiB B region")


def page_align_inward(r: Range) -> Range | None:
    """Shrink a byte range to the whole pages inside it; None when none is left."""
    start = (r.start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    end = r.end & ~(PAGE_SIZE - 1)
    return Range(start, end) if end > start else None


class MemoryMap:
    """A set of physical pages, kept as sorted, disjoint, non-adjacent extents."""

    def __init__(self, extents: Iterable[Extent] = ()) -> None:
        merged: list[Extent] = []
        for ext in sorted((e for e in extents if e.count > 0), key=lambda e: e.start):
            if ext.start < 0:
                raise ValueError("negative page frame number")
            if merged and ext.start <= merged[-1].start + merged[-1].count:
                last = merged[-1]
                end = max(last.start + last.count, ext.start + ext.count)
                merged[-1] = Extent(last.start, end - last.start)
            else:
                merged.append(ext)
        self.extents: tuple[Extent, ...] = tuple(merged)
        # map page number of each extent's first page, for runs() to find a chunk's extent by bisection
        self._firsts = list(itertools.accumulate((e.count for e in merged[:-1]), initial=0))
        self._total = self._firsts[-1] + merged[-1].count if merged else 0

    @classmethod
    def from_ranges(cls, ranges: Iterable[Range]) -> MemoryMap:
        """Build a map of the whole pages inside byte ranges."""
        extents = []
        for r in ranges:
            aligned = page_align_inward(r)
            if aligned:
                extents.append(Extent(aligned.start >> PAGE_SHIFT, aligned.size >> PAGE_SHIFT))
        return cls(extents)

    @property
    def total_pages(self) -> int:
        """Number of pages in the map."""
        return self._total

    @property
    def total_bytes(self) -> int:
        """Number of bytes the map covers."""
        return self.total_pages * PAGE_SIZE

    def ranges(self) -> list[Range]:
        """The map as byte ranges."""
        return [Range(e.start << PAGE_SHIFT, (e.start + e.count) << PAGE_SHIFT) for e in self.extents]

    def runs(self, first: int, count: int) -> Iterator[tuple[int, int, int]]:
        """Yield ``(physical address, offset in pages from first, pages)`` for ``count`` map pages from index ``first``.

        The map's pages are numbered 0..total_pages-1 in address order; a chunk
        of the image covers consecutive numbers, which may span several extents.
        """
        end = first + count
        index = max(0, bisect.bisect_right(self._firsts, first) - 1)
        for i in range(index, len(self.extents)):
            ext, position = self.extents[i], self._firsts[i]
            ext_end = position + ext.count
            lo, hi = max(first, position), min(end, ext_end)
            if lo < hi:
                yield ((ext.start + lo - position) << PAGE_SHIFT, lo - first, hi - lo)
            if ext_end >= end:
                return

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemoryMap) and self.extents == other.extents

    def __repr__(self) -> str:
        return f"MemoryMap({len(self.extents)} extents, {self.total_pages} pages)"


def save_map(ram: Sequence[Range], region: Range, low: Range | None = None) -> MemoryMap:
    """The safe default: all System RAM minus the B region and B's low memory."""
    if low is None:
        low = Range(DEFAULT_LOW[0], DEFAULT_LOW[0] + DEFAULT_LOW[1])
    return MemoryMap.from_ranges(subtract(ram, [region, low]))


def layout_fingerprint(ram: Sequence[Range]) -> bytes:
    """A 32-byte fingerprint of a RAM layout; equal layouts give equal prints."""
    text = ";".join(f"{r.start:x}-{r.end:x}" for r in normalise(ram))
    return hashlib.sha256(b"kjumpd-layout-v1:" + text.encode()).digest()


def parse_ranges(text: str) -> list[Range]:
    """Parse ``START-END[,START-END...]`` (hex or decimal, END inclusive) as on the command line."""
    ranges = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            start, end = item.split("-", 1)
            ranges.append(Range(int(start, 0), int(end, 0) + 1))
        except ValueError as exc:
            raise FormatError(f"bad range {item!r}: expected START-END, e.g. 0x100000-0x3fffffff") from exc
    return normalise(ranges)
