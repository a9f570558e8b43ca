"""``make fuzz``: coverage-guided fuzzing of everything kjumpd parses from a disk or a command line.

Engine: atheris (libFuzzer for Python; ``pip install atheris``), with
structure-aware mutators that re-seal checksums so the inputs get past them.
Targets:

``records``  every record parser of kjumpd/format.py (memory map, handoff,
             superblock, chunk header, trailer, the bitmap run decoder).
             Only FormatError may come out; whatever parses must pack again
             and parse back equal.
``cmdline``  the kernel command line parser of kjumpd/kexec.py and the
             ``kjump.*`` reader: a kernel parses every command line, so
             nothing may come out but MachineError from the reader.
``iomem``    /proc/iomem and ``START-END,…`` parsers of kjumpd/memmap.py and
             the memory map built from their result.
``image``    whole images (superblock, handoff, chunk stream, trailer)
             through ``kjumpctl resume-check --dry-run`` (C), ``kjumpctl image
             verify --deep`` and ``kjumpctl image restore``, in process. They
             must exit with a documented code and no traceback; a refused
             restore leaves no destination; and unless the input is marked as
             a deliberate forgery (first byte non-zero: every checksum chain
             recomputed), a restore that succeeds must reproduce the saved
             memory exactly (no corrupted image accepted).

A crash is any other exception or a broken property. Each distinct crash
(exception type and place) keeps up to three inputs with their traceback, and
a count (a lower bound), in ``CRASHES/TARGET/``; libFuzzer's own findings (timeouts: a parser too slow;
out of memory) land there too. The summary gives the inputs tried per target.

Usage::

    fuzz.py [--runs N] [--image-runs N] [--seconds S] [--crashes DIR] [--corpus DIR] [TARGET ...]
    fuzz.py --worker TARGET CRASHES [libFuzzer options]      (what the first form runs per target)

Exit status: 0 no crash, 1 crashes found (listed), 2 usage or the engine failed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from collections.abc import Callable

TARGETS = ("records", "cmdline", "iomem", "image")
# The driver's scratch directory for a worker (on tmpfs where there is one: no disk flushes per
# input); the driver removes it, since libFuzzer ends the worker without Python's clean-up.
WORKDIR_VARIABLE = "KJUMPD_FUZZ_WORKDIR"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KEEP_PER_BUCKET = 3


class Broken(Exception):
    """A property that must hold did not (a crash that raised nothing)."""


class Crashes:
    """Crash buckets under CRASHES/TARGET: the first inputs of each (exception type, place), and a count.

    The count file is rewritten at most once a second (libFuzzer ends the
    process without warning, so it may miss the last second's crashes: it is
    a lower bound; it is never 0 for a bucket that has an input).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        self.written = 0.0

    def record(self, data: bytes, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        place = next((f for f in reversed(frames) if "kjumpd" in f.filename), frames[-1] if frames else None)
        where = f"{Path(place.filename).name}:{place.lineno}" if place else "?"
        bucket = re.sub(r"[^A-Za-z0-9_.:-]", "_", f"{type(exc).__name__}@{where}")
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        if self.counts[bucket] == 1 or time.monotonic() - self.written > 1:
            for name, count in self.counts.items():
                (self.directory / f"{name}.count").write_text(str(count))
            self.written = time.monotonic()
        kept = sorted(self.directory.glob(f"{bucket}-*.input")) if self.counts[bucket] <= KEEP_PER_BUCKET else ()
        if self.counts[bucket] <= KEEP_PER_BUCKET and len(kept) < KEEP_PER_BUCKET:
            name = f"{bucket}-{hashlib.sha1(data).hexdigest()[:12]}"
            (self.directory / f"{name}.input").write_bytes(data)
            (self.directory / f"{name}.txt").write_text(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


# --- checksum re-sealing (what a forger would do) ------------------------------------

def reseal(record: bytearray, start: int, magic_len: int, struct_size: int, xxh: Callable[[bytes], int]) -> None:
    """Recompute the checksum of the record at ``start`` in place, if its length field fits."""
    if len(record) < start + struct_size:
        return
    length = struct.unpack_from("<I", record, start + magic_len + 4)[0]
    if not struct_size <= length <= len(record) - start:
        return
    record[start + struct_size - 8:start + struct_size] = bytes(8)
    checksum = xxh(bytes(record[start:start + length]))
    record[start + struct_size - 8:start + struct_size] = struct.pack("<Q", checksum)


# --- targets ------------------------------------------------------------------------------

def records_target() -> tuple[Callable[[bytes], None], Callable[[bytes, int, int], bytes] | None, list[bytes]]:
    """Record parsers: the first byte selects the parser, the rest is the record."""
    from kjumpd import format as F
    from kjumpd.errors import FormatError
    from kjumpd.memmap import Extent, MemoryMap

    kinds = [F.MemoryMapRecord, F.HandoffRecord, F.SuperblockRecord, F.ChunkRecord, F.TrailerRecord]

    def check(data: bytes) -> None:
        if not data:
            return
        selector, body = data[0] % 6, data[1:]
        try:
            if selector == 0:
                memmap, _ = F.MemoryMapRecord.decode(body)
                again, _ = F.MemoryMapRecord.decode(F.MemoryMapRecord.encode(memmap))
                if again != memmap:
                    raise Broken("memory map does not survive encode/decode")
            elif selector == 1:
                handoff = F.Handoff.unpack(body)
                if F.Handoff.unpack(handoff.pack()) != handoff:
                    raise Broken("handoff does not survive pack/unpack")
            elif selector == 2:
                sb = F.Superblock.unpack(body)
                back = F.Superblock.unpack(sb.pack())
                if back != sb.evolve(reason=back.reason) or not sb.reason.startswith(back.reason):
                    raise Broken("superblock does not survive pack/unpack")
            elif selector == 3:
                header = F.ChunkHeader.unpack(body)
                if F.ChunkHeader.unpack(header.pack()) != header:
                    raise Broken("chunk header does not survive pack/unpack")
                if sum(n for _, n in header.zero_runs()) != header.zero_pages:
                    raise Broken("zero runs disagree with the zero page count")
            elif selector == 4:
                trailer = F.Trailer.unpack(body)
                if F.Trailer.unpack(trailer.pack()) != trailer:
                    raise Broken("trailer does not survive pack/unpack")
            else:
                count = int.from_bytes(body[:3], "little") % (8 * max(1, len(body) - 3) + 9)
                runs = F.set_bit_runs(body[3:], count, "fuzz", 1 << 20)
                value = int.from_bytes(body[3:], "little")
                if sum(n for _, n in runs) != value.bit_count():
                    raise Broken("bit runs do not add up to the bits set")
        except FormatError:
            pass

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        import atheris
        rnd = random.Random(seed)
        selector = data[0] if data else rnd.randrange(6)
        body = bytearray(atheris.Mutate(bytes(data[1:]), max_size - 1) if rnd.random() < 0.8 else data[1:])
        kind = kinds[selector % 6] if selector % 6 < 5 else None
        if kind is not None and rnd.random() < 0.7:
            if kind is F.HandoffRecord:      # the memory map inside first
                reseal(body, F.HandoffRecord.STRUCT.size, 4, F.MemoryMapRecord.STRUCT.size, F.checksum)
            reseal(body, 0, len(kind.MAGIC), kind.STRUCT.size, F.checksum)
        return bytes([selector]) + bytes(body)

    dense = MemoryMap(Extent(p, 1) for p in range(0, 600, 2))
    sparse = MemoryMap([Extent(0x100, 1 << 20), Extent(1 << 30, 77)])
    identity = F.Identity(b"b" * 16, b"m" * 16, "6.12.0", b"l" * 32, b"f" * 32)
    seeds = [
        b"\0" + F.MemoryMapRecord.encode(dense), b"\0" + F.MemoryMapRecord.encode(sparse),
        b"\1" + F.Handoff(identity, "shutdown", F.Compression.LZ4, 1 << 30, 1 << 28, 0x10000, 0x40000,
                          dense, 5, 6, "by-partuuid/x").pack(),
        b"\2" + F.Superblock(F.State.SAVED, identity, 7, "reboot", F.RESULT_OK, F.Compression.ZSTD, 256,
                             chunk_count=4, reason="why", target_uuid=b"u" * 16).pack(),
        b"\3" + F.ChunkHeader(3, 768, 13, 11 * 4096, 9000, 1, 2, bytes([0x81, 0x04])).pack(),
        b"\4" + F.Trailer(4, 1000, 10, 4 << 20, 99).pack(),
        b"\5" + b"\x10\x00\x00" + bytes([0x55, 0xF0, 0x0F, 0xFF]),
    ]
    return check, mutate, seeds


def cmdline_target() -> tuple[Callable[[bytes], None], None, list[bytes]]:
    """The kernel command line parser and the kjump.* reader."""
    from kjumpd import kexec
    from kjumpd.errors import MachineError

    def check(data: bytes) -> None:
        params = kexec.parse_command_line(data.decode("utf-8", "surrogateescape"))
        try:
            kexec.hibernate_kernel_args(params)
        except MachineError:
            pass

    seeds = [b'BOOT_IMAGE=/vmlinuz root=UUID=1 ro quiet kjump.resume=/dev/vdb console=ttyS0,115200',
             b'kjump.role=save kjump.target=/dev/sda2 kjump.offset=0x100000 kjump.region=0x1000-0x1fff '
             b'kexec_jump_back_entry=0x1000fb',
             b'dyndbg="file kexec.c +p" foo=it\'s "quoted=a b" kjump.noresume']
    return check, None, seeds


def iomem_target() -> tuple[Callable[[bytes], None], None, list[bytes]]:
    """/proc/iomem and ranges parsers, and the memory map built from them."""
    from kjumpd import format as F
    from kjumpd.errors import FormatError
    from kjumpd.memmap import MemoryMap, layout_fingerprint, parse_iomem, parse_ranges

    def check(data: bytes) -> None:
        text = data.decode("latin-1")
        for parse in (parse_iomem, parse_ranges):
            try:
                ranges = parse(text)
            except FormatError:
                continue
            layout_fingerprint(ranges)
            memmap = MemoryMap.from_ranges(ranges)
            try:
                encoded = F.MemoryMapRecord.encode(memmap)
            except FormatError:
                continue
            if F.MemoryMapRecord.decode(encoded)[0] != memmap:
                raise Broken("a parsed layout's memory map does not survive encode/decode")

    seeds = [b"00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n  01000000-01bfffff : Kernel code\n"
             b"00100000-3ffdffff : System RAM\n",
             b"0x100000-0x3fffffff,0x100000000-0x13fffffff", b"4096-8191"]
    return check, None, seeds


class _ImageWorld:
    """A simulated machine, its RAM, and valid images of it: what the image target mutates."""

    PAGES = [(0x100, 20), (0x180, 12), (0x200, 16)]

    def __init__(self) -> None:
        from kjumpd import image
        from kjumpd.format import DATA_OFFSET, SUPERBLOCK_SIZE, Compression, Handoff
        from kjumpd.machine.simulated import SimulatedMachine
        from kjumpd.memmap import PAGE_SIZE, Extent, MemoryMap
        from kjumpd.physmem import FileMemory
        from kjumpd.target import ImageTarget

        self.tmp = Path(tempfile.mkdtemp(prefix="image-", dir=os.environ.get(WORKDIR_VARIABLE)))
        self.machine = SimulatedMachine.create(str(self.tmp / "machine"), ram_size=16 << 20)
        self.memmap = MemoryMap(Extent(start, count) for start, count in self.PAGES)
        rnd = random.Random(1)
        with FileMemory(str(Path(self.machine.path) / "ram"), writable=True) as ram:
            for start, count in self.PAGES:
                for pfn in range(start, start + count):
                    kind = pfn % 4
                    page = (bytes(PAGE_SIZE) if kind == 0 else rnd.randbytes(PAGE_SIZE) if kind == 1
                            else bytes([pfn % 256]) * PAGE_SIZE)
                    ram.write(pfn * PAGE_SIZE, page)
            self.expected = {pfn: ram.read(pfn * PAGE_SIZE, PAGE_SIZE)
                             for start, count in self.PAGES for pfn in range(start, start + count)}
        self.image = str(self.tmp / "image")
        self.dest = str(self.tmp / "dest")
        self.seeds = []
        for compression, chunk in ((Compression.LZ4, 16), (Compression.ZSTD, 8), (Compression.NONE, 16)):
            path = self.tmp / f"seed-{compression.label}"
            handoff = Handoff(self.machine.identity(), "shutdown", compression, 1 << 30, 1 << 20, 0x10000,
                              0x40000, self.memmap)
            with ImageTarget.create(str(path), image.required_capacity(self.memmap, chunk)) as target, \
                    FileMemory(str(Path(self.machine.path) / "ram")) as ram:
                sb = image.save(ram, target, handoff, jump_back_entry=0x2000FB, chunk_pages=chunk)
            data = path.read_bytes()
            tail = data[DATA_OFFSET:DATA_OFFSET + sb.stream_bytes + 4096]
            self.seeds.append(b"\0" + data[:2 * SUPERBLOCK_SIZE] + tail)
            path.unlink()

    def write(self, body: bytes) -> None:
        """The input as an image file: superblock, handoff block, then the stream at 4 MiB."""
        from kjumpd.format import DATA_OFFSET
        fd = os.open(self.image, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.pwrite(fd, body[:8192], 0)
            os.pwrite(fd, body[8192:], DATA_OFFSET)
            os.ftruncate(fd, DATA_OFFSET + max(0, len(body) - 8192) + 65536)
        finally:
            os.close(fd)

    def restored_exactly(self) -> bool:
        from kjumpd.memmap import PAGE_SIZE
        with open(self.dest, "rb") as handle:
            for pfn, page in self.expected.items():
                handle.seek(pfn * PAGE_SIZE)
                if handle.read(PAGE_SIZE) != page:
                    return False
        return True


def image_target() -> tuple[Callable[[bytes], None], Callable[[bytes, int, int], bytes], list[bytes]]:
    """Whole images through the resume check, verify --deep and restore."""
    from kjumpd import ctl
    from kjumpd import format as F

    # main() builds its parser on each call; built once here (it keeps no state between parses)
    ctl.build_parser = functools.cache(ctl.build_parser)
    kjumpctl = ctl.main
    world = _ImageWorld()

    def run(*argv: str) -> int:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = kjumpctl(list(argv))
            except SystemExit as exc:          # argparse
                code = exc.code if isinstance(exc.code, int) else 2
        if "Traceback" in out.getvalue() + err.getvalue():
            raise Broken(f"kjumpctl {' '.join(argv[:2])} printed a traceback")
        return code

    def check(data: bytes) -> None:
        if len(data) < 1 + 8192:
            return
        forged, body = data[0] != 0, data[1:]
        world.write(body)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(world.dest)
        code = run("resume-check", "--dry-run", "--target", world.image,
                   "--cmdline", f"kjump.machine=simulated:{world.machine.path}")
        if code != 0:
            raise Broken(f"resume-check exited {code}: it must always let the boot continue")
        verified = run("image", "verify", "--deep", world.image)
        if verified not in (0, 1):
            raise Broken(f"image verify exited {verified}")
        restored = run("image", "restore", world.image, world.dest)
        if restored not in (0, 1):
            raise Broken(f"image restore exited {restored}")
        if restored == 1 and os.path.exists(world.dest):
            raise Broken("a refused restore left its destination behind")
        if restored == 0 and not forged and not world.restored_exactly():
            raise Broken("a corrupted image was restored: the memory differs from what was saved")
        if restored == 0 and verified != 0:
            raise Broken("restore accepted an image that verify --deep refused")

    def chunk_headers(body: bytearray) -> list[int]:
        """Positions (in body) of the chunk headers, walking the stream as the reader does."""
        positions, at = [], 8192
        while at + 60 <= len(body) and body[at:at + 4] == b"KJCH":
            positions.append(at)
            size, stored = struct.unpack_from("<I", body, at + 8)[0], struct.unpack_from("<I", body, at + 32)[0]
            at += max(60, size) + stored
        return positions

    def rechain(body: bytearray) -> None:
        """Recompute every checksum chain: headers into the stream checksum, handoff into the superblock."""
        import xxhash
        headers = chunk_headers(body)
        stream = xxhash.xxh3_64()
        for at in headers:
            reseal(body, at, 4, 60, F.checksum)
            stream.update(bytes(body[at:at + struct.unpack_from("<I", body, at + 8)[0]]))
        trailer = body.find(b"KJTRAILR", 8192)
        if trailer >= 0 and trailer + 64 <= len(body):
            struct.pack_into("<Q", body, trailer + 48, stream.intdigest())
            reseal(body, trailer, 8, 64, F.checksum)
        reseal(body, 4096 + 304, 4, 52, F.checksum)
        reseal(body, 4096, 8, 304, F.checksum)
        handoff_len = struct.unpack_from("<I", body, 4096 + 12)[0]
        if 304 <= handoff_len <= 4096:
            struct.pack_into("<Q", body, 288, F.checksum(bytes(body[4096:4096 + handoff_len])))
        struct.pack_into("<Q", body, 280, stream.intdigest())
        reseal(body, 0, 8, 688, F.checksum)

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        import atheris
        rnd = random.Random(seed)
        body = bytearray(data[1:] if len(data) > 8193 else world.seeds[seed % 3][1:])
        choice = rnd.random()
        forged = False
        if choice < 0.3:
            body = bytearray(atheris.Mutate(bytes(body), max_size - 1))
        else:
            # one field of one record, then that record re-sealed (or every chain, as a forger)
            targets = [(0, 8, 688), (4096, 8, 304), (4096 + 304, 4, 52)] + [(at, 4, 60) for at in chunk_headers(body)]
            start, magic, size = rnd.choice(targets)
            bitmap = struct.unpack_from("<I", body, start + 8)[0] - 60 if start >= 8192 else 0
            if start + size <= len(body) and 0 < bitmap and start + 60 + bitmap <= len(body) \
                    and rnd.random() < 0.3:
                bit = rnd.randrange(8 * bitmap)                 # a bit of a zero-page bitmap
                body[start + 60 + bit // 8] ^= 1 << (bit % 8)
            elif start + size <= len(body):
                offset = start + rnd.randrange(magic, size - 8)     # a field (never the checksum)
                width = rnd.choice((1, 2, 4, 8))
                value = rnd.choice((0, 1, 0xFF, 0xFFFFFFFF, 1 << 63, rnd.getrandbits(64)))
                body[offset:offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
            if start + size <= len(body):
                reseal(body, start, magic, size, F.checksum)
                if choice > 0.8:
                    rechain(body)
                    forged = True
        body = body[:max_size - 1]
        return bytes([1 if forged else 0]) + bytes(body)

    return check, mutate, world.seeds


TARGET_BUILDERS = {"records": records_target, "cmdline": cmdline_target, "iomem": iomem_target,
                   "image": image_target}


# --- the worker: one target under libFuzzer -------------------------------------------------

def worker(target: str, crashes_dir: str, libfuzzer_args: list[str]) -> None:
    """Fuzz ``target`` in this process; never returns (libFuzzer exits)."""
    import atheris

    with atheris.instrument_imports(include=["kjumpd"]):
        check, mutate, seeds = TARGET_BUILDERS[target]()
    crashes = Crashes(Path(crashes_dir) / target)
    corpus = next((a for a in libfuzzer_args if not a.startswith("-")), None)
    if corpus:
        Path(corpus).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (Path(corpus) / f"seed-{hashlib.sha1(seed).hexdigest()[:12]}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:  # every escape is a finding: keep it and go on
            crashes.record(data, exc)

    kwargs = {"custom_mutator": mutate} if mutate else {}
    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input, **kwargs)
    atheris.Fuzz()


# --- the driver -------------------------------------------------------------------------------

def fuzz(target: str, runs: int, seconds: int | None, crashes: Path, corpus: Path) -> tuple[int, int]:
    """Run one target in a worker process; returns (inputs tried, crashing inputs)."""
    options = [f"-artifact_prefix={crashes / target}/", "-print_final_stats=1", "-rss_limit_mb=3072",
               f"-len_control={0 if target == 'image' else 100}",
               f"-timeout={60 if target == 'image' else 10}",
               f"-max_len={400000 if target == 'image' else 70000}"]
    options.append(f"-max_total_time={seconds}" if seconds else f"-runs={runs}")
    (crashes / target).mkdir(parents=True, exist_ok=True)
    log = crashes.parent / f"{target}.log"
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with open(log, "w") as out, tempfile.TemporaryDirectory(prefix="kjumpd-fuzz-", dir=shm) as workdir:
        done = subprocess.run([sys.executable, __file__, "--worker", target, str(crashes),
                               *options, str(corpus / target)], stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, check=False, env={**os.environ, WORKDIR_VARIABLE: workdir})
    text = log.read_text(errors="replace")
    executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    if not executed:
        raise RuntimeError(f"the {target} fuzzer did not finish (exit {done.returncode}); see {log}")
    counts = sum(int(p.read_text()) for p in (crashes / target).glob("*.count"))
    findings = [p for p in (crashes / target).iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    return int(executed[-1]), counts + len(findings)


def main(argv: list[str] | None = None) -> int:
    """Run the targets one after the other and print the inputs tried and crashes of each."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2], argv[3:])
        return 2
    parser = argparse.ArgumentParser(description="Fuzz kjumpd's parsers and whole images (make fuzz).")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"what to fuzz (default all): {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per parser target")
    parser.add_argument("--image-runs", type=int, default=20_000, help="inputs for the image target")
    parser.add_argument("--seconds", type=int, help="run each target this long instead of a count")
    parser.add_argument("--crashes", type=Path, default=REPO / "build/fuzz/crashes")
    parser.add_argument("--corpus", type=Path, default=REPO / "build/fuzz/corpus")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target {', '.join(sorted(unknown))}: one of {', '.join(TARGETS)}")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed (make fuzz installs it from PyPI)", file=sys.stderr)
        return 2
    failed = False
    for target in args.targets or TARGETS:
        try:
            tried, crashed = fuzz(target, args.image_runs if target == "image" else args.runs, args.seconds,
                                  args.crashes.resolve(), args.corpus.resolve())
        except RuntimeError as exc:
            print(f"fuzz: {exc}", file=sys.stderr)
            return 2
        failed |= crashed > 0
        where = f" (kept in {args.crashes / target})" if crashed else ""
        print(f"{target:8} {tried:>10} inputs, {crashed} crashing{where}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
