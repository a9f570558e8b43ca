"""QEMU (TCG) runner and the serial-console driver of the VM test.

One :class:`Boot` is one QEMU process: ``-accel tcg -cpu max``, two virtio
disks (A's root file system, the image target), ``-no-reboot`` so that any
reboot or power-off ends the process. ttyS0 is the guest's kernel console and
the test agent (QEMU's stdio); ttyS1 is kjumpd's log (a file). Every line of
ttyS0 is written to ``<name>.log`` with the host seconds since QEMU started.

:class:`Agent` runs shell commands in the guest through ttyS0: it sends
``(cmd) </dev/null; printf '@@<id>:%d@@\\n' $?`` and waits for the marker.
A command that is still running when the guest hibernates (``kjumpctl
hibernate --wait``) prints its marker in a *later* boot, after the resume;
:meth:`Agent.start` and :meth:`Agent.wait` split the two halves for that.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


class VMError(AssertionError):
    """Something in the guest did not happen in time (an assertion for pytest)."""


@dataclass
class VMConfig:
    kernel: Path
    root_disk: Path
    image_disk: Path
    logdir: Path
    memory: str = "1G"
    smp: int = 2
    append: str = ""
    initrd: Path | None = None    # A's/C's early initramfs (the resume check runs there)

    def command(self, name: str) -> list[str]:
        append = ("console=ttyS0 root=/dev/vda ro rootfstype=ext4 rootwait panic=-1 "
                  f"init=/sbin/init {self.append}").strip()
        return [
            QEMU, "-accel", "tcg", "-cpu", "max", "-m", self.memory, "-smp", str(self.smp),
            "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-serial", f"file:{self.logdir / (name + '-ttyS1.log')}",
            "-kernel", str(self.kernel), "-append", append,
            *(["-initrd", str(self.initrd)] if self.initrd else []),
            "-drive", f"file={self.root_disk},if=virtio,format=raw,cache=unsafe",
            "-drive", f"file={self.image_disk},if=virtio,format=raw,cache=writeback",
            "-d", "guest_errors,cpu_reset", "-D", str(self.logdir / (name + "-qemu.log")),
        ]


class Boot:
    """One QEMU process and its console transcript."""

    def __init__(self, config: VMConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.log_path = config.logdir / f"{name}.log"
        self.started = time.monotonic()
        self._text = ""          # whole console output, \r removed
        self._cond = threading.Condition()
        self._log = open(self.log_path, "w", buffering=1)
        self._log.write(f"# {' '.join(config.command(name))}\n")
        self.proc = subprocess.Popen(config.command(name), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"console-{name}", daemon=True)
        self._reader.start()

    # transcript -------------------------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            text = "".join(line.decode("utf-8", "replace").replace("\r", "") + "\n" for line in lines)
            if text:
                now = time.monotonic() - self.started
                for line in text.splitlines():
                    self._log.write(f"{now:8.3f}| {line}\n")
                with self._cond:
                    self._text += text
                    self._cond.notify_all()
        if buf:
            rest = buf.decode("utf-8", "replace").replace("\r", "")
            self._log.write(f"{time.monotonic() - self.started:8.3f}| {rest}\n")
            with self._cond:
                self._text += rest + "\n"
        self.proc.wait()
        self._log.write(f"# qemu exit status {self.proc.returncode} after "
                        f"{time.monotonic() - self.started:.1f} s\n")
        self._log.flush()
        with self._cond:
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def position(self) -> int:
        return len(self.text)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str | re.Pattern, timeout: float, *, start: int = 0,
                 what: str = "", fail: str | re.Pattern | None = None) -> re.Match:
        """Wait until ``pattern`` appears in the transcript after ``start``.

        Raises VMError on timeout, when QEMU exits first, or when ``fail``
        appears first (a kernel panic, say)."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        frx = re.compile(fail, re.M) if isinstance(fail, str) else fail
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._text, start)
                if m:
                    return m
                if frx:
                    fm = frx.search(self._text, start)
                    if fm:
                        raise VMError(f"{what or rx.pattern}: saw {fm.group(0)!r} first "
                                      f"({self.log_path})")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise VMError(f"{what or rx.pattern}: QEMU exited with status {self.proc.returncode} "
                                  f"before it appeared ({self.log_path})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VMError(f"{what or rx.pattern}: not seen within {timeout:.0f} s ({self.log_path})")
                self._cond.wait(min(left, 1.0))

    def wait_exit(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VMError(f"QEMU still running after {timeout:.0f} s ({self.log_path})") from None
        self._reader.join(10)
        return self.proc.returncode

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._reader.join(10)

    def close(self) -> None:
        self.kill()
        try:
            self._log.close()
        except Exception:
            pass

    def ttys1(self) -> str:
        p = self.config.logdir / f"{self.name}-ttyS1.log"
        return p.read_text(errors="replace") if p.exists() else ""


_ids = itertools.count(1)


class Agent:
    """Runs shell commands in the guest over ttyS0 (see the module docstring)."""

    MARK = "@@{id}:(-?\\d+)@@"

    def __init__(self, boot: Boot) -> None:
        self.boot = boot

    def start(self, cmd: str) -> tuple[str, int]:
        """Send ``cmd``; return (marker id, transcript position) for :meth:`wait`."""
        ident = f"k{next(_ids)}x{os.getpid()}"
        pos = self.boot.position()
        # One line; the marker's text only appears once printf has run.
        self.boot.send(f"( {cmd} ) </dev/null 2>&1; printf '@@%s:%d@@\\n' {ident} $?\n")
        return ident, pos

    def handshake(self, timeout: float = 60) -> float:
        """Say hello until the agent answers (input sent before it listened may be lost)."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            ident = f"hello{next(_ids)}"
            pos = self.boot.position()
            self.boot.send(f"printf '@@%s:0@@\\n' {ident}\n")
            try:
                self.boot.wait_for(self.MARK.format(id=ident), min(5.0, max(0.1, deadline - time.monotonic())),
                                   start=pos, what="agent hello")
                return time.monotonic() - started
            except VMError:
                if time.monotonic() >= deadline or not self.boot.alive():
                    raise VMError(f"the guest's agent did not answer on ttyS0 within {timeout:.0f} s "
                                  f"({self.boot.log_path})") from None

    def wait(self, ident: str, pos: int, timeout: float, *, boot: Boot | None = None,
             fail: str | None = None) -> tuple[int, str]:
        """Wait for the marker (possibly in another boot); return (status, output)."""
        b = boot or self.boot
        m = b.wait_for(self.MARK.format(id=re.escape(ident)), timeout, start=pos if boot is None else 0,
                       what=f"command {ident}", fail=fail)
        out = b.text[(pos if boot is None else 0):m.start()]
        lines = [ln for ln in out.splitlines() if not KERNEL_LINE.match(ln)]
        return int(m.group(1)), "\n".join(lines).strip()

    def run(self, cmd: str, timeout: float = 120, *, check: bool = True) -> tuple[int, str]:
        ident, pos = self.start(cmd)
        rc, out = self.wait(ident, pos, timeout)
        if check and rc != 0:
            raise VMError(f"guest command failed with status {rc}: {cmd}\n{out}")
        return rc, out
