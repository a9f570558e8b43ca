"""Fixtures of the VM test (``make vm-test``; every test here is ``pytest.mark.vm``).

* ``vm_kernel``: the test kernel, built once by ``build-kernel.sh`` and cached
  in /var/cache/kjumpd-test (about 20 minutes on 2 cores the first time);
* ``vm_workdir``: disks and staging, under /var/tmp (removed afterwards
  unless KJUMPD_VM_KEEP=1);
* ``vm_logdir``: serial logs, tests/vm/logs/<date-time>/ (kept; gitignored);
* ``ladder``: the step ladder printed at the end of the run.

Environment: KJUMPD_VM_SMP (default 2), KJUMPD_VM_MEM (default 1G),
KJUMPD_VM_COMPRESSION (default lz4), KJUMPD_VM_KEEP=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

KERNEL_BUILD_TIMEOUT = 90 * 60


@dataclass
class Rung:
    name: str
    status: str = "…"
    seconds: float = 0.0
    note: str = ""


@dataclass
class Ladder:
    """The steps of the VM run, their times and outcomes, in order."""

    rungs: list[Rung] = field(default_factory=list)
    logdir: Path | None = None

    @contextmanager
    def step(self, name: str):
        rung = Rung(name)
        self.rungs.append(rung)
        started = time.monotonic()
        try:
            yield rung
        except pytest.skip.Exception as exc:
            rung.status = "SKIP"
            rung.note = rung.note or str(exc)
            raise
        except BaseException as exc:
            rung.status = "FAIL"
            rung.note = (rung.note + "; " if rung.note else "") + (str(exc).splitlines() or [""])[0][:160]
            raise
        else:
            rung.status = "ok"
        finally:
            rung.seconds = time.monotonic() - started
            self.write()

    def skip(self, name: str, why: str) -> None:
        self.rungs.append(Rung(name, "SKIP", 0.0, why))
        self.write()

    def render(self) -> str:
        width = max([len(r.name) for r in self.rungs] + [10])
        lines = [f"{'step':<{width}}  {'result':<6} {'time':>8}  note"]
        for r in self.rungs:
            lines.append(f"{r.name:<{width}}  {r.status:<6} {r.seconds:7.1f}s  {r.note}")
        return "\n".join(lines)

    def write(self) -> None:
        if self.logdir:
            (self.logdir / "ladder.txt").write_text(self.render() + "\n")


_LADDER = Ladder()


@pytest.fixture(scope="session")
def ladder(vm_logdir) -> Ladder:
    _LADDER.logdir = vm_logdir
    return _LADDER


def show_ladder(terminalreporter, ladder: Ladder, title: str, logs: str) -> None:
    """The ladder at the end of the pytest run (the VM test's and the system test's)."""
    if not ladder.rungs:
        return
    terminalreporter.section(title)
    for line in ladder.render().splitlines():
        terminalreporter.write_line(line)
    if ladder.logdir:
        terminalreporter.write_line(f"{logs}: {ladder.logdir}")


def new_run_logdir(base: Path) -> Path:
    """A directory for this run's logs under ``base``, named by the time, with ``latest`` pointing at it."""
    path = base / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    latest = base / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(path.name)
    except OSError:
        pass
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    show_ladder(terminalreporter, _LADDER, "kjumpd VM test: the ladder", "serial logs")


@pytest.fixture(scope="session")
def vm_logdir() -> Path:
    path = new_run_logdir(Path(os.environ.get("KJUMPD_VM_LOGS", HERE / "logs")))
    print(f"\nkjumpd VM test: serial logs in {path}")
    return path


@pytest.fixture(scope="session")
def vm_workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kjumpd-vm-", dir="/var/tmp"))
    yield path
    if os.environ.get("KJUMPD_VM_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"\nkjumpd VM test: disks kept in {path}")


def _require_tools() -> None:
    missing = [t for t in ("qemu-system-x86_64", "mkfs.ext4", "e2fsck", "debugfs", "cpio", "busybox")
               if shutil.which(t) is None and not os.path.exists(f"/bin/{t}")]
    for path in ("/usr/bin/python3", "/sbin/kexec", "/usr/bin/dbus-daemon"):
        if not os.path.exists(path):
            missing.append(path)
    if missing:
        pytest.fail(f"VM test needs {', '.join(missing)}: install packaging/deps/vm.txt", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the VM test builds root file systems and must run as root", pytrace=False)


@pytest.fixture(scope="session")
def vm_kernel(vm_logdir) -> Path:
    """The CONFIG_KEXEC_JUMP test kernel (cached; built on the first run)."""
    _require_tools()
    script = HERE / "build-kernel.sh"
    cached = Path(subprocess.run([str(script), "--path"], capture_output=True, text=True, check=True).stdout.strip())
    if cached.exists():
        return cached
    log = vm_logdir / "kernel-build.log"
    print(f"\nkjumpd VM test: building the test kernel (about 20 min on 2 cores), log {log}")
    with open(log, "w") as out:
        try:
            proc = subprocess.run([str(script)], stdout=subprocess.PIPE, stderr=out, text=True,
                                  timeout=KERNEL_BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kernel build took more than {KERNEL_BUILD_TIMEOUT // 60} min; see {log}", pytrace=False)
    if proc.returncode != 0 or not cached.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"kernel build failed (status {proc.returncode}); {log}:\n{tail}", pytrace=False)
    return cached
