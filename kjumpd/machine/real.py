"""The real machine: kexec-tools, ``kexec_load`` through ctypes, ``/dev/mem``,
``/sys/power``, ``/dev/snapshot``, ``FIFREEZE``.

Every path is taken under ``root`` and every side effect goes through an
injectable runner, syscall or ioctl, so tests can check what would be done
without doing it. NEVER let a test call these for real: they power off the
machine or freeze its root filesystem.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gzip
import hashlib
import logging
import os
import stat
import struct
import time
import uuid
from collections.abc import Callable, Sequence

from .. import kexec, seal
from ..errors import MachineError
from ..kexec import LoadSpec, Runner
from ..memmap import Range, read_system_ram
from ..mounts import Mount, parse_mountinfo
from ..physmem import DevMem, PhysicalMemory
from .base import Fingerprint, Machine

log = logging.getLogger(__name__)

# include/uapi/linux/reboot.h
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

# asm-generic/ioctl.h
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


def _io(kind: str, number: int) -> int:
    return _ioc(_IOC_NONE, kind, number, 0)


# include/uapi/linux/suspend_ioctls.h: SNAPSHOT_IOC_MAGIC '3'
SNAPSHOT_FREEZE = _io("3", 1)
SNAPSHOT_UNFREEZE = _io("3", 2)
SNAPSHOT_PLATFORM_SUPPORT = _io("3", 15)
SNAPSHOT_POWER_OFF = _io("3", 16)
# include/uapi/linux/fs.h: FIFREEZE _IOWR('X', 119, int), FITHAW _IOWR('X', 120, int)
FIFREEZE = _ioc(_IOC_READ | _IOC_WRITE, "X", 119, 4)
FITHAW = _ioc(_IOC_READ | _IOC_WRITE, "X", 120, 4)

# Where stable names for block devices live, most stable first: only the
# kinds the hibernate kernel, which has no udev, can find again with blkid
# (resolve_target); by-id and by-path links exist only where udev runs.
WAKEALARM = "/sys/class/rtc/rtc0/wakealarm"

CGROUP = "/sys/fs/cgroup"
# Frozen whole: every user's processes, containers and VMs.
FREEZE_SLICES = ("user.slice", "machine.slice")
# What the jump needs keeps running in system.slice (every other unit there is
# frozen): logging, the bus (kjumpd's signals, kjumpctl waiting), logind (it
# holds the sleep operation), udev (device events around the jump). kjumpd's
# own unit is never frozen either.
KEEP_RUNNING = frozenset({"systemd-journald.service", "dbus.service", "dbus-broker.service",
                          "systemd-logind.service", "systemd-udevd.service"})

STABLE_LINK_DIRS = ("by-partuuid", "by-uuid")
# Configured names that resolve_target finds without udev.
RESOLVABLE_LINK_PREFIXES = ("/dev/disk/by-partuuid/", "/dev/disk/by-uuid/", "/dev/disk/by-partlabel/",
                            "/dev/disk/by-label/")
# Block-backed filesystems that cannot be frozen or belong to no one local.
UNFREEZABLE_FSTYPES = frozenset({"fuseblk", "iso9660", "udf", "squashfs", "erofs"})


def freeze_candidates(mounts: Sequence[Mount]) -> list[str]:
    """Mount points of the local writable file systems, each file system once, deepest first.

    Local means backed by a block device (``/dev/…`` source). Writable is the
    superblock's flag, not the mount's: in kjumpd's namespace
    (``ProtectSystem=strict``) every mount is a read-only bind mount, yet
    FIFREEZE acts on the file system through any of its mounts. A mount point
    covered by a later mount (``ProtectHome=``, ``PrivateTmp=``) cannot be
    opened and is skipped; each file system counts once, at its shortest
    reachable mount point. Deepest first, so a parent is never frozen before a
    file system mounted below it (its mount point would have to be opened on a
    frozen parent).
    """
    covered = {m.mount_point: i for i, m in enumerate(mounts)}   # the last mount at each path wins
    chosen: dict[str, str] = {}
    for i, m in enumerate(mounts):
        if not (m.super_writable and m.source.startswith("/dev/") and m.fstype not in UNFREEZABLE_FSTYPES):
            continue
        if covered[m.mount_point] != i:
            continue
        current = chosen.get(m.device)
        if current is None or len(m.mount_point) < len(current):
            chosen[m.device] = m.mount_point
    return sorted(chosen.values(), key=lambda p: (-p.rstrip("/").count("/"), p))


def parse_cpu_list(text: str) -> int:
    """Count the CPUs in a list like ``0-3,5``."""
    count = 0
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


Syscall = Callable[..., int]
Ioctl = Callable[[int, int, int], int]


def _libc_reboot(cmd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.reboot(ctypes.c_int(cmd)) != 0:
        return -ctypes.get_errno()
    return 0


class RealMachine(Machine):
    """This computer, through the kernel's interfaces."""

    kind = "real"

    def __init__(self, root: str = "/", *, runner: Runner = kexec.run_command,
                 jump_syscall: Syscall | None = None,
                 reboot_call: Callable[[int], int] = _libc_reboot,
                 ioctl: Ioctl = fcntl.ioctl, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._clock = clock       # the wall clock: it runs on while the machine sleeps
        self._runner = runner
        self._jump_syscall = jump_syscall
        self._reboot_call = reboot_call
        self._ioctl = ioctl
        self._warned_unstable: set[str] = set()

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _read(self, path: str) -> str:
        try:
            with open(self._path(path), encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise MachineError(f"cannot read {path}: {exc.strerror}") from exc

    def console(self, message: str) -> None:
        """stdout and the kernel log (``/dev/kmsg``), where early-boot messages are kept."""
        super().console(message)
        try:
            with open(self._path("/dev/kmsg"), "w", encoding="utf-8") as kmsg:
                kmsg.write(f"<5>kjump: {message}\n")
        except OSError:
            pass

    # --- memory -----------------------------------------------------------

    def physical_memory(self, *, writable: bool = False) -> PhysicalMemory:
        """``/dev/mem`` through mmap windows."""
        return DevMem(self._path("/dev/mem"), writable=writable)

    def iomem(self) -> str:
        """``/proc/iomem`` (addresses are zero unless read as root)."""
        return self._read("/proc/iomem")

    def system_ram(self) -> list[Range]:
        """The firmware's memory map, or ``/proc/iomem`` when it is missing."""
        try:
            return read_system_ram(self.root)
        except OSError as exc:
            raise MachineError(f"cannot read the RAM layout: {exc.strerror}") from exc

    # --- identity ---------------------------------------------------------

    def boot_id(self) -> str:
        """``/proc/sys/kernel/random/boot_id``."""
        return self._read("/proc/sys/kernel/random/boot_id").strip()

    def machine_id(self) -> str:
        """``/etc/machine-id``."""
        return self._read("/etc/machine-id").strip()

    def kernel_release(self) -> str:
        """``/proc/sys/kernel/osrelease``."""
        return self._read("/proc/sys/kernel/osrelease").strip()

    def kernel_command_line(self) -> str:
        """``/proc/cmdline``."""
        return self._read("/proc/cmdline").strip()

    def firmware_digest(self) -> str:
        """sha256 over the headers of the static ACPI tables and the DMI firmware ids.

        A table header holds its signature, length, revision, checksum and OEM
        ids, so any change of a table changes the digest. Tables under
        ``dynamic/`` are loaded at run time and left out.
        """
        digest = hashlib.sha256()
        tables = self._path("/sys/firmware/acpi/tables")
        if os.path.isdir(tables):
            for name in sorted(os.listdir(tables)):
                path = os.path.join(tables, name)
                if not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as handle:
                        header = handle.read(36)
                except OSError as exc:
                    raise MachineError(f"cannot read ACPI table {name}: {exc.strerror} (run as root)") from exc
                digest.update(name.encode() + b"\0" + header)
        for name in ("bios_vendor", "bios_version", "bios_date", "sys_vendor", "product_name"):
            path = self._path(f"/sys/class/dmi/id/{name}")
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    digest.update(name.encode() + b"\0" + handle.read().strip())
        return digest.hexdigest()

    def fingerprint(self) -> Fingerprint:
        """CPUs present, the RAM layout and the firmware digest."""
        cpus = parse_cpu_list(self._read("/sys/devices/system/cpu/present"))
        return Fingerprint(cpus, tuple(self.system_ram()), self.firmware_digest())

    # --- kexec ------------------------------------------------------------

    def kexec_load(self, spec: LoadSpec) -> None:
        """``kexec -c -l …`` (see :func:`kjumpd.kexec.load_argv`)."""
        kexec.load(spec, self._runner)

    def kexec_unload(self) -> None:
        """``kexec -u``."""
        kexec.unload(self._runner)

    def kexec_loaded(self) -> bool:
        """``/sys/kernel/kexec_loaded``."""
        return self._read("/sys/kernel/kexec_loaded").strip() == "1"

    def kexec_execute(self) -> str:
        """``kexec -e -x``; its exit status is never trusted; returns its message.

        kexec-tools exits 255 ("kexec failed: No such file or directory") after
        every successful round trip, so the status is logged at debug level only;
        the hibernator reports the message when B left no record of the jump.
        """
        result = kexec.execute(self._runner)
        said = (result.stderr or "").strip()
        log.debug("kexec -e returned %d: %s", result.returncode, said)
        return said

    def jump_back(self, entry: int) -> None:
        """``kexec_load`` + ``reboot(LINUX_REBOOT_CMD_KEXEC)`` through ctypes."""
        kexec.jump_back(entry, self._jump_syscall)

    # --- power ------------------------------------------------------------

    def _reboot(self, cmd: int, what: str) -> None:
        os.sync()
        rc = self._reboot_call(cmd)
        if rc != 0:
            raise MachineError(f"{what} failed: {os.strerror(-rc)}")

    def power_off(self) -> None:
        """``reboot(LINUX_REBOOT_CMD_POWER_OFF)``."""
        self._reboot(LINUX_REBOOT_CMD_POWER_OFF, "power off")

    def reboot(self) -> None:
        """``reboot(LINUX_REBOOT_CMD_RESTART)``."""
        self._reboot(LINUX_REBOOT_CMD_RESTART, "reboot")

    def suspend_to_ram(self, alarm: float | None = None) -> bool:
        """Write ``mem`` to ``/sys/power/state``; returns after the wake-up.

        The alarm is the RTC's (``/sys/class/rtc/rtc0/wakealarm``, ``+SECONDS``);
        the wall clock (which runs on in S3, unlike the monotonic one) says
        afterwards whether its time had come, as systemd-sleep decides it.
        """
        states = self._read("/sys/power/state").split()
        if "mem" not in states:
            raise MachineError(f"this machine cannot suspend to RAM (/sys/power/state offers: {' '.join(states)})")
        due = None
        if alarm is not None:
            self._write_wakealarm("0")          # the RTC refuses a new alarm while one is set
            self._write_wakealarm(f"+{max(1, int(alarm))}")
            due = self._clock() + max(1, int(alarm))
        try:
            with open(self._path("/sys/power/state"), "w", encoding="ascii") as handle:
                handle.write("mem")
        except OSError as exc:
            raise MachineError(f"suspend to RAM failed: {exc.strerror}") from exc
        finally:
            if due is not None:
                self._write_wakealarm("0", quiet=True)
        return due is not None and self._clock() >= due - 1

    def _write_wakealarm(self, value: str, *, quiet: bool = False) -> None:
        try:
            with open(self._path(WAKEALARM), "w", encoding="ascii") as handle:
                handle.write(value)
        except OSError as exc:
            if quiet:
                log.warning("cannot clear the RTC wake alarm: %s", exc.strerror)
                return
            raise MachineError(f"cannot set the RTC wake alarm ({WAKEALARM}): {exc.strerror}") from exc

    def swsusp_problems(self) -> list[str]:
        """What logind itself (systemd 252, without kjumpd's memory-check bypass) would hold against swsusp.

        ``disk`` in ``/sys/power/state``, a resume device (``/sys/power/resume``
        not ``0:0``), and an active swap area with more free space than the
        active anonymous memory (``Active(anon)`` of ``/proc/meminfo``).
        """
        try:
            if "disk" not in self._read("/sys/power/state").split():
                return ["the kernel cannot hibernate by itself (no 'disk' in /sys/power/state)"]
            if self._read("/sys/power/resume").strip() in ("", "0:0"):
                return ["the kernel's hibernation has no resume device (/sys/power/resume is 0:0)"]
            meminfo = dict(line.split(":", 1) for line in self._read("/proc/meminfo").splitlines() if ":" in line)
            active = int(meminfo["Active(anon)"].split()[0])
            free_swap = max((int(f[2]) - int(f[3]) for f in (line.split() for line in
                             self._read("/proc/swaps").splitlines()[1:]) if len(f) >= 4), default=0)
        except (MachineError, KeyError, ValueError) as exc:
            return [f"cannot tell whether the kernel's hibernation works: {exc}"]
        if free_swap < active:
            return [f"no swap area with room for the kernel's hibernation ({free_swap} KiB free, "
                    f"{active} KiB of active memory)"]
        return []

    def hibernate_platform(self) -> None:
        """S4 through ``/dev/snapshot``: FREEZE, PLATFORM_SUPPORT 1, POWER_OFF.

        ``SNAPSHOT_POWER_OFF`` does not check that the kernel made an image
        (kernel/power/user.c), so the platform enters S4 with ours on disk.
        """
        try:
            fd = os.open(self._path("/dev/snapshot"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise MachineError(f"cannot open /dev/snapshot: {exc.strerror} "
                               "(hibernation disabled by lockdown or nohibernate?)") from exc
        frozen = False
        try:
            self._ioctl(fd, SNAPSHOT_FREEZE, 0)
            frozen = True
            self._ioctl(fd, SNAPSHOT_PLATFORM_SUPPORT, 1)
            self._ioctl(fd, SNAPSHOT_POWER_OFF, 0)
            raise MachineError("the platform did not enter S4 (SNAPSHOT_POWER_OFF returned)")
        except OSError as exc:
            raise MachineError(f"entering S4 through /dev/snapshot failed: {exc.strerror}") from exc
        finally:
            if frozen:
                try:
                    self._ioctl(fd, SNAPSHOT_UNFREEZE, 0)
                except OSError as exc:
                    log.error("SNAPSHOT_UNFREEZE failed: %s", exc.strerror)
            os.close(fd)

    # --- block devices ----------------------------------------------------

    def resolve_target(self, name: str) -> str:
        """The path itself when it exists; else the partition a ``by-partlabel``
        or ``by-partuuid`` name means, from sysfs and the GPT; else blkid's
        answer for a ``by-uuid`` or ``by-label`` name, where blkid exists.

        B's initramfs has no udev, so ``/dev/disk/by-*`` links are missing
        there, and Debian's static busybox has no blkid.
        """
        path = self._path(name)
        if os.path.exists(path):
            return path
        head, _, value = name.rpartition("/")
        for device, disk, number, label in self._partitions():
            if (head == "/dev/disk/by-partlabel" and label == value) or \
                    (head == "/dev/disk/by-partuuid" and self._gpt_partuuid(disk, number) == value.lower()):
                return self._path(f"/dev/{device}")
        tags = {"/dev/disk/by-uuid": "UUID", "/dev/disk/by-label": "LABEL"}
        if head in tags:
            try:
                result = self._runner(["blkid", "-l", "-o", "device", "-t", f"{tags[head]}={value}"])
            except OSError:            # no blkid here
                result = None
            device = result.stdout.strip() if result is not None and result.returncode == 0 else ""
            if device:
                return self._path(device)
        raise MachineError(f"image target {name} not found")

    def _partitions(self) -> list[tuple[str, str, int, str]]:
        """(device, disk, partition number, GPT name) of every partition the kernel knows (sysfs)."""
        base = self._path("/sys/class/block")
        found = []
        for entry in sorted(os.listdir(base)) if os.path.isdir(base) else ():
            try:
                with open(os.path.join(base, entry, "uevent"), encoding="utf-8") as handle:
                    fields = dict(line.split("=", 1) for line in handle.read().splitlines() if "=" in line)
            except OSError:
                continue
            if fields.get("DEVTYPE") == "partition" and fields.get("PARTN", "").isdigit():
                disk = os.path.basename(os.path.dirname(os.path.realpath(os.path.join(base, entry))))
                found.append((fields.get("DEVNAME", entry), disk, int(fields["PARTN"]), fields.get("PARTNAME", "")))
        return found

    def _gpt_partuuid(self, disk: str, number: int) -> str | None:
        """The unique GUID of partition ``number`` in the GPT of ``/dev/DISK`` (the
        kernel already checked that table when it made the partition devices)."""
        try:
            with open(self._path(f"/dev/{disk}"), "rb") as handle:
                for sector in (512, 4096):
                    handle.seek(sector)
                    header = handle.read(92)
                    if header[:8] != b"EFI PART":
                        continue
                    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
                    if not 1 <= number <= count or size < 32:
                        return None
                    handle.seek(entries_lba * sector + (number - 1) * size)
                    return str(uuid.UUID(bytes_le=handle.read(32)[16:32]))
        except (OSError, ValueError, struct.error):
            pass
        return None

    def stable_target_id(self, path: str) -> str:
        """The name of the block device ``path`` that A records and B and C use.

        A ``/dev/disk/by-partuuid``/``by-uuid`` link, or a configured
        ``by-partuuid``/``by-uuid``/``by-partlabel``/``by-label`` name, as it is:
        B finds those without udev. Else the kernel's name of the device
        (``/dev/vdb``): a ``by-id``/``by-path`` name would not exist in B, and
        A and C must name the device the same way whether or not udev made
        such links. Refuses regular files: B would have to mount their
        filesystem, which A has mounted and frozen.
        """
        if path.startswith(RESOLVABLE_LINK_PREFIXES):
            return path
        real = self._path(path)
        try:
            info = os.stat(real)
        except OSError as exc:
            raise MachineError(f"image target {path}: {exc.strerror}") from exc
        if not stat.S_ISBLK(info.st_mode):
            raise MachineError(f"image target {path} is not a block device; the hibernate kernel "
                               "can only write to a partition or a whole disk")
        for kind in STABLE_LINK_DIRS:
            directory = self._path(f"/dev/disk/{kind}")
            if not os.path.isdir(directory):
                continue
            for link in sorted(os.listdir(directory)):
                try:
                    if os.stat(os.path.join(directory, link)).st_rdev == info.st_rdev:
                        return f"/dev/disk/{kind}/{link}"
                except OSError:
                    continue
        device = "/" + os.path.relpath(os.path.realpath(real), os.path.realpath(self.root))
        if path not in self._warned_unstable:      # asked on every status read: say it once
            self._warned_unstable.add(path)
            log.warning("no by-partuuid or by-uuid name for %s in /dev/disk; the hibernate kernel gets %s",
                        path, device)
        return device

    # --- filesystems ------------------------------------------------------

    def _kernel_config(self) -> str | None:
        """The running kernel's configuration (``/proc/config.gz`` or ``/boot/config-RELEASE``), if any."""
        try:
            with gzip.open(self._path("/proc/config.gz"), "rt", encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            pass
        try:
            return self._read(f"/boot/config-{self.kernel_release()}")
        except MachineError:
            return None

    def secret_memory_problems(self) -> list[str]:
        """Processes holding ``memfd_secret`` memory (``/proc/PID/fd`` and ``maps``), as the kernel refuses to
        hibernate."""
        return [f"process {pid} ({name}) holds memfd_secret memory, which must never be written to a disk "
                "(the kernel's own hibernation refuses it too)"
                for pid, name in seal.secret_memory_holders(self._path("/proc"))]

    def ask_password(self, prompt: str) -> bytearray | None:
        """plymouth, systemd-ask-password or the console, as cryptsetup's initramfs prompt."""
        return seal.ask_passphrase(prompt)

    def handed_key(self) -> bytearray | None:
        """The key file C put at the root of R's initramfs."""
        return seal.take_handed_key(self.root)

    def kernel_problems(self) -> list[str]:
        """Missing CONFIG_KEXEC / CONFIG_KEXEC_JUMP, kexec disabled, or lockdown forbidding kexec_load."""
        problems = []
        if not os.path.exists(self._path("/sys/kernel/kexec_loaded")):
            problems.append("this kernel was built without kexec (CONFIG_KEXEC)")
        config = self._kernel_config()
        if config is not None and "\nCONFIG_KEXEC_JUMP=y" not in "\n" + config:
            problems.append("this kernel was built without CONFIG_KEXEC_JUMP, which a kexec-jump hibernation "
                            "needs (Debian's kernels do not set it)")
        try:
            if self._read("/proc/sys/kernel/kexec_load_disabled").strip() == "1":
                problems.append("kexec is disabled until reboot (kernel.kexec_load_disabled=1)")
        except MachineError:
            pass
        try:
            lockdown = self._read("/sys/kernel/security/lockdown")
        except MachineError:
            lockdown = ""
        if "[integrity]" in lockdown or "[confidentiality]" in lockdown:
            problems.append("kernel lockdown (e.g. Secure Boot) forbids kexec_load, which a preserve-context "
                            "load needs")
        if self._kernel_text_hidden(config):
            problems.append("/proc/kallsyms hides the kernel's addresses from kjumpd (it needs CAP_SYSLOG), so "
                            "kexec-tools cannot find the kernel text that KASLR moved and fails to stage the "
                            "hibernate kernel (\"Can't find kernel text map area from kcore\")")
        return problems

    def _kernel_text_hidden(self, config: str | None) -> bool:
        """True when KASLR is on and ``_stext`` reads as 0 in /proc/kallsyms.

        kexec-tools (crashdump-x86.c, for every preserve-context load) finds the
        kernel text mapping through ``_stext``; when the address is hidden (no
        CAP_SYSLOG, kernel.kptr_restrict) it falls back to the fixed window
        0xffffffff80000000 + 512 MiB, which the randomized kernel text leaves
        about half of the time.
        """
        if config is not None and "\nCONFIG_RANDOMIZE_BASE=y" not in "\n" + config:
            return False
        try:
            if "nokaslr" in self._read("/proc/cmdline").split():
                return False
            with open(self._path("/proc/kallsyms"), encoding="ascii", errors="replace") as symbols:
                for line in symbols:
                    fields = line.split()
                    if len(fields) >= 3 and fields[2] == "_stext":
                        return int(fields[0], 16) == 0
        except (MachineError, OSError, ValueError):
            pass
        return False

    def sync_filesystems(self) -> None:
        """``sync(2)``."""
        os.sync()

    def _fs_ioctl(self, mount_point: str, request: int) -> None:
        """FIFREEZE or FITHAW one filesystem through a descriptor of its mount point."""
        fd = os.open(self._path(mount_point), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._ioctl(fd, request, 0)
        finally:
            os.close(fd)

    def freeze_filesystems(self) -> list[str]:
        """FIFREEZE the local writable filesystems of ``/proc/self/mountinfo``."""
        frozen: list[str] = []
        for mount_point in freeze_candidates(parse_mountinfo(self._read("/proc/self/mountinfo"))):
            try:
                self._fs_ioctl(mount_point, FIFREEZE)
            except OSError as exc:
                if exc.errno == errno.EOPNOTSUPP:
                    log.warning("%s cannot be frozen (%s); it stays writable across the jump",
                                mount_point, exc.strerror)
                    continue
                problems = self.thaw_filesystems(frozen)
                raise MachineError(f"cannot freeze {mount_point}: {exc.strerror}"
                                   + ("; " + "; ".join(problems) if problems else "")) from exc
            frozen.append(mount_point)
        return frozen

    # --- user space (the cgroup v2 freezer, through systemd) -----------------

    def _own_cgroup(self) -> list[str]:
        """The cgroup path components of this process (``system.slice``, ``kjumpd.service``)."""
        try:
            text = self._read("/proc/self/cgroup")
        except MachineError:
            return []
        for line in text.splitlines():
            if line.startswith("0::"):
                return [part for part in line[3:].strip().split("/") if part]
        return []

    def _frozen(self, unit_path: str) -> bool:
        try:
            return "frozen 1" in self._read(f"{CGROUP}/{unit_path}/cgroup.events").splitlines()
        except MachineError:
            return False

    def user_space_units(self) -> list[str]:
        """The units ``freeze_user_space`` freezes: FREEZE_SLICES and system.slice's units but KEEP_RUNNING and ours."""
        if not os.path.exists(self._path(f"{CGROUP}/cgroup.controllers")):
            return []           # no unified cgroup hierarchy: no freezer to ask
        own = set(self._own_cgroup())
        units = [s for s in FREEZE_SLICES if os.path.isdir(self._path(f"{CGROUP}/{s}"))]
        system = self._path(f"{CGROUP}/system.slice")
        if os.path.isdir(system):
            units += [name for name in sorted(os.listdir(system))
                      if name.endswith((".service", ".scope", ".slice")) and name not in KEEP_RUNNING
                      and name not in own and os.path.isdir(os.path.join(system, name))]
        return units

    def _unit_path(self, unit: str) -> str:
        return unit if unit in FREEZE_SLICES else f"system.slice/{unit}"

    def freeze_user_space(self) -> list[str]:
        """``systemctl freeze`` (systemd's FreezeUnit: the cgroup v2 freezer) of :meth:`user_space_units`.

        systemd does the freezing, so kjumpd's sandbox keeps
        ``ProtectControlGroups=``; whether each unit froze is read back from
        its ``cgroup.events``.
        """
        units = self.user_space_units()
        if not units:
            return []
        said = self._systemctl("freeze", units)
        frozen = [u for u in units if self._frozen(self._unit_path(u))]
        missed = [u for u in units if u not in frozen]
        if missed:
            log.warning("user space only partly stopped (systemctl freeze: %s); still running: %s",
                        said or "no error", ", ".join(missed))
        return frozen

    def _systemctl(self, verb: str, units: Sequence[str]) -> str:
        """``systemctl VERB -- UNITS``; returns its complaint ("" on success), never raises."""
        try:
            result = self._runner(["systemctl", verb, "--", *units])
        except OSError as exc:          # no systemctl (a machine without systemd)
            return f"cannot run systemctl: {exc.strerror or exc}"
        if result.returncode == 0:
            return ""
        return (result.stderr or "").strip() or f"exit status {result.returncode}"

    def thaw_user_space(self, units: Sequence[str]) -> list[str]:
        """``systemctl thaw`` of ``units``."""
        if not units:
            return []
        said = self._systemctl("thaw", list(reversed(list(units))))
        if said:
            problem = f"cannot thaw {', '.join(units)}: {said}"
            log.error("%s", problem)
            return [problem]
        return []

    def thaw_left_frozen(self) -> list[str]:
        """FITHAW every freeze candidate (EINVAL, not frozen, is the normal answer), then thaw frozen units."""
        thawed = self._thaw_left_frozen_filesystems()
        units = [u for u in self.user_space_units() if self._frozen(self._unit_path(u))]
        if units:
            log.warning("%s left frozen (kjumpd stopped during a hibernation): thawing", ", ".join(units))
            self.thaw_user_space(units)
        return thawed + units

    def _thaw_left_frozen_filesystems(self) -> list[str]:
        thawed = []
        try:
            candidates = freeze_candidates(parse_mountinfo(self._read("/proc/self/mountinfo")))
        except MachineError as exc:
            log.error("cannot look for frozen file systems: %s", exc)
            return []
        for mount_point in reversed(candidates):
            try:
                self._fs_ioctl(mount_point, FITHAW)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    log.error("cannot thaw %s: %s", mount_point, exc.strerror)
                continue
            log.warning("%s was left frozen (kjumpd stopped during a hibernation): thawed", mount_point)
            thawed.append(mount_point)
        return thawed

    def thaw_filesystems(self, mounts: Sequence[str]) -> list[str]:
        """FITHAW in reverse order of freezing."""
        problems = []
        for mount_point in reversed(list(mounts)):
            try:
                self._fs_ioctl(mount_point, FITHAW)
            except OSError as exc:
                problems.append(f"cannot thaw {mount_point}: {exc.strerror}")
        for problem in problems:
            log.error("%s", problem)
        return problems
