"""Memory-like sample files for the image engine benchmark.

Real RAM is not uniform: large runs of zero pages (free memory), runs of
executable code and libraries (mapped binaries), runs of text (page cache of
sources, configuration, logs), incompressible runs (encrypted or already
compressed data) and pages filled with a short repeated pattern (arrays of
identical structures, poisoned or memset memory). A benchmark on random or
all-zero data says nothing about how the engine behaves on a real machine, so
this module builds a file with a chosen mix of those kinds of pages.

The content is deterministic for a given size, mix and seed on a given
machine: binary and text pages are read from files under /usr (chosen in a
seeded order), everything else comes from a seeded generator. Every run of
pages records where its content came from, so tests can check each page
against its declared kind.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

PAGE_SIZE = 4096

KINDS: tuple[str, ...] = ("zero", "binary", "text", "random", "pattern")
"""The kinds of pages, in the order they are reported."""

ACCEPTANCE_MIX: Mapping[str, float] = {
    "zero": 40, "binary": 25, "text": 15, "random": 10, "pattern": 10}
"""The mix the engine's acceptance targets are defined on (percent of pages)."""

MEAN_RUN_PAGES: Mapping[str, float] = {
    "zero": 64, "binary": 16, "text": 8, "random": 4, "pattern": 8}
"""Mean length of a run of pages of one kind: free memory comes in large
blocks, mapped files in medium ones, incompressible buffers in small ones."""

MAX_PATTERN_BYTES = 64
"""Longest repeated pattern: a pattern page has a period of at most this."""

MAX_BYTES_PER_FILE = 256 << 10
"""At most this much of one source file is used, so the binary and text pages
come from many different files, as in a real page cache."""

BINARY_DIRS: tuple[str, ...] = ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu")
"""Where ELF files are looked for (not recursively: these hold the binaries
and shared libraries a running system maps)."""

TEXT_DIRS: tuple[str, ...] = ("/usr/lib/python3.11", "/usr/share/perl", "/usr/share/perl5",
                              "/usr/include", "/usr/share/common-licenses")
"""Where text files are looked for (recursively)."""

TEXT_SUFFIXES: frozenset[str] = frozenset({".py", ".pm", ".pl", ".h", ""})
"""Suffixes of text files taken from TEXT_DIRS ("" admits the licence texts)."""

_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r\f\v"


def is_text(data: bytes) -> bool:
    """True when data is only printable ASCII and ordinary white space."""
    return not data.translate(None, _TEXT_BYTES)


def _is_elf(data: bytes) -> bool:
    return data.startswith(b"\x7fELF")


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a size such as "512M", "8MiB", "1G" or "65536" into bytes.

    Suffixes are binary (K = 1024). The size must be a positive whole number
    of pages, because memory is saved page by page.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 8M, 512MiB, 1G, 65536)")
    size = int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size {text!r} must be a positive multiple of {PAGE_SIZE} bytes")
    return size


def validate_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """Check a mix (percent of pages per kind) and return it with every kind.

    Kinds that are not given count as 0 %. The percentages must be in 0..100
    and add up to 100.
    """
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown page kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    full = {kind: float(mix.get(kind, 0)) for kind in KINDS}
    for kind, percent in full.items():
        if not 0 <= percent <= 100:
            raise ValueError(f"{kind} is {percent:g} %: each kind must be between 0 and 100 %")
    total = sum(full.values())
    if not math.isclose(total, 100, abs_tol=1e-9):
        raise ValueError(f"the mix adds up to {total:g} %, not 100 %: {describe_mix(full)}")
    return full


def describe_mix(mix: Mapping[str, float]) -> str:
    """One line such as "zero 40%, binary 25%, ..." for people."""
    return ", ".join(f"{kind} {mix[kind]:g}%" for kind in KINDS if kind in mix)


