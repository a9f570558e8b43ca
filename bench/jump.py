#!/usr/bin/env python3
"""Time from the Hibernate call to the jump into B, with B already staged (issue 13, point 5).

On the simulated machine (kjumpd/machine/simulated.py), through the same
Hibernator the daemon runs: B is staged first (untimed), then each run times
``Hibernator.hibernate("resume")`` from the call to the moment
``Machine.kexec_execute`` is entered (the jump), split at the progress steps
the Hibernator reports (checking, handoff, freezing, jump). B then saves and
jumps back (restart point resume), untimed. The goal is under 150 ms outside
a VM; the figure here includes what the simulated machine does in place of
the kernel (file writes instead of ioctls), not the kernel's own freezing.

    .venv/bin/python bench/jump.py               # 5 runs, 64 MiB machine, table
    .venv/bin/python bench/jump.py --runs 9 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kjumpd.daemon.hibernator import HibernateSettings, Hibernator
from kjumpd.machine.simulated import SimulatedMachine


class TimedMachine(SimulatedMachine):
    """The simulated machine, noting when the jump is entered."""

    jumped_at: float = 0.0

    def kexec_execute(self) -> str:
        """Note the time, then jump as the simulated machine does."""
        self.jumped_at = time.perf_counter()
        return super().kexec_execute()


def one_run(hibernator: Hibernator, machine: TimedMachine) -> dict[str, float]:
    """Seconds from the call to each progress step and to the jump."""
    marks: dict[str, float] = {}
    started = time.perf_counter()
    result = hibernator.hibernate("resume", progress=lambda phase, _: marks.setdefault(phase, time.perf_counter()))
    if not result.success:
        raise RuntimeError(f"the hibernation failed: {result.reason}")
    steps = {f"to {phase}": at - started for phase, at in marks.items() if at <= machine.jumped_at}
    steps["to the jump"] = machine.jumped_at - started
    return steps


def measure(ram: int, runs: int, directory: Path) -> dict[str, object]:
    """Stage B once, then time ``runs`` hibernations; medians per step."""
    machine = TimedMachine.create(str(directory / "machine"), ram_size=ram, cpus=2)
    machine = TimedMachine(machine.path)
    hibernator = Hibernator(machine, HibernateSettings(
        image_target=machine.target_path, kernel=machine.kernel_path, initrd=machine.initrd_path,
        region_size=16 << 20, compression="lz4"))
    hibernator.stage()
    samples = [one_run(hibernator, machine) for _ in range(runs)]
    steps = list(samples[0])
    return {"ram_bytes": ram, "runs": runs,
            "median_seconds": {step: statistics.median(s[step] for s in samples) for step in steps},
            "runs_seconds": {step: [s[step] for s in samples] for step in steps}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ram", type=int, default=64, help="simulated RAM in MiB (default 64)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.ram < 32:
        parser.error("--runs must be at least 1 and --ram at least 32 (MiB)")
    with tempfile.TemporaryDirectory(prefix="kjumpd-bench-jump-") as tmp:
        try:
            result = measure(args.ram << 20, args.runs, Path(tmp))
        except RuntimeError as exc:
            print(f"bench/jump.py: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Hibernate call → jump, B staged, simulated machine ({args.ram} MiB), median of {args.runs}:")
        for step, seconds in result["median_seconds"].items():         # type: ignore[union-attr]
            print(f"  {step:<16}{seconds * 1000:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
