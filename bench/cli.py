#!/usr/bin/env python3
"""The image engine through the command line a user runs, against lz4's.

``kjumpctl image write SAMPLE IMAGE`` against ``lz4 -1 SAMPLE OUT`` and
``kjumpctl image restore IMAGE DEST`` against ``lz4 -d OUT DEST``, each a new
process, on memory-like samples of two sizes (bench/sample.py, the same mix
and seed). Two figures per pair (issue 13, point 5):

* **start-up included**: the wall time of the whole command at the large size;
* **start-up excluded**: the marginal time per byte, (t(large) − t(small)) /
  (large − small), in which process start-up (Python's imports for kjumpctl)
  cancels out.

The start-up itself is shown too: ``kjumpctl image write --help``, which
imports what the command imports and stops. Every command runs once to warm
the page cache, then ``--repeat`` times; the **median** counts. Outputs are
removed and ``sync`` runs before each timed run (untimed). What is not
levelled: kjumpctl makes the image durable (``fdatasync``) and stores a
4 MiB header area; lz4 does neither.

    .venv/bin/python bench/cli.py                       # 128 MiB and 512 MiB, 3 runs
    .venv/bin/python bench/cli.py --small 64M --large 256M --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sample

MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


def kjumpctl_command() -> list[str]:
    """How a user runs kjumpctl here: the installed script next to this Python, else the module."""
    script = Path(sys.executable).with_name("kjumpctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kjumpd.ctl"]


def run_command(argv: Sequence[str]) -> None:
    """Run a command to completion; RuntimeError with its message when it fails."""
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed with status {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")


def median_time(argv: Sequence[str], repeat: int, remove: Sequence[Path] = (),
                before: Callable[[], None] | None = None,
                after: Callable[[], None] | None = None) -> tuple[float, list[float]]:
    """Median wall time of ``repeat`` runs after one warm-up; ``remove`` is deleted, then ``before`` runs
    (untimed), before each run; ``after`` checks each run's result."""
    times = []
    for attempt in range(repeat + 1):
        for path in remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if before:
            before()
        os.sync()
        started = time.perf_counter()
        run_command(argv)
        if attempt:
            times.append(time.perf_counter() - started)
        if after:
            after()
    return statistics.median(times), times


def measure(directory: Path, sizes: dict[str, int], mix: dict[str, float], seed: int,
            repeat: int) -> dict[str, object]:
    """Generate the samples and time the four commands at each size, and kjumpctl's start-up."""
    ctl = kjumpctl_command()
    timings: dict[str, dict[str, object]] = {}
    outputs: dict[str, int] = {}
    for label, size in sizes.items():
        src = directory / f"sample-{label}"
        sample.generate(src, size, mix, seed)
        img, lz, dest, dest_lz = (directory / f"{name}-{label}" for name in ("image", "lz4", "dest", "dest-lz4"))
        commands: dict[str, tuple[list[str], list[Path]]] = {
            "kjumpctl image write": ([*ctl, "image", "write", str(src), str(img)], [img]),
            "lz4 -1": (["lz4", "-q", "-1", "-f", str(src), str(lz)], [lz]),
            "kjumpctl image restore": ([*ctl, "image", "restore", str(img), str(dest)], [dest]),
            "lz4 -d": (["lz4", "-q", "-d", "-f", str(lz), str(dest_lz)], [dest_lz]),
        }
        for name, (argv, remove) in commands.items():
            if name == "kjumpctl image restore":       # an image is restored once: write it afresh, untimed
                def write_image(write: list[str] = commands["kjumpctl image write"][0]) -> None:
                    run_command(write)

                def same_as_sample(dest: Path = dest, src: Path = src) -> None:
                    if dest.read_bytes() != src.read_bytes():
                        raise RuntimeError(f"kjumpctl image restore did not reproduce {src}")

                median, runs = median_time(argv, repeat, [img, *remove], write_image, same_as_sample)
            else:
                median, runs = median_time(argv, repeat, remove)
            timings.setdefault(name, {})[label] = {"median_seconds": median, "runs_seconds": runs}
        outputs[label] = img.stat().st_size if img.exists() else 0
        outputs[f"lz4-{label}"] = lz.stat().st_size
        for path in (src, img, lz, dest, dest_lz):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    startup, startup_runs = median_time([*ctl, "image", "write", "--help"], repeat)
    return {"timings": timings, "startup": {"median_seconds": startup, "runs_seconds": startup_runs},
            "outputs": outputs}


def ratios(result: dict[str, object], sizes: dict[str, int]) -> dict[str, float]:
    """ours / lz4 with start-up included (large size) and excluded (marginal per byte)."""
    timings = result["timings"]

    def at(name: str, label: str) -> float:
        return float(timings[name][label]["median_seconds"])          # type: ignore[index]

    span = sizes["large"] - sizes["small"]

    def marginal(name: str) -> float:
        return (at(name, "large") - at(name, "small")) / span

    out = {}
    for ours, peer in (("kjumpctl image write", "lz4 -1"), ("kjumpctl image restore", "lz4 -d")):
        out[f"{ours} / {peer}, start-up included"] = at(ours, "large") / at(peer, "large")
        out[f"{ours} / {peer}, start-up excluded"] = marginal(ours) / marginal(peer)
    return out


def report_table(result: dict[str, object], sizes: dict[str, int]) -> str:
    """A plain-text table of the medians and the ratios."""
    lines = [f"{'command':<26}" + "".join(f"{label + ' (' + str(size >> 20) + ' MiB)':>20}"
                                          for label, size in sizes.items()) + f"{'marginal MB/s':>16}"]
    span = sizes["large"] - sizes["small"]
    for name, by_size in result["timings"].items():                   # type: ignore[union-attr]
        cells = "".join(f"{by_size[label]['median_seconds']:>19.3f}s" for label in sizes)
        rate = span / max(by_size["large"]["median_seconds"] - by_size["small"]["median_seconds"], 1e-9) / 1e6
        lines.append(f"{name:<26}{cells}{rate:>16.0f}")
    lines.append(f"{'kjumpctl start-up (--help)':<26}{result['startup']['median_seconds']:>19.3f}s")  # type: ignore[index]
    lines.append("")
    for name, value in result["ratios"].items():                      # type: ignore[union-attr]
        lines.append(f"{name:<60}{value:>8.2f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=sample.parse_size, default=128 * MIB)
    parser.add_argument("--large", type=sample.parse_size, default=512 * MIB)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the files go (default $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.large:
        parser.error("--small must be smaller than --large")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("lz4") is None:
        print("bench/cli.py: lz4 is not installed (packaging/deps/test.txt)", file=sys.stderr)
        return 2
    sizes = {"small": args.small, "large": args.large}
    with tempfile.TemporaryDirectory(prefix="kjumpd-bench-cli-", dir=args.dir) as tmp:
        try:
            result = measure(Path(tmp), sizes, dict(sample.ACCEPTANCE_MIX), args.seed, args.repeat)
        except RuntimeError as exc:
            print(f"bench/cli.py: {exc}", file=sys.stderr)
            return 1
    result["ratios"] = ratios(result, sizes)
    result["sizes"] = sizes
    print(json.dumps(result, indent=2) if args.json else report_table(result, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
