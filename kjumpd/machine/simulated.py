"""The simulated machine: a directory standing for a computer (docs/machine.md).

Files in the directory:

``machine.json``  the hardware: RAM size, CPUs, firmware digest, machine id,
                  kernel release, filesystems, boot parameters, injected faults
``state.json``    what runs now (A, B, C, R or off), the boot id, the loaded
                  kexec image, the jump in progress, registered workload pids
``ram``           A's RAM from physical address 0 (a sparse file)
``iomem``         the ``/proc/iomem`` text of the machine
``disk.img``      the default image target
``events.log``    one JSON object a line: kexec loads, jumps, power events, freezes
``console.log``   what the B, C and R programs printed
``wake``          a FIFO: R (or a normal boot) tells a waiting A what happened
``region.saved``  A's contents of the B region while a kernel runs there

A jump runs the B program (``python -m kjumpd.boot.save``) or the R program
(``python -m kjumpd.boot.restore``) in a process, with the kernel command
line the real kernel would get. A kernel that leaves (jump back, power off,
reboot) ends its process, as it never returns on a real machine.
Registered workload processes are stopped (SIGSTOP) while A is away.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import seal
from ..errors import ImageError, MachineError
from ..kexec import LoadSpec, check_files
from ..memmap import Range
from ..physmem import FileMemory, PhysicalMemory
from ..target import ImageTarget
from .base import Fingerprint, Machine, MachineLostError

MACHINE_FILE = "machine.json"
STATE_FILE = "state.json"
RAM_FILE = "ram"
IOMEM_FILE = "iomem"
TARGET_FILE = "disk.img"
EVENTS_FILE = "events.log"
CONSOLE_FILE = "console.log"
WAKE_FIFO = "wake"
REGION_FILE = "region.saved"
KERNEL_FILE = "hibernate-kernel"
INITRD_FILE = "hibernate-initrd.img"

# A's kexec control page: the jump-back entry lies in it (+0xfb as on x86).
CONTROL_PAGE = 0x200000
ENTRY_OFFSET = 0xFB
CONTROL_MAGIC = b"KJSIMCTL"
# RAM a simulated workload may use for its state (inside A's saved memory).
WORKLOAD_AREA = (0x400000, 1 << 20)
# What B's kernel leaves in the region while it runs there.
B_PATTERN = b"B-KERNEL-MEMORY!"
# The top of RAM the firmware keeps (ACPI tables in a QEMU guest).
FIRMWARE_RESERVED = 128 << 10

FAULTS = {
    "kexec_load_error": "kexec load fails with this message",
    "ram_read_error_at": "reading this physical address fails (B's save fails)",
    "power_cut_after_bytes": "the power goes after B read this many bytes of RAM",
    "crash_after_bytes": "B's kernel panics after reading this many bytes of RAM (and reboots)",
    "suspend_error": "suspend to RAM fails with this message",
    "suspend_power_loss": "the power goes while in S3 (the image must be resumed)",
    "platform_error": "S4 through /dev/snapshot fails with this message",
    "freeze_error": "freezing this mount point fails",
    "suspend_seconds": "how long S3 lasts before the person at the machine wakes it (an alarm may come first)",
    "b_power_error": "powering off or rebooting fails with this message in B (B returns to A)",
    "restore_crashes": "R's kernel panics this many times before its program runs (and reboots)",
    "secret_memory": "a process of A holds memfd_secret memory (this text names it)",
}
# Lines typed at the console when a passphrase is asked, one per question (consumed).
PASSPHRASE_FILE = "console-input"
# The image key of C's initramfs (kjumpd/seal.py); absent: images are not encrypted.
SECRET_KEY_FILE = "image-key.secret"


def default_iomem(ram_size: int) -> str:
    """A QEMU-like /proc/iomem for ``ram_size`` bytes of RAM."""
    top = ram_size - FIRMWARE_RESERVED
    return "\n".join([
        "00000000-00000fff : Reserved",
        "00001000-0009fbff : System RAM",
        "0009fc00-0009ffff : Reserved",
        "000a0000-000bffff : PCI Bus 0000:00",
        "000f0000-000fffff : Reserved",
        "  000f0000-000fffff : System ROM",
        f"00100000-{top - 1:08x} : System RAM",
        "  01000000-01bfffff : Kernel code",
        f"{top:08x}-{ram_size - 1:08x} : Reserved",
        "fec00000-fec003ff : IOAPIC 0",
        "",
    ])


@dataclass(frozen=True)
class BootResult:
    """What a power-on of the simulated machine did."""

    resumed: bool         # C found an image and R jumped into A
    exit_code: int        # of the C hook (and R, which replaced it)
    output: str           # what C and R printed


# The simulated machine's user space, as the cgroup freezer sees it.
SIMULATED_UNITS = ("user.slice",)


def _python() -> str:
    return sys.executable or "/usr/bin/python3"


def _flush_and_exit(code: int) -> None:
    """End this kernel's process at once, as a kernel that jumped away never returns."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _SimulatedRam(FileMemory):
    """The ``ram`` file with the injected read faults."""

    def __init__(self, path: str, *, writable: bool, faults: dict[str, Any]) -> None:
        super().__init__(path, writable=writable)
        self._error_at = faults.get("ram_read_error_at")
        self._cut_after = faults.get("power_cut_after_bytes")
        self._crash_after = faults.get("crash_after_bytes")
        self._read_bytes = 0
        self._lock = threading.Lock()

    def read(self, address: int, length: int) -> bytes:
        """Read, failing or cutting the power where a fault says so."""
        if self._error_at is not None and address <= self._error_at < address + length:
            raise ImageError(f"machine check reading physical memory at {self._error_at:#x}")
        with self._lock:
            self._read_bytes += length
            done = self._read_bytes
        if self._cut_after is not None and done > self._cut_after:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._crash_after is not None and done > self._crash_after:
            print("Kernel panic - not syncing: simulated fault in the hibernate kernel", flush=True)
            os._exit(134)
        return super().read(address, length)


