"""The machine interface: everything in kjumpd that touches hardware.

Nothing above this layer knows whether it drives the real machine
(:mod:`kjumpd.machine.real`) or the simulated one
(:mod:`kjumpd.machine.simulated`). The interface is deliberately narrow:
physical memory, the RAM layout, identity, kexec, power states, the image
target, freezing (user space and file systems) and the kernel command line.
Drivers' sysfs ``bind``/``unbind`` are not here: only the daemon's udev
device tracker uses them, on the real machine's devices (docs/machine.md).

Which kernel calls a method matters (docs/machine.md): A stages B, executes
and enters sleep states; B and R read or write A's memory and jump back; C
loads R and executes it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MachineError
from ..format import Identity
from ..kexec import LoadSpec
from ..memmap import Range, layout_fingerprint, parse_iomem
from ..physmem import PhysicalMemory
from ..target import ImageTarget


class MachineLostError(MachineError):
    """A's state is gone: the machine booted normally instead of resuming A.

    Only the simulated machine can raise it (on a real machine that A would
    simply never run again); it tells the simulated A why.
    """


@dataclass(frozen=True)
class Fingerprint:
    """What must be equal for an image to resume on a machine (research: mismatches break A)."""

    cpus: int
    ram: tuple[Range, ...]
    firmware: str  # hex digest of the firmware tables (ACPI table headers and checksums)

    def digest(self) -> bytes:
        """32 bytes identifying CPUs and firmware tables (the RAM layout has its own print)."""
        text = f"kjumpd-machine-v1:cpus={self.cpus};firmware={self.firmware}"
        return hashlib.sha256(text.encode()).digest()


def _hex_id(value: str, what: str) -> bytes:
    cleaned = value.strip().replace("-", "")
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise MachineError(f"{what} {value!r} is not a hexadecimal id") from None
    if len(raw) != 16:
        raise MachineError(f"{what} {value!r} is not 128 bits long")
    return raw


class Machine(ABC):
    """A computer kjumpd can hibernate. Implementations: ``real`` and ``simulated``."""

    kind: str = ""

    # --- memory -----------------------------------------------------------

    @abstractmethod
    def physical_memory(self, *, writable: bool = False) -> PhysicalMemory:
        """A's RAM by physical address (B reads it, R writes it)."""

    @abstractmethod
    def iomem(self) -> str:
        """The ``/proc/iomem`` text of the running kernel."""

    def system_ram(self) -> list[Range]:
        """The machine's System RAM ranges."""
        return parse_iomem(self.iomem())

    # --- identity ---------------------------------------------------------

    @abstractmethod
    def boot_id(self) -> str:
        """The running kernel's boot id (changes at every boot)."""

    @abstractmethod
    def machine_id(self) -> str:
        """The installation's machine id (``/etc/machine-id``)."""

    @abstractmethod
    def kernel_release(self) -> str:
        """``uname -r`` of the running kernel."""

    @abstractmethod
    def fingerprint(self) -> Fingerprint:
        """CPU count, RAM layout and firmware-table checksums."""

    def identity(self) -> Identity:
        """A's identity as the handoff and superblock record it."""
        fp = self.fingerprint()
        return Identity(
            boot_id=_hex_id(self.boot_id(), "boot id"),
            machine_id=_hex_id(self.machine_id(), "machine id"),
            kernel_release=self.kernel_release(),
            layout_fingerprint=layout_fingerprint(fp.ram),
            machine_fingerprint=fp.digest(),
        )

    @abstractmethod
    def kernel_command_line(self) -> str:
        """The running kernel's command line (``/proc/cmdline``)."""

    # --- kexec ------------------------------------------------------------

    @abstractmethod
    def kexec_load(self, spec: LoadSpec) -> None:
        """Load the hibernate kernel (B with preserve-context, or R); MachineError on failure."""

    @abstractmethod
    def kexec_unload(self) -> None:
        """Unload whatever is staged."""

    @abstractmethod
    def kexec_loaded(self) -> bool:
        """True when a kexec image is loaded."""

    @abstractmethod
    def kexec_execute(self) -> str:
        """Jump into the loaded image; returns what kexec said, for diagnostics only.

        For a preserve-context image (A → B) this blocks until control comes
        back to A, as ``kexec -e`` does: B jumped back, or a later boot resumed
        A from the image. Its outcome is read from the superblock, never from
        here. For a plain image (C → R) it does not return on success.
        """

    @abstractmethod
    def jump_back(self, entry: int) -> None:
        """From B or R: jump to A's ``kexec_jump_back_entry``.

        Returns (in B) when A later jumps into the parked B again.
        """

    # --- power ------------------------------------------------------------

    @abstractmethod
    def power_off(self) -> None:
        """Power off (S5) at once; the caller has made its data durable."""

    @abstractmethod
    def reboot(self) -> None:
        """Reboot at once."""

    @abstractmethod
    def suspend_to_ram(self, alarm: float | None = None) -> bool:
        """Enter S3 (``mem``); returns after the wake-up.

        With ``alarm`` (seconds) the real-time clock wakes the machine after
        that long at the latest (suspend-then-hibernate). Returns True when
        the alarm ended the sleep, False when something else woke it first.
        """

    @abstractmethod
    def hibernate_platform(self) -> None:
        """Enter ACPI S4 through ``/dev/snapshot`` without the kernel writing an image.

        Does not return on success (the next time A runs it comes back from
        :meth:`kexec_execute`, resumed from the image); MachineError if the
        platform refused.
        """

    # --- block devices ----------------------------------------------------

    @abstractmethod
    def resolve_target(self, name: str) -> str:
        """The path to open for an image target given by path or stable id."""

    @abstractmethod
    def stable_target_id(self, path: str) -> str:
        """A name for the target that every kernel of this machine resolves the same way."""

    def open_target(self, name: str, *, offset: int = 0, writable: bool = True) -> ImageTarget:
        """Open the image target (ImageError when it is missing or unusable)."""
        return ImageTarget.open(self.resolve_target(name), offset=offset, writable=writable)

    # --- filesystems ------------------------------------------------------

    def swsusp_problems(self) -> list[str]:
        """Why the kernel's own hibernation (swsusp, systemd-sleep) cannot work here; [] when it looks usable.

        kjumpd tells logind to offer hibernation while it is not ready itself
        only when the sleep services' fall-back to systemd-sleep can work.
        """
        return ["the kernel's own hibernation is not available on this machine"]

    def kernel_problems(self) -> list[str]:
        """What the running kernel lacks for a kexec-jump hibernation; [] when nothing is known to be missing."""
        return []

    @abstractmethod
    def sync_filesystems(self) -> None:
        """Write every dirty buffer of every filesystem to its disk (``sync``)."""

    @abstractmethod
    def freeze_filesystems(self) -> list[str]:
        """FIFREEZE every local writable filesystem; returns the mount points frozen, in order.

        On a failure the ones already frozen are thawed again and MachineError is raised.
        """

    @abstractmethod
    def thaw_filesystems(self, mounts: Sequence[str]) -> list[str]:
        """FITHAW ``mounts`` in reverse order; returns error messages (never raises)."""

    @abstractmethod
    def freeze_user_space(self) -> list[str]:
        """Stop user space with the cgroup v2 freezer, except what the jump needs; returns the units frozen.

        Best effort: a unit that cannot be frozen keeps running (the kernel's
        own task freezer still stops it at the jump) and is logged; nothing
        raises. Done before FIFREEZE, so that no process blocks writing to a
        frozen file system, where the kernel's task freezer could not stop it.
        """

    @abstractmethod
    def thaw_user_space(self, units: Sequence[str]) -> list[str]:
        """Thaw ``units`` in reverse order; returns error messages (never raises)."""

    @abstractmethod
    def thaw_left_frozen(self) -> list[str]:
        """Thaw every file system and unit a crashed daemon left frozen; returns what it thawed (never raises).

        Called when the daemon starts: Linux cannot say which file systems
        are frozen, so the real machine tries FITHAW on every freeze
        candidate, which a file system that is not frozen refuses (EINVAL);
        units frozen by the cgroup freezer say so in their ``cgroup.events``.
        """

    def secret_memory_problems(self) -> list[str]:
        """Memory that must never reach a disk (``memfd_secret``) in use, one line per holder; [] when none is known."""
        return []

    # --- keys (docs/encryption.md) ------------------------------------------

    @abstractmethod
    def ask_password(self, prompt: str) -> bytearray | None:
        """Ask the person at the machine for a passphrase (C); None when they give up."""

    @abstractmethod
    def handed_key(self) -> bytearray | None:
        """R: the image's data key C put in R's initramfs, read once (then gone); None when there is none."""

    # --- console ----------------------------------------------------------

    def console(self, message: str) -> None:
        """Tell the person at the machine (B, C and R have no other way): stdout, flushed."""
        print(f"kjump: {message}", flush=True)

    def close(self) -> None:
        """Release what the machine holds open."""
