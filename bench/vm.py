#!/usr/bin/env python3
"""kjumpd against the kernel's own hibernation (swsusp) in the same guest (``make vm-bench``).

The busybox guest of the VM test (tests/vm: same kernel, RAM, CPUs, root file
system), booted in QEMU/TCG, alternately hibernated by kjumpd (to its image
target, /dev/vdb) and by swsusp (to a swap partition on the same /dev/vdb,
``resume=/dev/vdb``, its defaults: the kernel says which compressor and how
many threads, and that is reported). Before each hibernation the guest runs
the **ageing workload**: it writes ``--age`` MiB of random data to a tmpfs
and frees it (free pages then hold old data, as on a machine that has run for
days) and reads the files under /usr into the page cache; the steady
workload (tests/vm/guest/workload.sh, a token and a counter) keeps running.

Per system and run (``--runs``, default 3), measured on the host:

* **image size**: kjumpd's from its superblock; swsusp's from the kernel's
  "Image size after compression" line (what is on the swap device; the
  snapshot's uncompressed size, "Wrote N kbytes", is in the notes);
* **hibernate time**: the request (``kjumpctl hibernate --restart-point
  shutdown`` or ``echo disk > /sys/power/state`` with ``/sys/power/disk`` =
  shutdown) to QEMU's exit (power off);
* **resume time**: QEMU's start (power on) to the workload answering with
  the token it had before.

The medians go into a table and, with ``--json FILE``, a JSON file; a
cycle that fails is reported and left out (exit status 1). Every
run starts from a copy of the same root file system. Under TCG a cycle takes
minutes: the whole run (2 × 3 cycles) about half an hour on 2 cores.

    .venv/bin/python bench/vm.py [--runs 3] [--age 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vm"))

import vm_rootfs  # noqa: E402  (tests/vm on the path above)
from vm_qemu import Agent, Boot, VMConfig, VMError  # noqa: E402

from kjumpd import image  # noqa: E402
from kjumpd.host import initramfs  # noqa: E402
from kjumpd.target import ImageTarget  # noqa: E402

AGENT_READY = r"KJVM\[[\d.]+\] agent: ready"
PANIC = r"Kernel panic - not syncing|BUG: |general protection fault|Oops: "
IMAGE_DISK_SIZE = 1536 << 20
SYSTEMS = ("kjumpd", "swsusp", "kjumpd-zero-free")


def ageing_command(age_mib: int) -> str:
    """Fill and free most of RAM with non-zero data, then fill the page cache from /usr."""
    return (f"dd if=/dev/urandom of=/tmp/age bs=1M count={age_mib} 2>/dev/null; rm -f /tmp/age; "
            "find /usr -type f -exec cat {} + >/dev/null 2>&1; sync; "
            "grep -E '^(MemFree|Cached):' /proc/meminfo | tr -s ' ' | tr '\\n' ' '")


@dataclass
class Cycle:
    """One hibernation and resume of one system, as measured."""

    system: str
    image_bytes: int
    hibernate_seconds: float
    resume_seconds: float
    notes: dict[str, object]


def kernel_path() -> Path:
    """The cached VM test kernel (tests/vm/build-kernel.sh --path); SystemExit when it is not built."""
    script = REPO / "tests" / "vm" / "build-kernel.sh"
    path = Path(subprocess.run([str(script), "--path"], capture_output=True, text=True, check=True).stdout.strip())
    if not path.exists():
        raise SystemExit(f"bench/vm.py: the VM test kernel {path} is not built: run make vm-test once")
    return path


def prepare(workdir: Path, logdir: Path, kernel: Path, compression: str) -> tuple[VMConfig, Path]:
    """B/R's initramfs, A's root file system (pristine copy kept), C's initramfs, the image disk."""
    initramfs.build(str(workdir / "initramfs.img"))
    stage = workdir / "stage"
    shutil.rmtree(stage, ignore_errors=True)        # build_stage fills an empty directory
    vm_rootfs.build_stage(stage, kernel=kernel, initramfs=workdir / "initramfs.img", compression=compression)
    c_initrd = workdir / "c-initramfs.img"
    vm_rootfs.build_c_initramfs(c_initrd, stage)
    pristine = workdir / "root.pristine.img"
    vm_rootfs.make_image(stage, pristine, "1G")
    config = VMConfig(kernel=kernel, root_disk=workdir / "root.img", image_disk=workdir / "image.img",
                      logdir=logdir, memory="1G", smp=2, initrd=c_initrd,
                      append="kjump.resume=/dev/vdb kjvm.cstage=initramfs no_timer_check")
    return config, pristine