def page_counts(pages: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Split pages among the kinds as close to the mix as whole pages allow.

    Largest-remainder rounding: the counts add up to pages exactly and each
    differs from its exact share by less than one page.
    """
    exact = {kind: pages * mix[kind] / 100 for kind in KINDS}
    counts = {kind: math.floor(share) for kind, share in exact.items()}
    short = pages - sum(counts.values())
    by_remainder = sorted(KINDS, key=lambda kind: (counts[kind] - exact[kind], KINDS.index(kind)))
    for kind in by_remainder[:short]:
        counts[kind] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class Run:
    """A run of consecutive pages of one kind in the sample.

    sources: for binary and text runs, the (file, page index in that file)
    each page was copied from. pattern: for pattern runs, the bytes repeated
    to fill each page.
    """

    kind: str
    first_page: int
    count: int
    sources: tuple[tuple[str, int], ...] = ()
    pattern: bytes = b""


@dataclasses.dataclass(frozen=True)
class Sample:
    """A generated sample file and how it was made."""

    path: Path
    size: int
    seed: int
    mix: Mapping[str, float]
    runs: tuple[Run, ...]

    def counts(self) -> dict[str, int]:
        """Pages of each kind actually in the file."""
        counts = dict.fromkeys(KINDS, 0)
        for run in self.runs:
            counts[run.kind] += run.count
        return counts


class _PagePool:
    """An endless stream of the non-zero pages of some files.

    Files are visited in a seeded order and the stream starts again at the
    first file when all have been used, so any number of pages can be taken.
    All-zero pages are skipped (they would blur the mix: they count as zero
    pages, not as binary or text) and so is a partial last page.
    """

    def __init__(self, kind: str, where: tuple[str, ...], paths: list[str],
                 accept: Callable[[bytes], bool], rng: random.Random) -> None:
        self._kind = kind
        self._where = where
        self._paths = sorted(paths)
        rng.shuffle(self._paths)
        self._accept = accept
        self._pages = self._stream()

    def _file_pages(self, path: str) -> Iterator[tuple[str, int, bytes]]:
        try:
            with open(path, "rb") as source:
                data = source.read(MAX_BYTES_PER_FILE)
        except OSError:
            return
        if not self._accept(data):
            return
        zero = bytes(PAGE_SIZE)
        for index in range(len(data) // PAGE_SIZE):
            page = data[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]
            if page != zero:
                yield path, index, page

    def _stream(self) -> Iterator[tuple[str, int, bytes]]:
        while True:
            found = False
            for path in self._paths:
                for item in self._file_pages(path):
                    found = True
                    yield item
            if not found:
                raise RuntimeError(
                    f"no usable {self._kind} pages: none of {len(self._paths)} candidate files "
                    f"under {', '.join(self._where)} "
                    "could be read and accepted")

    def take(self, count: int) -> tuple[bytes, tuple[tuple[str, int], ...]]:
        """The next count pages and where each came from."""
        items = [next(self._pages) for _ in range(count)]
        return b"".join(page for _, _, page in items), tuple((p, i) for p, i, _ in items)


def _binary_candidates() -> list[str]:
    found = []
    for directory in BINARY_DIRS:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        found += [entry.path for entry in entries
                  if entry.is_file(follow_symlinks=False) and entry.stat().st_size >= PAGE_SIZE]
    return found


def _text_candidates() -> list[str]:
    found = []
    for directory in TEXT_DIRS:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in files:
                path = os.path.join(root, name)
                if os.path.splitext(name)[1] in TEXT_SUFFIXES and not os.path.islink(path):
                    found.append(path)
    return found


def _plan_runs(pages: int, mix: Mapping[str, float], rng: random.Random) -> list[tuple[str, int]]:
    """(kind, length) runs with the mix's page counts, in a seeded order."""
    runs = []
    for kind, count in page_counts(pages, mix).items():
        while count:
            length = min(count, 1 + int(rng.expovariate(1 / MEAN_RUN_PAGES[kind])))
            runs.append((kind, length))
            count -= length
    rng.shuffle(runs)
    return runs


def pattern_page(pattern: bytes) -> bytes:
    """A page filled with pattern repeated (the last copy cut at the page end)."""
    return (pattern * (PAGE_SIZE // len(pattern) + 1))[:PAGE_SIZE]


def generate(path: str | os.PathLike[str], size: int, mix: Mapping[str, float],
             seed: int) -> Sample:
    """Write a memory-like sample of size bytes to path and describe it.

    mix gives the percent of pages of each kind (see KINDS); seed makes the
    layout and the generated content reproducible.
    """
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"sample size {size} must be a positive multiple of {PAGE_SIZE}")
    mix = validate_mix(mix)
    rng = random.Random(seed)
    plan = _plan_runs(size // PAGE_SIZE, mix, rng)
    pools = {
        "binary": _PagePool("binary", BINARY_DIRS, _binary_candidates(), _is_elf, random.Random(seed + 1)),
        "text": _PagePool("text", TEXT_DIRS, _text_candidates(), is_text, random.Random(seed + 2)),
    }
    runs = []
    first = 0
    with open(path, "wb") as out:
        for kind, count in plan:
            sources: tuple[tuple[str, int], ...] = ()
            pattern = b""
            if kind == "zero":
                data = bytes(count * PAGE_SIZE)
            elif kind == "random":
                data = rng.randbytes(count * PAGE_SIZE)
            elif kind == "pattern":
                pattern = rng.randbytes(rng.randint(1, MAX_PATTERN_BYTES))
                if not any(pattern):
                    pattern = b"\x01" + pattern[1:]
                data = pattern_page(pattern) * count
            else:
                data, sources = pools[kind].take(count)
            out.write(data)
            runs.append(Run(kind, first, count, sources, pattern))
            first += count
    return Sample(Path(path), size, seed, mix, tuple(runs))
