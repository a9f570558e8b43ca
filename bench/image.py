#!/usr/bin/env python3
"""Benchmark the image engine against lz4, zstd and cp on a memory-like sample.

One run generates a sample (bench/sample.py), then times the engine's save,
verify and restore and the command-line tools on the same file, all in one
directory on one file system, with the page cache warm: each operation runs
once to warm up and is then timed N times; the best time counts. It prints a
table of times and ours/peer ratios with PASS/MISS next to the acceptance
targets (see bench/README.md), or the same as JSON with --json.

Run it with the project's venv:  .venv/bin/python bench/image.py --size 512M
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import filecmp
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import sample

from kjumpd import image, seal
from kjumpd.errors import KjumpError
from kjumpd.format import Compression, Handoff, Identity, State
from kjumpd.memmap import MemoryMap, Range
from kjumpd.physmem import FileMemory
from kjumpd.target import ImageTarget, TargetExistsError

MIB = 1 << 20
GB = 1e9

ACCEPTANCE_SIZE = 512 * MIB
"""The sample size the acceptance targets are defined on (with ACCEPTANCE_MIX's
40 % zero pages)."""

JUMP_BACK_ENTRY = 0x1000
"""A plausible jump-back entry for the superblock; the benchmark never jumps."""

RESTORE_FILL = b"\xa5"
"""The restore destination is filled with this before the first restore, so a
restore that skips pages (zero pages, say) leaves visible garbage."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall and CPU times of one operation: the warm-up run is not among them.

    CPU time (user + system, of all threads and of the peer's process) does not
    depend on how busy the machine is, unlike wall time: it tells where an
    engine change helps even when other work shares the cores.
    """

    name: str
    runs: tuple[float, ...]
    cpu_runs: tuple[float, ...]
    output_bytes: int | None = None

    @property
    def best(self) -> float:
        """The best (smallest) wall time in seconds."""
        return min(self.runs)

    @property
    def best_cpu(self) -> float:
        """The smallest CPU time in seconds."""
        return min(self.cpu_runs)


def _cpu_seconds() -> float:
    """CPU time used so far by this process (all threads) and its waited-for children."""
    return sum(usage.ru_utime + usage.ru_stime for usage in
               (resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN)))


@dataclasses.dataclass(frozen=True)
class Target:
    """An acceptance target: value compared with limit by op ("<=" or ">=")."""

    name: str
    value: float
    op: str
    limit: float

    @property
    def met(self) -> bool:
        """Whether value satisfies the target."""
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit


def measure(name: str, run: Callable[[], object], repeat: int,
            prepare: Callable[[], object] | None = None,
            output: Callable[[], int] | None = None) -> Timing:
    """Run once to warm the caches, then time repeat runs of run.

    prepare runs before every run, untimed (removing the previous output,
    resetting the image state); the dirty pages of earlier runs are written
    back before each timed run so one run's writeback does not land in the
    next one's time. output gives the size of what the operation wrote.
    """
    times, cpu_times = [], []
    for attempt in range(repeat + 1):
        if prepare is not None:
            prepare()
        os.sync()
        cpu = _cpu_seconds()
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        if attempt:
            times.append(elapsed)
            cpu_times.append(_cpu_seconds() - cpu)
    return Timing(name, tuple(times), tuple(cpu_times), output() if output is not None else None)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _command(argv: Sequence[str]) -> Callable[[], None]:
    """A callable that runs a peer tool and fails loudly when it fails."""
    def run() -> None:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed with status {done.returncode}: "
                               f"{done.stderr.decode(errors='replace').strip()}")
    return run


class RamFile(FileMemory):
    """The restore destination: a file standing for RAM, written without fsync.

    In R the destination is RAM through /dev/mem, whose flush does nothing; an
    fsync of the simulated RAM file would time the benchmark machine's disk,
    not the engine, and lz4 -d does not sync its output either.
    """

    def flush(self) -> None:
        """Nothing to make durable: see the class docstring."""


class Bench:
    """The files of one benchmark run and the operations on them."""

    def __init__(self, directory: Path, size: int, compression: Compression) -> None:
        self.size = size
        self.compression = compression
        self.sample = directory / "sample.mem"
        self.image = directory / "image.kjump"
        self.pristine = directory / "image.kjump.saved"
        self.restored = directory / "restored.mem"
        self.lz4 = directory / "sample.lz4"
        self.lz4_out = directory / "sample.lz4.out"
        self.zstd = directory / "sample.zst"
        self.copy = directory / "sample.copy"
        self.memmap = MemoryMap.from_ranges([Range(0, size)])
        # the whole sample file is "RAM" from physical address 0; no B region
        self.handoff = Handoff(identity=Identity(), restart_point="resume", compression=compression,
                               region_base=0, region_size=0, low_base=0, low_size=0,
                               memmap=self.memmap)
        # the same sample sealed to a key pair (docs/encryption.md): what encryption costs
        self.sealed_image = directory / "image.sealed.kjump"
        self.sealed_pristine = directory / "image.sealed.kjump.saved"
        public, secret = seal.generate_key_pair(b"bench", seal.ScryptCost(log_n=10))
        self.sealed_handoff = dataclasses.replace(self.handoff, recipient=public)
        self._private = seal.SecretKeyFile.parse(secret).unlock(b"bench")

    # --- the engine ---------------------------------------------------------

    def _open_target(self, sealed: bool = False) -> ImageTarget:
        path = str(self.sealed_image if sealed else self.image)
        try:
            return ImageTarget.create(path, image.required_capacity(self.memmap))
        except TargetExistsError:
            return ImageTarget.open(path)

    def _key(self, target: ImageTarget) -> bytearray:
        """The sealed image's data key, unsealed as C does (once per restore: part of its cost)."""
        envelope = seal.Envelope.unpack(image.read_superblock(target).seal)
        return seal.unseal_key(envelope, self._private)

    def save(self, sealed: bool = False) -> None:
        """image.save of the whole sample into the image file (the sealed one: encrypted)."""
        with FileMemory(str(self.sample)) as source, self._open_target(sealed) as target:
            image.save(source, target, self.sealed_handoff if sealed else self.handoff,
                       jump_back_entry=JUMP_BACK_ENTRY)

    def verify(self, sealed: bool = False) -> None:
        """image.verify of the saved image (the sealed one with its key: every chunk authenticated)."""
        with self._open_target(sealed) as target:
            if sealed:
                image.verify(target, deep=True, key=self._key(target))
            else:
                image.verify(target)

    def restore(self, sealed: bool = False) -> None:
        """image.restore of the image into the destination file."""
        with RamFile(str(self.restored), writable=True) as dest, self._open_target(sealed) as target:
            image.restore(target, dest, key=self._key(target) if sealed else None)

    def rearm(self, sealed: bool = False) -> None:
        """Put the image back as saved so it can be restored once more (an image is restored at
        most once, and a restore zeroes its handoff and trailer; the benchmark restores it N+1
        times): the saved image is kept aside before the first restore and copied back after."""
        path, pristine = (self.sealed_image, self.sealed_pristine) if sealed else (self.image, self.pristine)
        with self._open_target(sealed) as target:
            saved = image.read_superblock(target).state == State.SAVED
        if saved:
            shutil.copyfile(path, pristine)
        else:
            shutil.copyfile(pristine, path)

    def image_bytes(self, sealed: bool = False) -> int:
        """Bytes the image occupies on its target (header area, chunk stream, trailer)."""
        with self._open_target(sealed) as target:
            return image.read_superblock(target).image_bytes

    def stream_bytes(self) -> int:
        """Bytes of the image's chunk stream alone (no header area, no trailer)."""
        with self._open_target() as target:
            return image.read_superblock(target).stream_bytes

    def fill_restore_destination(self) -> None:
        """Create the restore destination, full of RESTORE_FILL, the sample's size."""
        block = RESTORE_FILL * MIB
        with open(self.restored, "wb") as out:
            for _ in range(self.size // MIB):
                out.write(block)
            out.write(RESTORE_FILL * (self.size % MIB))

    # --- the whole run ------------------------------------------------------

    def run(self, repeat: int) -> dict[str, Timing]:
        """Time every operation; check that the restore reproduced the sample."""
        timings = [
            measure("ours save", self.save, repeat, output=self.image_bytes),
            measure("ours verify", self.verify, repeat),
        ]
        self.fill_restore_destination()
        timings.append(measure("ours restore", self.restore, repeat, prepare=self.rearm))
        if not filecmp.cmp(self.sample, self.restored, shallow=False):
            raise RuntimeError(f"the restored memory {self.restored} differs from the sample "
                               f"{self.sample}: the engine is broken, the times mean nothing")
        timings += [
            measure("sealed save", lambda: self.save(sealed=True), repeat,
                    output=lambda: self.image_bytes(sealed=True)),
            measure("sealed verify", lambda: self.verify(sealed=True), repeat),
        ]
        self.fill_restore_destination()
        timings.append(measure("sealed restore", lambda: self.restore(sealed=True), repeat,
                               prepare=lambda: self.rearm(sealed=True)))
        if not filecmp.cmp(self.sample, self.restored, shallow=False):
            raise RuntimeError(f"the memory restored from the encrypted image differs from the sample "
                               f"{self.sample}: the engine is broken, the times mean nothing")
        peers = [
            ("lz4 -1", ["lz4", "-q", "-1", "-f", self.sample, self.lz4], self.lz4),
            ("lz4 -d", ["lz4", "-q", "-d", "-f", self.lz4, self.lz4_out], self.lz4_out),
            ("zstd -1 -T2", ["zstd", "-q", "-1", "-T2", "-f", self.sample, "-o", self.zstd],
             self.zstd),
            ("cp", ["cp", self.sample, self.copy], self.copy),
        ]
        for name, argv, out in peers:
            timings.append(measure(name, _command([str(a) for a in argv]), repeat,
                                   prepare=lambda out=out: _remove(out),
                                   output=lambda out=out: out.stat().st_size))
        return {timing.name: timing for timing in timings}


# --- profiling ---------------------------------------------------------------

@contextlib.contextmanager
def _profiled_threads(profiles: list[cProfile.Profile]) -> Iterator[None]:
    """Profile threads started inside the block too (the engine may compress
    in worker threads, which the calling thread's profiler does not see)."""
    def start(*_: object) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
    threading.setprofile(start)
    try:
        yield
    finally:
        threading.setprofile(None)


def profile(bench: Bench, top: int = 15) -> dict[str, str]:
    """cProfile of one save, verify and restore: the top functions by own time."""
    reports = {}
    for phase, run, prepare in (("save", bench.save, None), ("verify", bench.verify, None),
                                ("restore", bench.restore, bench.rearm)):
        if prepare is not None:
            prepare()
        main = cProfile.Profile()
        workers: list[cProfile.Profile] = []
        with _profiled_threads(workers):
            main.runcall(run)
        for worker in workers:
            worker.disable()
        text = io.StringIO()
        stats = pstats.Stats(main, *workers, stream=text)
        stats.sort_stats("tottime").print_stats(top)
        reports[phase] = text.getvalue()
    return reports


# --- results -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Results:
    """Everything one benchmark run found."""

    sample: sample.Sample
    timings: dict[str, Timing]
    stream_bytes: int
    profiles: dict[str, str] | None

    def _best(self, name: str) -> float:
        return self.timings[name].best

    def _bytes(self, name: str) -> int:
        output = self.timings[name].output_bytes
        if output is None:
            raise ValueError(f"{name} records no output size")
        return output

    def targets(self) -> list[Target]:
        """The acceptance targets, evaluated on these timings."""
        return [
            Target("save time / lz4 -1 time", self._best("ours save") / self._best("lz4 -1"),
                   "<=", 0.6),
            Target("image size / lz4 -1 size", self._bytes("ours save") / self._bytes("lz4 -1"),
                   "<=", 1.0),
            Target("restore time / lz4 -d time",
                   self._best("ours restore") / self._best("lz4 -d"), "<=", 0.8),
            Target("verify GB/s (of memory size)",
                   self.sample.size / self._best("ours verify") / GB, ">=", 3.0),
        ]

    def ratios(self) -> dict[str, float]:
        """ours/peer ratios of best times and of output sizes (the whole image,
        and its chunk stream alone, without the fixed header area)."""
        found = {f"{op} / {peer}": self._best(f"ours {op}") / self._best(peer)
                 for op, peer in TIME_RATIOS}
        for op in ("save", "restore"):
            found[f"encrypted {op} / plain {op}"] = self._best(f"sealed {op}") / self._best(f"ours {op}")
        for peer in SIZE_RATIOS:
            found[f"image size / {peer} size"] = self._bytes("ours save") / self._bytes(peer)
            found[f"chunk stream / {peer} size"] = self.stream_bytes / self._bytes(peer)
        return found

    def is_acceptance_sample(self) -> bool:
        """Whether the sample is the one the targets are defined on."""
        return (self.sample.size == ACCEPTANCE_SIZE
                and self.sample.mix["zero"] == sample.ACCEPTANCE_MIX["zero"])


TIME_RATIOS = (("save", "lz4 -1"), ("save", "zstd -1 -T2"), ("save", "cp"),
               ("restore", "lz4 -d"), ("restore", "cp"))
SIZE_RATIOS = ("lz4 -1", "zstd -1 -T2")


def report_json(results: Results, args: argparse.Namespace) -> str:
    """Everything as one JSON document (described in bench/README.md)."""
    made = results.sample
    document = {
        "sample": {"bytes": made.size, "seed": made.seed, "mix_percent": made.mix,
                   "pages": made.counts()},
        "compression": args.compression,
        "repeat": args.repeat,
        "timings": {name: {"best_seconds": t.best, "runs_seconds": list(t.runs),
                           "best_cpu_seconds": t.best_cpu, "cpu_runs_seconds": list(t.cpu_runs),
                           "output_bytes": t.output_bytes}
                    for name, t in results.timings.items()},
        "stream_bytes": results.stream_bytes,
        "ratios": results.ratios(),
        "acceptance_sample": results.is_acceptance_sample(),
        "targets": [{"name": t.name, "value": t.value, "op": t.op, "limit": t.limit,
                     "pass": t.met} for t in results.targets()],
    }
    if results.profiles is not None:
        document["profile"] = results.profiles
    return json.dumps(document, indent=2)


def report_table(results: Results, args: argparse.Namespace, where: str) -> str:
    """The results as a table a person can read."""
    made = results.sample
    lines = [
        "kjumpd image engine benchmark",
        f"sample  {made.size / MIB:g} MiB, seed {made.seed}: {sample.describe_mix(made.mix)}",
        f"engine  compression {args.compression}; best of {args.repeat} after one warm-up run, "
        "page cache warm",
        f"files   {where}",
        "",
        f"{'operation':<14}{'best s':>9}{'MB/s':>8}{'cpu s':>8}  {'output':>22}   runs s",
    ]
    for t in results.timings.values():
        output = ""
        if t.output_bytes is not None:
            output = f"{t.output_bytes / MIB:.1f} MiB ({100 * t.output_bytes / made.size:.1f}%)"
        runs = " ".join(f"{r:.3f}" for r in t.runs)
        lines.append(f"{t.name:<14}{t.best:>9.3f}{made.size / t.best / 1e6:>8.0f}"
                     f"{t.best_cpu:>8.3f}  "
                     f"{output:>22}   {runs}")
    lines += ["", f"{'ours / peer':<32}{'ratio':>7}"]
    lines += [f"{name:<32}{value:>7.2f}" for name, value in results.ratios().items()]
    lines += ["", f"{'acceptance target':<32}{'value':>7}  {'target':<8}"]
    for t in results.targets():
        lines.append(f"{t.name:<32}{t.value:>7.2f}  {t.op.replace('<=', '≤').replace('>=', '≥')} "
                     f"{t.limit:<5.2f}  {'PASS' if t.met else 'MISS'}")
    if not results.is_acceptance_sample():
        lines.append("note: the targets are defined on 512 MiB with 40% zero pages; this sample "
                     "differs, so PASS/MISS only indicates")
    if results.profiles is not None:
        for phase, text in results.profiles.items():
            lines += ["", f"--- profile of one {phase} (top functions by own time) ---",
                      text.rstrip()]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; percentages of the mix must add up to 100."""
    parser = argparse.ArgumentParser(
        description="Time kjumpd's image save/verify/restore against lz4, zstd and cp "
                    "on a memory-like sample.")

    def size(text: str) -> int:
        try:
            return sample.parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--size", type=size, default=ACCEPTANCE_SIZE,
                        help="sample size, e.g. 8M, 512M, 1G (default 512M)")
    for kind in sample.KINDS:
        parser.add_argument(f"--{kind}", type=float, default=sample.ACCEPTANCE_MIX[kind],
                            metavar="PCT", help=f"percent of {kind} pages "
                            f"(default {sample.ACCEPTANCE_MIX[kind]:g})")
    parser.add_argument("--seed", type=int, default=1, help="sample seed (default 1)")
    parser.add_argument("--repeat", "-n", type=int, default=3, metavar="N",
                        help="timed runs per operation after the warm-up; the best counts "
                             "(default 3)")
    parser.add_argument("--compression", choices=[c.label for c in Compression], default="lz4",
                        help="the engine's compression (default lz4)")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where the sample, image and peer outputs go (a new directory "
                             "inside DIR; default: one under $TMPDIR); removed afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one save, verify and restore (cProfile, top 15)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        args.mix = sample.validate_mix({kind: getattr(args, kind) for kind in sample.KINDS})
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, measure, report; 0 when everything ran (whatever the targets say)."""
    args = parse_args(argv)
    for tool in ("lz4", "zstd", "cp"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="kjumpd-bench-", dir=args.dir))
    try:
        bench = Bench(directory, args.size, Compression.parse(args.compression))
        made = sample.generate(bench.sample, args.size, args.mix, args.seed)
        timings = bench.run(args.repeat)
        results = Results(made, timings, bench.stream_bytes(),
                          profile(bench) if args.profile else None)
    except (KjumpError, RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(report_json(results, args))
    else:
        print(report_table(results, args, f"{directory}{'' if args.keep else ' (removed)'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