def fresh_disks(config: VMConfig, pristine: Path, *, kjumpd_target: bool) -> None:
    """A copy of the pristine root fs; the image disk blank, initialised as kjumpd's target or not."""
    shutil.copyfile(pristine, config.root_disk)
    with open(config.image_disk, "wb") as disk:
        disk.truncate(IMAGE_DISK_SIZE)
    if kjumpd_target:
        with ImageTarget.open_unclaimed(str(config.image_disk)) as target:
            target.initialise()


def boot_aged(config: VMConfig, name: str, age_mib: int, setup: str) -> tuple[Boot, Agent, str, str]:
    """Boot A, run ``setup`` and the ageing workload; returns the boot, its agent, the token, meminfo."""
    boot = Boot(config, name)
    boot.wait_for(AGENT_READY, 600, what="A: agent ready", fail=PANIC)
    agent = Agent(boot)
    agent.handshake(120)
    if setup:
        agent.run(setup, 300)
    _, meminfo = agent.run(ageing_command(age_mib), 1800)
    _, state = agent.run("cat /run/work.state", 60)
    return boot, agent, state.split()[0], meminfo


def resumed(config: VMConfig, name: str, token: str, ident: str, fail: str) -> tuple[Boot, float]:
    """Power on; seconds until the hibernating command returned and the workload answers with ``token``."""
    started = time.monotonic()
    boot = Boot(config, name)
    agent = Agent(boot)
    agent.wait(ident, 0, 1800, boot=boot, fail=fail + "|" + PANIC)
    _, state = agent.run("cat /run/work.state", 120)
    seconds = time.monotonic() - started
    if state.split()[0] != token:
        raise VMError(f"{name}: the workload's token is {state.split()[0]}, not {token}: not resumed")
    return boot, seconds


# The --zero-free experiment: a process takes all but 96 MiB of the free memory
# (the kernel hands it zeroed pages) and exits, so the free pages hold zeros.
ZERO_FREE = ("python3 -c \"import mmap, re; free = int(re.search(r'MemFree: +([0-9]+)', "
             "open('/proc/meminfo').read()).group(1)) * 1024; "
             "mmap.mmap(-1, max(4096, free - (96 << 20)), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS "
             "| mmap.MAP_POPULATE).close()\"")


def kjumpd_cycle(config: VMConfig, pristine: Path, run: int, age_mib: int, zero_free: bool = False) -> Cycle:
    """Hibernate with kjumpd (restart point shutdown) and resume through C and R.

    ``zero_free`` (an experiment, not something kjumpd does): right before
    the hibernation, ZERO_FREE zeroes most free pages; its time counts in
    the hibernate time and is noted separately.
    """
    fresh_disks(config, pristine, kjumpd_target=True)
    wait_bus = "for i in $(seq 120); do kjumpctl status --json >/dev/null 2>&1 && break; sleep 2; done"
    boot, agent, token, meminfo = boot_aged(config, f"kjumpd{run}-a", age_mib, wait_bus)
    started = time.monotonic()
    zeroing = 0.0
    if zero_free:
        agent.run(ZERO_FREE, 900)
        zeroing = time.monotonic() - started
    ident, _ = agent.start("kjumpctl hibernate --wait --restart-point=shutdown")
    boot.wait_exit(1800)
    hibernate = time.monotonic() - started
    boot.close()
    with ImageTarget.open(str(config.image_disk), writable=False) as target:
        sb = image.read_superblock(target)
    if sb.state.name != "SAVED":
        raise VMError(f"kjumpd run {run}: image state {sb.state.name} after the power-off: {sb.reason}")
    boot, resume = resumed(config, f"kjumpd{run}-resume", token, ident, AGENT_READY)
    boot.close()
    return Cycle("kjumpd-zero-free" if zero_free else "kjumpd", sb.image_bytes, hibernate, resume,
                 {"meminfo_before": meminfo, "b_save_seconds": sb.save_duration_ns / 1e9,
                  "zero_free_seconds": zeroing,
                  "memory_bytes": sb.pages_total * 4096, "zero_pages": sb.pages_zero,
                  "compression": sb.compression.label})


