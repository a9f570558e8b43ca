"""``kjumpctl image``: write, verify, restore, inspect, discard and wipe hibernation images by hand.

These work on files as well as devices, so an image can be examined on
another machine, and the engine can be exercised without a jump. A device
(or existing file) must be a kjumpd target (``kjumpctl target init``); a new
file is created as one.
Exit codes: 0 success, 1 image invalid or corrupt, or bad input (one line on
stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import image
from ..errors import FormatError, ImageError
from ..format import Compression, Handoff, Identity, State
from ..memmap import MemoryMap, Range, layout_fingerprint, parse_iomem, parse_ranges
from ..physmem import DevMem, FileMemory, PhysicalMemory
from ..target import ImageTarget, TargetExistsError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class ProgressBar:
    """A one-line progress bar on a terminal; silent when the stream is not a terminal."""

    def __init__(self, stream=sys.stderr, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._started = time.monotonic()

    def __call__(self, done: int, total: int, phase: str) -> None:
        """Redraw at most ten times a second, and always at 100%."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        rate = done / max(now - self._started, 1e-6) / (1 << 20)
        self.stream.write(f"\r{phase:>8} [{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} "
                          f"{done >> 20}/{total >> 20} MiB {rate:7.0f} MiB/s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def host_identity(ram: list[Range]) -> Identity:
    """This host's identity with the layout of ``ram`` (images written by hand)."""
    def read_hex(path: str) -> bytes:
        try:
            with open(path, encoding="ascii") as handle:
                return uuid.UUID(handle.read().strip()).bytes
        except (OSError, ValueError):
            return bytes(16)

    return Identity(boot_id=read_hex("/proc/sys/kernel/random/boot_id"),
                    machine_id=read_hex("/etc/machine-id"), kernel_release=platform.release(),
                    layout_fingerprint=layout_fingerprint(ram))


def load_map(spec: str) -> list[Range]:
    """``--map``: a file in /proc/iomem format, or ranges ``START-END,...``; FormatError when bad."""
    if not os.path.exists(spec):
        return parse_ranges(spec)
    try:
        with open(spec, encoding="ascii") as handle:
            text = handle.read()
    except OSError as exc:
        raise FormatError(f"cannot read the memory map {spec}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FormatError(f"the memory map {spec} is not text in /proc/iomem format") from None
    try:
        return parse_iomem(text)
    except FormatError as exc:
        raise FormatError(f"the memory map {spec}: {exc}") from None


def _fail(message: str) -> int:
    print(f"kjumpctl: {message}", file=sys.stderr)
    return EXIT_INVALID


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn image, format and operating-system errors into exit code 1 with one line on stderr."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ImageError, FormatError) as exc:
            return _fail(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return _fail(f"{where}{exc.strerror or exc}")
    return run


@contextmanager
def _new_file(path: str) -> Iterator[bool]:
    """Create ``path`` (mode 0600, never through a symbolic link) unless it exists; yields whether it did.

    A file created here is removed again when the block fails: a refused
    command leaves nothing behind.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise ImageError(f"cannot create {path}: {exc.strerror}") from None
    if not created:
        yield False
        return
    try:
        yield True
    except BaseException:
        os.unlink(path)
        raise


def _open_source(path: str, ram: list[Range] | None) -> tuple[PhysicalMemory, list[Range]]:
    if os.path.realpath(path) == "/dev/mem":
        if ram is None:
            raise ImageError("saving /dev/mem needs --map (for example --map /proc/iomem)")
        return DevMem(path), ram
    memory = FileMemory(path)
    if ram is None:
        ram = [Range(0, memory.size)]
    return memory, ram


def _open_image(path: str, offset: int, size: int) -> tuple[ImageTarget, bool]:
    """An existing target at ``path`` (it must be kjumpd's), or a new image file of ``size`` bytes.

    Returns the target and whether it was created. Creating is tried first
    (``O_EXCL``), so nothing can slip in between a look and the create.
    """
    if offset == 0:
        try:
            return ImageTarget.create(path, size), True
        except TargetExistsError:
            pass
    return ImageTarget.open(path, offset=offset), False


@_guarded
def cmd_write(args: argparse.Namespace) -> int:
    """kjumpctl image write SOURCE IMAGE."""
    ram = load_map(args.map) if args.map else None
    source, ram = _open_source(args.source, ram)
    with source:
        memmap = MemoryMap.from_ranges(ram)
        handoff = Handoff(host_identity(ram), args.restart_point, Compression.parse(args.compress), 0, 0, 0, 0,
                          memmap, created_ns=time.time_ns())
        target, created = _open_image(args.image, args.offset, image.required_capacity(memmap))
        try:
            with target:
                sb = image.save(source, target, handoff, progress=ProgressBar())
        except BaseException:
            if created:
                os.unlink(args.image)
            raise
    print(f"{args.image}: saved {sb.pages_total * 4096 >> 20} MiB of memory "
          f"({sb.pages_zero} zero pages) as a {sb.image_bytes >> 20} MiB {sb.compression.label} image "
          f"in {sb.save_duration_ns / 1e9:.2f} s")
    return EXIT_OK


@_guarded
def cmd_verify(args: argparse.Namespace) -> int:
    """kjumpctl image verify IMAGE."""
    with ImageTarget.open(args.image, offset=args.offset, writable=False) as target:
        sb = image.verify(target, deep=args.deep, progress=ProgressBar())
    print(f"{args.image}: valid image of {sb.pages_total * 4096 >> 20} MiB in {sb.chunk_count} chunks "
          f"({sb.compression.label}), restart point {sb.restart_point}")
    return EXIT_OK


@_guarded
def cmd_restore(args: argparse.Namespace) -> int:
    """kjumpctl image restore IMAGE DEST: write the image's pages into DEST, checking each chunk first.

    A missing DEST is created with mode 0600 (it will hold RAM), never
    through a symbolic link, written in one pass over the image, and removed
    again if the restore is refused or a chunk turns out damaged. An existing
    DEST is written only after the whole image was verified (``verify
    --deep``), so a damaged image never leaves it half-written.
    """
    expect_ram = load_map(args.map) if args.map else None
    with ImageTarget.open(args.image, offset=args.offset) as target, _new_file(args.dest) as created:
        if created:
            image.check_headers(target)
            handoff, _ = image.read_handoff(target)
            os.truncate(args.dest, max((r.end for r in handoff.memmap.ranges()), default=0))
        else:
            image.verify(target, deep=True, progress=ProgressBar())
        expect = None
        if expect_ram is not None:
            sb = image.read_superblock(target)
            expect = Identity(sb.identity.boot_id, sb.identity.machine_id, sb.identity.kernel_release,
                              layout_fingerprint(expect_ram), sb.identity.machine_fingerprint)
        with FileMemory(args.dest, writable=True) as dest:
            sb = image.restore(target, dest, progress=ProgressBar(), expect=expect)
    print(f"{args.dest}: restored {sb.pages_total * 4096 >> 20} MiB from {args.image} "
          f"in {sb.restore_duration_ns / 1e9:.2f} s; the image is now marked consumed")
    return EXIT_OK


def _human(info: dict[str, object]) -> str:
    lines = [f"{'Target':>16}: {info['target']} (offset {info['offset']}, capacity {info['capacity']} bytes)",
             f"{'Target UUID':>16}: {info['target_uuid']}",
             f"{'State':>16}: {info['state']}"]
    if "problem" in info:
        lines.append(f"{'Problem':>16}: {info['problem']}")
    if info["state"] in ("INVALID", "EMPTY"):
        return "\n".join(lines)

    def when(ns: object) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ns) / 1e9)) if ns else "-"

    rows = [
        ("Restart point", info["restart_point"]), ("Kernel", info["kernel_release"] or "-"),
        ("Boot ID", info["boot_id"]), ("Memory", f"{int(info['memory_bytes']) >> 20} MiB, "
                                                f"{info['pages_zero']} of {info['pages_total']} pages zero"),
        ("Image", f"{int(info['image_bytes']) >> 20} MiB in {info['chunks']} chunks, {info['compression']}"),
        ("Encrypted", f"yes, sealed to key {info['key_id']}" if info.get("encrypted") else "no"),
        ("Jump-back entry", f"{int(info['jump_back_entry']):#x}"),
        ("B region", "{:#x}+{:#x}".format(*info["region"])),
        ("Written", f"{when(info['saved_ns'])} in {info['save_seconds']:.2f} s"),
        ("Restored", f"{when(info['restored_ns'])}" if info["restored_ns"] else "-"),
        ("Wiped", when(info["wiped_ns"])),
    ]
    if info.get("reason"):
        rows.append(("Reason", info["reason"]))
    lines += [f"{k:>16}: {v}" for k, v in rows]
    return "\n".join(lines)


@_guarded
def cmd_inspect(args: argparse.Namespace) -> int:
    """kjumpctl image inspect IMAGE [--json]: exit 1 when the image is not valid."""
    with ImageTarget.open(args.image, offset=args.offset, writable=False) as target:
        info = image.describe(target)
    print(json.dumps(info, indent=2) if args.json else _human(info))
    return EXIT_INVALID if info["state"] == "INVALID" or "problem" in info else EXIT_OK


@_guarded
def cmd_wipe(args: argparse.Namespace) -> int:
    """kjumpctl image wipe IMAGE: overwrite what a consumed image left (its chunk stream holds RAM)."""
    with ImageTarget.open(args.image, offset=args.offset) as target:
        sb = image.wipe(target, progress=ProgressBar())
    print(f"{args.image}: overwrote what the last image wrote ({sb.image_bytes >> 20} MiB); "
          f"state {sb.state.name}")
    return EXIT_OK


# What ``image discard`` makes unusable: anything a boot could still resume or
# that a save or restore left half done; EMPTY and consumed images stay as they are.
DISCARDABLE = (State.SAVING, *image.RESUMABLE, State.RESTORING)


@_guarded
def cmd_discard(args: argparse.Namespace) -> int:
    """kjumpctl image discard IMAGE: make the image unusable so that no boot resumes it."""
    with ImageTarget.open(args.image, offset=args.offset) as target:
        before = image.read_superblock(target).state
        if before not in DISCARDABLE:
            print(f"{args.image}: nothing to discard (state {before.name})")
            return EXIT_OK
        reason = "discarded by the administrator (kjumpctl image discard)"
        image.discard(target, f"{reason}: {args.reason}" if args.reason else reason)
    print(f"{args.image}: discarded the {before.name} image; no boot will resume it")
    return EXIT_OK


def offset_argument(text: str) -> int:
    """``--offset``: a byte offset, a non-negative multiple of 4096 (decimal or 0x…)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0 or value % 4096:
        raise argparse.ArgumentTypeError(f"{value} is not a non-negative multiple of 4096")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kjumpctl image …``."""
    parser = sub.add_parser("image", help="write, verify, restore, inspect, discard or wipe a hibernation image",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    w = add("write", cmd_write, "save memory from SOURCE (a file, or /dev/mem with --map) into IMAGE")
    w.add_argument("source", metavar="SOURCE")
    w.add_argument("image", metavar="IMAGE")
    w.add_argument("--map", metavar="MAP",
                   help="the RAM to save: a file in /proc/iomem format, or START-END[,START-END…]; "
                        "default for a plain file: the whole file, as memory from address 0")
    w.add_argument("--compress", default="lz4", choices=("lz4", "zstd", "none"))
    w.add_argument("--restart-point", default="resume",
                   choices=("resume", "suspend", "platform", "shutdown", "reboot"))
    v = add("verify", cmd_verify, "check every record and chunk of IMAGE; exit 1 with the reason if invalid")
    v.add_argument("image", metavar="IMAGE")
    v.add_argument("--deep", action="store_true",
                   help="also decompress every chunk and check the pages (what a restore checks of each chunk "
                        "before writing it)")
    r = add("restore", cmd_restore, "write the pages of IMAGE into DEST (a memory file), checking each chunk first; "
                                    "an existing DEST is written only after the whole image was verified")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("dest", metavar="DEST")
    r.add_argument("--map", metavar="MAP", help="refuse unless the image was written for this RAM layout")
    i = add("inspect", cmd_inspect, "show what IMAGE holds")
    i.add_argument("image", metavar="IMAGE")
    i.add_argument("--json", action="store_true", help="print JSON")
    x = add("wipe", cmd_wipe, "overwrite with zeros what a restored or discarded image left on IMAGE")
    x.add_argument("image", metavar="IMAGE")
    d = add("discard", cmd_discard, "make the image on IMAGE unusable (DISCARDED) so that no boot resumes it")
    d.add_argument("image", metavar="IMAGE")
    d.add_argument("--reason", default="", help="recorded in the superblock with the discard")
    for p in (w, v, r, i, x, d):
        p.add_argument("--offset", type=offset_argument, default=0,
                       help="byte offset of the image in IMAGE, a multiple of 4096 (default 0)")