class SimulatedMachine(Machine):
    """A computer made of files; see the module documentation."""

    kind = "simulated"

    def __init__(self, path: str, *, kernel: str = "A", wake_timeout: float | None = None) -> None:
        self.path = os.path.abspath(path)
        self.kernel = kernel
        # How long a simulated A waits to be resumed; None waits for ever, as
        # a real A does. Tests set it so a bug cannot hang them.
        self.wake_timeout = wake_timeout
        if not os.path.isfile(self._file(MACHINE_FILE)):
            raise MachineError(f"{self.path} is not a simulated machine (no {MACHINE_FILE}); "
                               "create one with SimulatedMachine.create()")
        with open(self._file(MACHINE_FILE), encoding="utf-8") as handle:
            self.hardware: dict[str, Any] = json.load(handle)

    # --- creation and files -----------------------------------------------

    @classmethod
    def create(cls, path: str, *, ram_size: int = 64 << 20, cpus: int = 2, target_size: int | None = None,
               firmware: str = "simulated-firmware-1", filesystems: Sequence[str] = ("/", "/home"),
               machine_id: str | None = None, kernel_release: str = "6.12.117-kjump-sim",
               boot_parameters: str | None = None) -> SimulatedMachine:
        """Make a powered-on simulated machine in ``path`` (created if missing) and return it.

        The image target ``disk.img`` defaults to the RAM size plus 8 MiB and is
        initialised as a kjumpd target; the hibernate kernel and initramfs are placeholder files (nothing boots them).
        ``boot_parameters`` (what every boot's command line carries) default to
        naming that target, kernel and initramfs for the resume hook.
        """
        if ram_size % (1 << 20) or ram_size < 16 << 20:
            raise MachineError("the simulated RAM size must be a multiple of 1 MiB and at least 16 MiB")
        os.makedirs(path, exist_ok=True)
        path = os.path.abspath(path)
        if boot_parameters is None:
            boot_parameters = (f"kjump.resume={os.path.join(path, TARGET_FILE)} "
                               f"kjump.kernel={os.path.join(path, KERNEL_FILE)} "
                               f"kjump.initrd={os.path.join(path, INITRD_FILE)}")
        hardware = {
            "ram_size": ram_size, "cpus": cpus, "firmware": firmware,
            "machine_id": machine_id or uuid.uuid4().hex, "kernel_release": kernel_release,
            "filesystems": list(filesystems), "boot_parameters": boot_parameters, "faults": {},
        }
        with open(os.path.join(path, MACHINE_FILE), "w", encoding="utf-8") as handle:
            json.dump(hardware, handle, indent=2)
        with open(os.path.join(path, IOMEM_FILE), "w", encoding="ascii") as handle:
            handle.write(default_iomem(ram_size))
        with open(os.path.join(path, RAM_FILE), "wb") as handle:
            handle.truncate(ram_size)
        with open(os.path.join(path, TARGET_FILE), "wb") as handle:
            handle.truncate(target_size if target_size is not None else ram_size + (8 << 20))
        with ImageTarget.open_unclaimed(os.path.join(path, TARGET_FILE)) as target:
            target.initialise()         # as `kjumpctl target init` does on a real machine
        for name in (KERNEL_FILE, INITRD_FILE):
            with open(os.path.join(path, name), "w", encoding="ascii") as handle:
                handle.write("placeholder: the simulated machine runs kjumpd's programs, not a kernel\n")
        fifo = os.path.join(path, WAKE_FIFO)
        if not os.path.exists(fifo):
            os.mkfifo(fifo, 0o600)
        machine = cls(path)
        machine._save_state({"boot_count": 1, "boot_id": uuid.uuid4().hex, "running": "A", "kexec": None,
                             "a_kexec": None, "kexec_stale": False, "jump": None, "workload": []})
        machine.record("power-on", boot=1, outcome="normal")
        return machine

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def target_path(self) -> str:
        """The default image target of this machine."""
        return self._file(TARGET_FILE)

    @property
    def kernel_path(self) -> str:
        """Placeholder hibernate kernel to configure."""
        return self._file(KERNEL_FILE)

    @property
    def initrd_path(self) -> str:
        """Placeholder initramfs to configure."""
        return self._file(INITRD_FILE)

    def kjumpd_config(self, *, region_size: str = "16M", restart_point: str = "shutdown") -> str:
        """The text of a kjumpd.conf that drives this machine (tests and the demo)."""
        return (f"[Machine]\nType=simulated\nPath={self.path}\n\n"
                f"[Image]\nTarget={self.target_path}\nCompression=lz4\n\n"
                f"[HibernateKernel]\nKernel={self.kernel_path}\nInitrd={self.initrd_path}\n"
                f"RegionSize={region_size}\n\n"
                f"[Sleep]\nHibernateRestartPoint={restart_point}\n")

    def _state(self) -> dict[str, Any]:
        with open(self._file(STATE_FILE), encoding="utf-8") as handle:
            return json.load(handle)

    def _save_state(self, state: dict[str, Any]) -> None:
        temp = self._file(f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}")
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
        os.replace(temp, self._file(STATE_FILE))

    def _update(self, **changes: Any) -> dict[str, Any]:
        state = self._state()
        state.update(changes)
        self._save_state(state)
        return state

    def record(self, event: str, **details: Any) -> None:
        """Append an event to ``events.log``."""
        line = json.dumps({"event": event, "kernel": self.kernel, **details}, sort_keys=True)
        with open(self._file(EVENTS_FILE), "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far, oldest first."""
        try:
            with open(self._file(EVENTS_FILE), encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def console_output(self) -> str:
        """Everything the B, C and R programs printed."""
        try:
            with open(self._file(CONSOLE_FILE), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> str:
        """Which kernel runs now: A, B, C, R or off."""
        return str(self._state()["running"])

    def inject_fault(self, name: str, value: Any) -> None:
        """Make the machine fail in one of the ways of :data:`FAULTS` (value None clears it)."""
        if name not in FAULTS:
            raise MachineError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
        faults = self.hardware.setdefault("faults", {})
        if value is None:
            faults.pop(name, None)
        else:
            faults[name] = value
        with open(self._file(MACHINE_FILE), "w", encoding="utf-8") as handle:
            json.dump(self.hardware, handle, indent=2)

    def _fault(self, name: str) -> Any:
        return self.hardware.get("faults", {}).get(name)

    @property
    def secret_key_path(self) -> str:
        """Where C's initramfs of this machine keeps the image key (``kjumpctl key init --secret-key``)."""
        return self._file(SECRET_KEY_FILE)

    def secret_memory_problems(self) -> list[str]:
        """The ``secret_memory`` fault, as the real machine words it."""
        holder = self._fault("secret_memory")
        return [f"{holder} holds memfd_secret memory, which must never be written to a disk"] if holder else []

    def ask_password(self, prompt: str) -> bytearray | None:
        """The next line of ``console-input`` in the machine directory; None when there is none left."""
        self.console(prompt)
        try:
            with open(self._file(PASSPHRASE_FILE), "rb") as handle:
                lines = handle.read().split(b"\n")
        except FileNotFoundError:
            return None
        if not lines or lines == [b""]:
            return None
        with open(self._file(PASSPHRASE_FILE), "wb") as handle:
            handle.write(b"\n".join(lines[1:]))
        return bytearray(lines[0])

    def handed_key(self) -> bytearray | None:
        """The key archive at the front of the initrd C loaded R with, as R's kernel would unpack it."""
        entry = self._state()["kexec"]
        if not entry:
            return None
        try:
            with open(entry["initrd"], "rb") as handle:
                return seal.key_from_archive(handle.read(4096))
        except OSError:
            return None

    # --- workloads --------------------------------------------------------

    def register_workload(self, pid: int) -> None:
        """A process of A that is stopped while A is away and carries on after."""
        state = self._state()
        if pid not in state["workload"]:
            state["workload"].append(pid)
            self._save_state(state)

    def workload_area(self) -> tuple[int, int]:
        """(address, size) of RAM a workload may keep its state in; it is saved and restored."""
        return WORKLOAD_AREA

    def _signal_workload(self, sig: signal.Signals) -> None:
        self.record("workload-signal", signal=sig.name)
        for pid in self._state()["workload"]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue

    # --- memory and identity ----------------------------------------------

    def physical_memory(self, *, writable: bool = False) -> PhysicalMemory:
        """The ``ram`` file (with the injected read faults)."""
        return _SimulatedRam(self._file(RAM_FILE), writable=writable, faults=self.hardware.get("faults", {}))

    def iomem(self) -> str:
        """The ``iomem`` file."""
        with open(self._file(IOMEM_FILE), encoding="ascii") as handle:
            return handle.read()

    def boot_id(self) -> str:
        """Changes at every power-on; a resumed A gets its own back."""
        return str(self._state()["boot_id"])

    def machine_id(self) -> str:
        """From machine.json."""
        return str(self.hardware["machine_id"])

    def kernel_release(self) -> str:
        """From machine.json."""
        return str(self.hardware["kernel_release"])

    def fingerprint(self) -> Fingerprint:
        """CPUs and firmware from machine.json, RAM from iomem."""
        return Fingerprint(int(self.hardware["cpus"]), tuple(self.system_ram()), str(self.hardware["firmware"]))

    def kernel_command_line(self) -> str:
        """The boot parameters of machine.json, with this machine named."""
        return f"kjump.machine=simulated:{self.path} {self.hardware.get('boot_parameters', '')}".strip()

    # --- kexec ------------------------------------------------------------

    def kexec_load(self, spec: LoadSpec) -> None:
        """Check the image as the kernel would and record it as loaded."""
        check_files(spec)
        message = self._fault("kexec_load_error")
        if message:
            raise MachineError(f"kexec load failed: {message}")
        ram = self.system_ram()
        total = sum(r.size for r in ram)
        if not any(r.start <= spec.region.start and spec.region.end <= r.end for r in ram):
            raise MachineError(f"kexec load failed: region {spec.region} is not inside System RAM")
        if spec.preserve_context and spec.region.size > total // 2:
            raise MachineError("kexec load failed: Cannot allocate memory (region exceeds half of RAM)")
        entry = {**asdict(spec), "region": [spec.region.start, spec.region.end]}
        self._update(kexec=entry, kexec_stale=False)
        self.record("kexec-load", preserve_context=spec.preserve_context, command_line=spec.command_line)

    def kexec_unload(self) -> None:
        """Forget the loaded image."""
        self._update(kexec=None, kexec_stale=False)
        self.record("kexec-unload")

    def kexec_loaded(self) -> bool:
        """True when an image is recorded as loaded."""
        return self._state()["kexec"] is not None

    @staticmethod
    def _spec(entry: dict[str, Any]) -> LoadSpec:
        return LoadSpec(entry["kernel"], entry["initrd"], entry["command_line"],
                        Range(*entry["region"]), entry["preserve_context"])

    def kexec_execute(self) -> str:
        """Jump: A → B runs the save program and waits; C → R replaces this process by R."""
        state = self._state()
        if state["kexec"] is None:
            raise MachineError("kexec -e: no kexec image is loaded")
        spec = self._spec(state["kexec"])
        if not spec.preserve_context:
            self._exec_restore(spec)
        if state["kexec_stale"]:
            self.record("crash", why="the staged hibernate kernel was overwritten by a resume from disk")
            self._update(running="off")
            self._wait_for_resume(lambda: self.power_on())
            return ""
        self._jump_to_b(spec)
        return ""

    def _exec_restore(self, spec: LoadSpec) -> None:
        self.record("jump", to="R")
        self._update(running="R")
        crashes = int(self._fault("restore_crashes") or 0)
        if crashes:
            self.inject_fault("restore_crashes", crashes - 1 or None)
            self.record("crash", why="R's kernel panicked before the restore program ran")
            self._update(running="off")
            self.power_on()
            _flush_and_exit(0)
        command_line = f"{spec.command_line} kjump.machine=simulated:{self.path}"
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            os.execv(_python(), [_python(), "-m", "kjumpd.boot.restore", "--cmdline", command_line])
        except OSError as exc:
            self._update(running=self.kernel)
            raise MachineError(f"kexec -e: cannot start the restore kernel: {exc.strerror}") from exc

    def _open_wake(self) -> int:
        fd = os.open(self._file(WAKE_FIFO), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        return fd

    def _wake(self, message: str) -> None:
        """Tell a waiting A what happened (nobody may be waiting)."""
        try:
            fd = os.open(self._file(WAKE_FIFO), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise
        try:
            os.write(fd, (message.replace("\n", " ") + "\n").encode())
        finally:
            os.close(fd)

    def _jump_to_b(self, spec: LoadSpec) -> None:
        state = self._state()
        wake = self._open_wake()
        try:
            nonce = secrets.token_hex(8)
            entry = CONTROL_PAGE + ENTRY_OFFSET
            with FileMemory(self._file(RAM_FILE), writable=True) as ram:
                ram.write(CONTROL_PAGE, CONTROL_MAGIC + nonce.encode())
                with open(self._file(REGION_FILE), "wb") as saved:
                    saved.write(ram.read(spec.region.start, spec.region.size))
                pattern = B_PATTERN * (spec.region.size // len(B_PATTERN))
                ram.write(spec.region.start, pattern)
            self._update(running="B", a_kexec=state["kexec"],
                         jump={"entry": entry, "nonce": nonce, "boot_id": state["boot_id"],
                               "region": [spec.region.start, spec.region.end]})
            self._signal_workload(signal.SIGSTOP)
            self.record("jump", to="B")
            command_line = (f"{spec.command_line} kjump.machine=simulated:{self.path} "
                            f"kexec_jump_back_entry=0x{entry:016x}")
            with open(self._file(CONSOLE_FILE), "ab") as console:
                rc = subprocess.run([_python(), "-m", "kjumpd.boot.save", "--cmdline", command_line],
                                    stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    check=False).returncode
            running = self.running
            if running == "A":
                self._back_in_a()
                return
            if rc == -signal.SIGKILL:
                self.record("power-cut", during="B")
                self._update(running="off")
                self._wait(wake)
            elif running == "B":
                # B died without jumping: its kernel panics and reboots (panic=10).
                self.record("crash", kernel_exit=rc)
                self._update(running="off")
                self.power_on()
                self._wait(wake)
            else:
                self._wait(wake)
        finally:
            os.close(wake)

    def _wait_for_resume(self, after: Any) -> None:
        """Wait, as a powered-off A, until R jumps into A; ``after`` powers the machine on when needed."""
        wake = self._open_wake()
        try:
            if after is not None:
                after()
            self._wait(wake)
        finally:
            os.close(wake)

    def _wait(self, fd: int) -> None:
        """Block until the wake FIFO says A was resumed; MachineLostError if it never will be."""
        line = b""
        deadline = None if self.wake_timeout is None else time.monotonic() + self.wake_timeout
        while not line.endswith(b"\n"):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                self._signal_workload(signal.SIGKILL)
                raise MachineLostError(f"the simulated machine was not powered on within {self.wake_timeout} s")
            try:
                line += os.read(fd, 1)
            except BlockingIOError:
                continue
        message = line.decode().strip()
        if message == "resumed":
            self._back_in_a()
            return
        self._signal_workload(signal.SIGKILL)
        raise MachineLostError(message.partition(":")[2].strip() or message)

    def _back_in_a(self) -> None:
        """A runs again: its relocation code swaps the region back, user space is thawed."""
        state = self._state()
        region = Range(*state["jump"]["region"])
        with FileMemory(self._file(RAM_FILE), writable=True) as ram, open(self._file(REGION_FILE), "rb") as saved:
            ram.write(region.start, saved.read(region.size))
        self._signal_workload(signal.SIGCONT)
        self.record("running", kernel_now="A")

    def jump_back(self, entry: int) -> None:
        """From B or R: enter A if ``entry`` reaches A's control page, else the machine resets."""
        state = self._state()
        jump = state.get("jump") or {}
        with FileMemory(self._file(RAM_FILE)) as ram:
            page = ram.read(CONTROL_PAGE, len(CONTROL_MAGIC) + 16)
        if entry != jump.get("entry") or page != CONTROL_MAGIC + str(jump.get("nonce", "")).encode():
            why = (f"the jump to {entry:#x} did not reach A's control page "
                   "(A's memory is not what it was): the machine reset")
            self.record("crash", why=why)
            self._update(running="A", kexec=None, boot_outcome="reset")
            self._wake(f"lost: {why}")
            _flush_and_exit(0)
        resumed = self.kernel == "R"
        self._update(running="A", boot_id=jump["boot_id"], kexec=state["a_kexec"], kexec_stale=resumed,
                     boot_outcome="resumed" if resumed else None)
        self.record("jump", to="A")
        if resumed:
            self._wake("resumed")
        _flush_and_exit(0)

    # --- power ------------------------------------------------------------

    def _leave(self, event: str) -> None:
        """This kernel switches the machine off: B/C/R end; A waits to be resumed from the image."""
        self.record(event)
        self._update(running="off")
        if self.kernel != "A":
            _flush_and_exit(0)

    def _b_power_error(self, what: str) -> None:
        message = self._fault("b_power_error")
        if message and self.kernel == "B":
            raise MachineError(f"{what} failed: {message}")

    def power_off(self) -> None:
        """S5. In A, returns only once the image was resumed (see docs/machine.md)."""
        self._b_power_error("power off")
        if self.kernel == "A":
            self._wait_for_resume(lambda: self._leave("power-off"))
        else:
            self._leave("power-off")

    def reboot(self) -> None:
        """Power-cycle at once: the next boot runs C."""
        self._b_power_error("reboot")
        if self.kernel == "A":
            self._wait_for_resume(lambda: (self._leave("reboot"), self.power_on()))
            return
        self.record("reboot")
        self._update(running="off")
        self.power_on()
        _flush_and_exit(0)

    def suspend_to_ram(self, alarm: float | None = None) -> bool:
        """S3: recorded; returns at the wake-up (or waits for a resume when the power goes).

        The sleep lasts ``suspend_seconds`` (simulated time; 0 unless set)
        unless the alarm comes first: then the alarm wakes the machine.
        """
        message = self._fault("suspend_error")
        if message:
            raise MachineError(f"suspend to RAM failed: {message}")
        if alarm is not None:
            self.record("wake-alarm", seconds=alarm)
        self.record("suspend-to-ram")
        if self._fault("suspend_power_loss"):
            self._wait_for_resume(lambda: self._leave("power-cut"))
            return False
        by_alarm = alarm is not None and float(self._fault("suspend_seconds") or 0) >= alarm
        self.record("wake-from-ram", by="alarm" if by_alarm else "user")
        return by_alarm

    def swsusp_problems(self) -> list[str]:
        """The simulated kernel's own hibernation works when ``machine.json`` says ``"swsusp": true``."""
        return [] if self.hardware.get("swsusp") else ["the simulated kernel cannot hibernate by itself"]

    def hibernate_platform(self) -> None:
        """S4 through the simulated /dev/snapshot: like power_off, recorded as S4."""
        message = self._fault("platform_error")
        if message:
            raise MachineError(f"entering S4 through /dev/snapshot failed: {message}")
        if self.kernel == "A":
            self._wait_for_resume(lambda: self._leave("platform-s4"))
        else:
            self._leave("platform-s4")

    def power_cut(self) -> None:
        """Pull the plug on whatever runs (a test or demo step); RAM is lost at the next power-on."""
        self.record("power-cut")
        self._update(running="off")

    def power_on(self) -> BootResult:
        """Cold boot: RAM is wiped, the boot id changes and C's resume hook runs.

        Returns when the boot is complete: either R jumped into A (a waiting A
        carries on) or C let the normal boot go on (a waiting A is told that it
        is lost).
        """
        state = self._state()
        if state["running"] != "off":
            raise MachineError(f"the simulated machine is running ({state['running']}); it must be off to power on")
        with open(self._file(RAM_FILE), "r+b") as ram:
            ram.truncate(0)
            ram.truncate(int(self.hardware["ram_size"]))
        boot = int(state["boot_count"]) + 1
        self._update(running="C", boot_count=boot, boot_id=uuid.uuid4().hex, kexec=None, kexec_stale=False,
                     boot_outcome=None)
        self.record("power-on", boot=boot)
        result = subprocess.run([_python(), "-m", "kjumpd.boot.resume", "--cmdline", self.kernel_command_line(),
                                 "--secret-key", self.secret_key_path],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        output = result.stdout + result.stderr
        with open(self._file(CONSOLE_FILE), "a", encoding="utf-8") as console:
            console.write(output)
        if self._state().get("boot_outcome") == "resumed":
            self.record("boot-done", boot=boot, outcome="resumed")
            return BootResult(True, result.returncode, output)
        lines = [line for line in output.splitlines() if line.strip()]
        why = lines[-1] if lines else f"the resume hook exited with status {result.returncode}"
        self._update(running="A")
        self.record("boot-done", boot=boot, outcome="normal")
        self._wake(f"lost: the machine booted normally: {why}")
        return BootResult(False, result.returncode, output)

    # --- block devices and filesystems -----------------------------------

    def resolve_target(self, name: str) -> str:
        """A path, relative paths taken in the machine's directory."""
        path = name if os.path.isabs(name) else self._file(name)
        if not os.path.exists(path):
            raise MachineError(f"image target {name} not found")
        return path

    def stable_target_id(self, path: str) -> str:
        """Files have stable names here: relative to the machine's directory when inside it."""
        resolved = os.path.abspath(self.resolve_target(path))
        relative = os.path.relpath(resolved, self.path)
        return resolved if relative.startswith("..") else relative

    def sync_filesystems(self) -> None:
        """Record a sync."""
        self.record("sync")

    def freeze_filesystems(self) -> list[str]:
        """Record freezing each configured filesystem (deepest first); the state remembers what is frozen."""
        frozen: list[str] = []
        failing = self._fault("freeze_error")
        for mount in sorted(self.hardware.get("filesystems", []), key=lambda p: (-p.rstrip("/").count("/"), p)):
            if mount == failing:
                problems = self.thaw_filesystems(frozen)
                raise MachineError(f"cannot freeze {mount}: Device or resource busy"
                                   + ("; " + "; ".join(problems) if problems else ""))
            self.record("freeze", mount=mount)
            frozen.append(mount)
            self._update(frozen=self.frozen_filesystems() + [mount])
        return frozen

    def thaw_filesystems(self, mounts: Sequence[str]) -> list[str]:
        """Record thawing, in reverse order."""
        for mount in reversed(list(mounts)):
            self.record("thaw", mount=mount)
            self._update(frozen=[m for m in self.frozen_filesystems() if m != mount])
        return []

    def frozen_filesystems(self) -> list[str]:
        """The filesystems frozen now, in the order they were frozen (the kernel's state, kept in ``state.json``)."""
        return list(self._state().get("frozen", []))

    def freeze_user_space(self) -> list[str]:
        """Record stopping the simulated user space (one slice; the state remembers it)."""
        self.record("freeze-user-space", units=list(SIMULATED_UNITS))
        self._update(frozen_units=list(SIMULATED_UNITS))
        return list(SIMULATED_UNITS)

    def thaw_user_space(self, units: Sequence[str]) -> list[str]:
        """Record thawing the units."""
        if units:
            self.record("thaw-user-space", units=list(reversed(list(units))))
            self._update(frozen_units=[u for u in self._state().get("frozen_units", []) if u not in units])
        return []

    def frozen_units(self) -> list[str]:
        """The units frozen now (the cgroup freezer's state, kept in ``state.json``)."""
        return list(self._state().get("frozen_units", []))

    def thaw_left_frozen(self) -> list[str]:
        """Thaw whatever is still frozen (a daemon that died between freeze and thaw)."""
        frozen, units = self.frozen_filesystems(), self.frozen_units()
        self.thaw_filesystems(frozen)
        self.thaw_user_space(units)
        return frozen + units


def main(argv: list[str] | None = None) -> int:
    """``python -m kjumpd.machine.simulated COMMAND DIR``: drive a simulated machine by hand."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kjumpd.machine.simulated",
                                     description="Create and drive a simulated machine (docs/machine.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a new, running machine")
    create.add_argument("--ram", type=int, default=64, help="RAM in MiB (default 64)")
    create.add_argument("--cpus", type=int, default=2)
    for name, text in (("power-on", "cold boot: the resume hook runs"), ("power-cut", "pull the plug"),
                       ("status", "what runs, and the events so far")):
        sub.add_parser(name, help=text)
    for action in sub.choices.values():
        action.add_argument("path", help="the machine's directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            machine = SimulatedMachine.create(args.path, ram_size=args.ram << 20, cpus=args.cpus)
            print(f"created {machine.path}: image target {machine.target_path}")
            return 0
        machine = SimulatedMachine(args.path)
        if args.command == "power-on":
            boot = machine.power_on()
            print(boot.output, end="")
            print("resumed the hibernated system" if boot.resumed else "normal boot")
        elif args.command == "power-cut":
            machine.power_cut()
        else:
            print(f"running: {machine.running}")
            for event in machine.events():
                print(json.dumps(event, sort_keys=True))
    except MachineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