def swsusp_cycle(config: VMConfig, pristine: Path, run: int, age_mib: int) -> Cycle:
    """Hibernate with the kernel's swsusp to a swap partition and resume through resume=."""
    fresh_disks(config, pristine, kjumpd_target=False)
    swsusp = replace(config, initrd=None, append="resume=/dev/vdb kjvm.noresume no_timer_check")
    boot, agent, token, meminfo = boot_aged(swsusp, f"swsusp{run}-a", age_mib,
                                            "mkswap /dev/vdb >/dev/null && swapon /dev/vdb && "
                                            "echo shutdown > /sys/power/disk")
    started = time.monotonic()
    ident, _ = agent.start("echo disk > /sys/power/state")
    boot.wait_exit(1800)
    hibernate = time.monotonic() - started
    text = boot.text
    boot.close()
    wrote = re.findall(r"Wrote (\d+) kbytes in ([\d.]+) seconds", text)
    if not wrote:
        raise VMError(f"swsusp run {run}: no 'Wrote N kbytes' line: the image was not written ({boot.log_path})")
    stored = re.findall(r"Image size after compression: (\d+) kbytes", text)    # what is on the swap device
    threads = re.search(r"Using (\d+) thread\(s\) for (\w+) (?:de)?compression", text)
    boot, resume = resumed(swsusp, f"swsusp{run}-resume", token, ident, AGENT_READY)
    read = re.search(r"Read (\d+) kbytes in ([\d.]+) seconds", boot.text)
    boot.close()
    return Cycle("swsusp", int((stored or [w[0] for w in wrote])[-1]) * 1024, hibernate, resume,
                 {"meminfo_before": meminfo, "kernel_write_seconds": float(wrote[-1][1]),
                  "snapshot_bytes": int(wrote[-1][0]) * 1024,
                  "kernel_read_seconds": float(read.group(2)) if read else None,
                  "compressor": f"{threads.group(2)}, {threads.group(1)} thread(s)" if threads else "unknown"})


def medians(cycles: list[Cycle]) -> dict[str, dict[str, float]]:
    """Median image size and times per system."""
    out = {}
    for system in SYSTEMS:
        mine = [c for c in cycles if c.system == system]
        if mine:
            out[system] = {"image_bytes": statistics.median(c.image_bytes for c in mine),
                           "hibernate_seconds": statistics.median(c.hibernate_seconds for c in mine),
                           "resume_seconds": statistics.median(c.resume_seconds for c in mine)}
    return out


def table(result: dict[str, dict[str, float]]) -> str:
    """The medians and the kjumpd / swsusp ratios (targets ≤ 1.0)."""
    rows = [f"{'':<24}{'image MiB':>12}{'hibernate s':>14}{'resume s':>12}"]
    for system, m in result.items():
        rows.append(f"{system:<24}{m['image_bytes'] / 2**20:>12.1f}{m['hibernate_seconds']:>14.1f}"
                    f"{m['resume_seconds']:>12.1f}")
    for ours in ("kjumpd", "kjumpd-zero-free"):
        if ours in result and "swsusp" in result:
            k, s = result[ours], result["swsusp"]
            rows.append(f"{ours + ' / swsusp':<24}{k['image_bytes'] / s['image_bytes']:>12.2f}"
                        f"{k['hibernate_seconds'] / s['hibernate_seconds']:>14.2f}"
                        f"{k['resume_seconds'] / s['resume_seconds']:>12.2f}   (targets ≤ 1.00)")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--age", type=int, default=500, help="MiB written and freed by the ageing workload")
    parser.add_argument("--systems", default="kjumpd,swsusp",
                        help="which to run, comma-separated; kjumpd-zero-free is the experiment of "
                             "zeroing the free pages before kjumpd hibernates (bench/README.md)")
    parser.add_argument("--compression", default="lz4", choices=("lz4", "zstd", "none"))
    parser.add_argument("--workdir", default="/var/tmp/kjumpd-vm-bench")
    parser.add_argument("--json", metavar="FILE", help="also write the cycles and medians as JSON")
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    if args.runs < 1 or not systems or any(s not in SYSTEMS for s in systems):
        parser.error(f"--runs ≥ 1 and --systems from {', '.join(SYSTEMS)}")
    workdir = Path(args.workdir)
    logdir = workdir / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    config, pristine = prepare(workdir, logdir, kernel_path(), args.compression)
    cycle_of: dict[str, Callable[[VMConfig, Path, int, int], Cycle]] = {
        "kjumpd": kjumpd_cycle, "swsusp": swsusp_cycle,
        "kjumpd-zero-free": lambda *a: kjumpd_cycle(*a, zero_free=True)}
    cycles: list[Cycle] = []
    failures: list[str] = []
    for run in range(1, args.runs + 1):
        for system in systems:
            try:
                cycle = cycle_of[system](config, pristine, run, args.age)
            except VMError as exc:      # one failed cycle (a TCG timer panic, say) does not end the run
                failures.append(f"{system} run {run}: {exc}")
                print(f"bench/vm.py: {failures[-1]}", file=sys.stderr, flush=True)
                continue
            cycles.append(cycle)
            print(f"{system} run {run}: image {cycle.image_bytes / 2**20:.1f} MiB, hibernate "
                  f"{cycle.hibernate_seconds:.1f} s, resume {cycle.resume_seconds:.1f} s, {cycle.notes}", flush=True)
    result = medians(cycles)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": result, "cycles": [c.__dict__ for c in cycles],
                                               "failures": failures, "runs": args.runs, "age_mib": args.age,
                                               "logs": str(logdir)}, indent=2))
    print(f"logs: {logdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
