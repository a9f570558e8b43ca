"""The real machine with every side effect recorded instead of done: a fake root tree,
a recording runner, ioctl and reboot. Nothing here calls kexec, reboot, FIFREEZE or
/sys/power for real."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest

from kjumpd.errors import MachineError
from kjumpd.kexec import LoadSpec, load_argv
from kjumpd.machine.real import (
    FIFREEZE,
    FITHAW,
    SNAPSHOT_FREEZE,
    SNAPSHOT_PLATFORM_SUPPORT,
    SNAPSHOT_POWER_OFF,
    SNAPSHOT_UNFREEZE,
    RealMachine,
    freeze_candidates,
    parse_cpu_list,
)
from kjumpd.memmap import Range
from kjumpd.mounts import parse_mountinfo

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
23 1 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=4015268k
1 0 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 1 254:17 / /home rw,relatime shared:9 - xfs /dev/vdb1 rw
31 30 254:17 /alice /home/alice\\040backup rw,relatime shared:9 - xfs /dev/vdb1 rw
32 1 254:33 / /boot/efi ro,relatime shared:10 - vfat /dev/vdc1 rw
33 1 0:45 / /tmp rw,nosuid shared:11 - tmpfs tmpfs rw
34 1 254:49 / /srv/data rw,relatime shared:12 - ext4 /dev/mapper/vg-data rw
35 1 7:0 / /media/cd ro - iso9660 /dev/sr0 ro
"""


def test_snapshot_and_freeze_ioctl_numbers() -> None:
    # include/uapi/linux/suspend_ioctls.h and include/uapi/linux/fs.h
    assert (SNAPSHOT_FREEZE, SNAPSHOT_UNFREEZE) == (0x3301, 0x3302)
    assert (SNAPSHOT_PLATFORM_SUPPORT, SNAPSHOT_POWER_OFF) == (0x330F, 0x3310)
    assert (FIFREEZE, FITHAW) == (0xC0045877, 0xC0045878)


def test_freeze_candidates_are_local_writable_and_deepest_first() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[4].mount_point == "/home/alice backup"
    # /boot/efi is a read-only mount of a writable vfat: it is tried (vfat then says EOPNOTSUPP)
    assert freeze_candidates(mounts) == ["/boot/efi", "/srv/data", "/home", "/"]


# The same machine as seen inside kjumpd.service: ProtectSystem=strict makes every mount a read-only bind
# mount; ProtectHome=yes covers /home with an inaccessible file system; PrivateTmp= binds a directory of /.
SANDBOXED_MOUNTINFO = """\
1 0 254:1 / / ro,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 1 254:17 / /home ro,relatime shared:9 - xfs /dev/vdb1 rw
34 1 254:49 / /srv/data ro,relatime shared:12 - ext4 /dev/mapper/vg-data rw
40 1 254:1 /tmp/systemd-private-1/tmp /tmp rw,relatime - ext4 /dev/vda1 rw,errors=remount-ro
41 30 0:60 / /home ro,nosuid - tmpfs tmpfs ro,mode=000
"""


def test_freeze_candidates_inside_the_sandbox() -> None:
    """Issue 10.4: read-only bind mounts of writable file systems are frozen; an overmounted path is not."""
    assert freeze_candidates(parse_mountinfo(SANDBOXED_MOUNTINFO)) == ["/srv/data", "/"]
    readable_home = SANDBOXED_MOUNTINFO.replace("41 30 0:60 / /home ro,nosuid - tmpfs tmpfs ro,mode=000\n", "")
    assert freeze_candidates(parse_mountinfo(readable_home)) == ["/srv/data", "/home", "/"]


def test_cpu_list() -> None:
    assert parse_cpu_list("0-3,5,7-8\n") == 7


class Recorder:
    """Stands in for the runner, ioctl and reboot calls."""

    def __init__(self, fail_ioctl: dict[int, int] | None = None, kexec_rc: int = 0) -> None:
        self.calls: list[tuple] = []
        self.fail_ioctl = fail_ioctl or {}
        self.kexec_rc = kexec_rc

    def runner(self, argv):
        self.calls.append(("run", list(argv)))
        return subprocess.CompletedProcess(argv, self.kexec_rc, "", "kexec failed: No such file or directory")

    def ioctl(self, fd: int, request: int, arg: int) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        self.calls.append(("ioctl", request, arg, os.path.basename(target)))
        if request in self.fail_ioctl:
            raise OSError(self.fail_ioctl[request], os.strerror(self.fail_ioctl[request]))
        return 0

    def reboot(self, cmd: int) -> int:
        self.calls.append(("reboot", cmd))
        return -errno.EPERM


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fake root with the files RealMachine reads."""
    files = {
        "proc/iomem": "00001000-0009fbff : System RAM\n00100000-3ffdffff : System RAM\n",
        "proc/sys/kernel/random/boot_id": "0f6d2c6e-6f0e-4a35-bb1a-3c5b1f0e9a77\n",
        "etc/machine-id": "5c1b2f7e1a9d4e0c8f3b6a2d9e7c4b1a\n",
        "proc/sys/kernel/osrelease": "6.12.117-kjump\n",
        "sys/devices/system/cpu/present": "0-1\n",
        "sys/kernel/kexec_loaded": "0\n",
        "sys/power/state": "freeze mem disk\n",
        "proc/self/mountinfo": MOUNTINFO,
        "sys/firmware/acpi/tables/DSDT": "DSDT" + "x" * 60,
        "sys/firmware/acpi/tables/FACP": "FACP" + "y" * 60,
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for mount in ("srv/data", "home", "dev"):
        (tmp_path / mount).mkdir(parents=True, exist_ok=True)
    (tmp_path / "dev/snapshot").write_text("")
    return tmp_path


def machine(root: Path, rec: Recorder) -> RealMachine:
    return RealMachine(str(root), runner=rec.runner, reboot_call=rec.reboot, ioctl=rec.ioctl)


def test_identity_from_the_root_tree(root: Path) -> None:
    m = machine(root, Recorder())
    ident = m.identity()
    assert ident.boot_id.hex() == "0f6d2c6e6f0e4a35bb1a3c5b1f0e9a77"
    assert ident.kernel_release == "6.12.117-kjump"
    assert m.system_ram() == [Range(0x1000, 0x9FC00), Range(0x100000, 0x3FFE0000)]
    before = m.fingerprint()
    (root / "sys/firmware/acpi/tables/DSDT").write_text("DSDT" + "z" * 60)
    assert m.fingerprint().digest() != before.digest(), "a changed ACPI table changes the fingerprint"


def test_kexec_load_runs_kexec_tools(root: Path) -> None:
    rec = Recorder()
    kernel = root / "vmlinuz"
    kernel.write_bytes(b"k")
    spec = LoadSpec(str(kernel), "", "memmap=exactmap", Range(0x2FF00000, 0x3FF00000), True)
    machine(root, rec).kexec_load(spec)
    assert rec.calls == [("run", load_argv(spec))]


def test_execute_ignores_kexec_exit_status(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kexec -e exits 255 after every successful round trip: its words are returned for the hibernator,
    which reports them only when B left no record; the journal of a good hibernation does not show them."""
    rec = Recorder(kexec_rc=255)
    with caplog.at_level(logging.INFO, logger="kjumpd"):
        said = machine(root, rec).kexec_execute()
    assert rec.calls == [("run", ["kexec", "-e", "-x"])]
    assert said == "kexec failed: No such file or directory"
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "kexec -e" in r.getMessage()]


def test_freeze_order_and_thaw_in_reverse(root: Path) -> None:
    (root / "boot/efi").mkdir(parents=True)
    rec = Recorder()
    m = machine(root, rec)
    frozen = m.freeze_filesystems()
    assert frozen == ["/boot/efi", "/srv/data", "/home", "/"]
    assert m.thaw_filesystems(frozen) == []
    names = [(c[1], c[3]) for c in rec.calls]
    assert names == [(FIFREEZE, "efi"), (FIFREEZE, "data"), (FIFREEZE, "home"), (FIFREEZE, os.path.basename(str(root))),
                     (FITHAW, os.path.basename(str(root))), (FITHAW, "home"), (FITHAW, "data"), (FITHAW, "efi")]


def test_freeze_failure_thaws_what_was_frozen(root: Path) -> None:
    (root / "boot/efi").mkdir(parents=True)
    rec = Recorder()
    m = machine(root, rec)
    calls = []

    def ioctl(fd: int, request: int, arg: int) -> int:
        calls.append((request, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        if request == FIFREEZE and calls[-1][1] == "home":
            raise OSError(errno.EBUSY, "Device or resource busy")
        return 0

    m._ioctl = ioctl
    with pytest.raises(MachineError, match="cannot freeze /home: Device or resource busy"):
        m.freeze_filesystems()
    assert calls == [(FIFREEZE, "efi"), (FIFREEZE, "data"), (FIFREEZE, "home"), (FITHAW, "data"), (FITHAW, "efi")]


def test_s4_through_dev_snapshot(root: Path) -> None:
    rec = Recorder()
    with pytest.raises(MachineError, match="did not enter S4"):
        machine(root, rec).hibernate_platform()
    assert [(c[1], c[2]) for c in rec.calls] == [
        (SNAPSHOT_FREEZE, 0), (SNAPSHOT_PLATFORM_SUPPORT, 1), (SNAPSHOT_POWER_OFF, 0), (SNAPSHOT_UNFREEZE, 0)]


def test_s4_refused_by_the_kernel_unfreezes(root: Path) -> None:
    rec = Recorder(fail_ioctl={SNAPSHOT_POWER_OFF: errno.EINVAL})
    with pytest.raises(MachineError, match="Invalid argument"):
        machine(root, rec).hibernate_platform()
    assert rec.calls[-1][1] == SNAPSHOT_UNFREEZE


def test_power_off_failure_is_reported(root: Path) -> None:
    rec = Recorder()
    with pytest.raises(MachineError, match="power off failed: Operation not permitted"):
        machine(root, rec).power_off()
    assert rec.calls == [("reboot", 0x4321FEDC)]


def test_stable_target_id_refuses_files(root: Path) -> None:
    (root / "image").write_bytes(bytes(4096))
    with pytest.raises(MachineError, match="not a block device"):
        machine(root, Recorder()).stable_target_id("/image")
    assert machine(root, Recorder()).stable_target_id("/dev/disk/by-uuid/1234") == "/dev/disk/by-uuid/1234"


def test_suspend_to_ram_refused_without_mem(root: Path) -> None:
    (root / "sys/power/state").write_text("freeze disk\n")
    with pytest.raises(MachineError, match="cannot suspend to RAM"):
        machine(root, Recorder()).suspend_to_ram()


def test_hibernator_stages_b_with_the_exact_command(root: Path, tmp_path: Path) -> None:
    from kjumpd.daemon.hibernator import HibernateSettings, Hibernator

    kernel = tmp_path / "vmlinuz-kjump"
    initrd = tmp_path / "initrd-kjump.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    rec = Recorder()
    settings = HibernateSettings(image_target="/dev/disk/by-partuuid/0d2f-03", image_offset=1 << 20,
                                 kernel=str(kernel), initrd=str(initrd), kernel_arguments="console=ttyS0,115200")
    Hibernator(machine(root, rec), settings).stage()
    assert rec.calls == [("run", [
        "kexec", "-c", "-l", "--load-preserve-context", "-i", "--mem-min=0x2ff00000", "--mem-max=0x3fefffff",
        str(kernel), f"--initrd={initrd}",
        "--append=memmap=exactmap memmap=256K@64K memmap=262128K@785408K memmap=784384K#1024K "
        "memmap=896K#1047552K nokaslr maxcpus=1 iomem=relaxed noresume panic=10 kjump.role=save "
        "kjump.target=/dev/disk/by-partuuid/0d2f-03 kjump.offset=1048576 kjump.region=0x2ff00000-0x3fefffff "
        "console=ttyS0,115200"])]


def test_kernel_features_are_checked(root: Path) -> None:
    rec = Recorder()
    (root / "boot").mkdir()
    config = root / "boot/config-6.12.117-kjump"
    config.write_text("CONFIG_KEXEC=y\nCONFIG_KEXEC_JUMP=y\nCONFIG_HIBERNATION=y\n")
    assert machine(root, rec).kernel_problems() == []
    config.write_text("CONFIG_KEXEC=y\n# CONFIG_KEXEC_JUMP is not set\n")
    (root / "proc/sys/kernel/kexec_load_disabled").write_text("1\n")
    (root / "sys/kernel/security").mkdir(parents=True)
    (root / "sys/kernel/security/lockdown").write_text("none [integrity] confidentiality\n")
    (root / "sys/kernel/kexec_loaded").unlink()
    problems = " | ".join(machine(root, rec).kernel_problems())
    for expected in ("without kexec (CONFIG_KEXEC)", "without CONFIG_KEXEC_JUMP", "kexec_load_disabled=1",
                     "lockdown"):
        assert expected in problems
    assert rec.calls == [], "checking changes nothing"


def _block_device(root: Path, name: str, rdev: int, links: dict[str, str]) -> None:
    """A block device node under the fake /dev with /dev/disk/KIND/NAME links to it."""
    import stat as stat_module

    os.mknod(root / "dev" / name, stat_module.S_IFBLK | 0o600, rdev)
    for link, kind in links.items():
        directory = root / "dev/disk" / kind
        directory.mkdir(parents=True, exist_ok=True)
        (directory / link).symlink_to(f"../../{name}")


def test_stable_target_id_names_only_what_the_hibernate_kernel_can_find(root: Path) -> None:
    """B runs without udev: of the /dev/disk links only by-uuid/by-partuuid can be
    found again there (through blkid). A name B cannot resolve made B refuse to save
    ("image target /dev/disk/by-path/… not found"), and a name that differs between
    A and C (udev recreates by-path in C's initramfs) made C call the image foreign."""
    if os.geteuid() != 0:
        pytest.skip("mknod of a block device needs root")
    _block_device(root, "vdb", os.makedev(254, 16), {"pci-0000:00:03.0": "by-path", "virtio-serial1": "by-id"})
    _block_device(root, "vdc1", os.makedev(254, 33), {"pci-0000:00:04.0-part1": "by-path",
                                                       "0d2f-03": "by-partuuid"})
    m = machine(root, Recorder())
    assert m.stable_target_id("/dev/vdb") == "/dev/vdb"
    assert m.stable_target_id("/dev/vdc1") == "/dev/disk/by-partuuid/0d2f-03"
    # what A names, C (udev or not) names the same way
    assert m.stable_target_id("/dev/disk/by-path/pci-0000:00:03.0") == "/dev/vdb"


def test_hidden_kernel_addresses_are_a_problem_under_kaslr(root: Path) -> None:
    """kexec-tools finds the kernel text for a preserve-context load through
    _stext in /proc/kallsyms; without CAP_SYSLOG it reads 0 there and falls
    back to a fixed 512 MiB window that KASLR leaves about half of the time
    ("Can't find kernel text map area from kcore")."""
    (root / "boot").mkdir()
    (root / "boot/config-6.12.117-kjump").write_text("CONFIG_KEXEC=y\nCONFIG_KEXEC_JUMP=y\nCONFIG_RANDOMIZE_BASE=y\n")
    (root / "proc/cmdline").write_text("root=LABEL=kjroot ro console=ttyS0\n")
    kallsyms = root / "proc/kallsyms"
    kallsyms.write_text("0000000000000000 T startup_64\n0000000000000000 T _stext\n")
    problems = machine(root, Recorder()).kernel_problems()
    assert len(problems) == 1 and "/proc/kallsyms" in problems[0] and "CAP_SYSLOG" in problems[0]
    # the addresses visible, or no KASLR: kexec-tools finds the text
    kallsyms.write_text("ffffffffa1a00000 T startup_64\nffffffffa1a01000 T _stext\n")
    assert machine(root, Recorder()).kernel_problems() == []
    kallsyms.write_text("0000000000000000 T startup_64\n0000000000000000 T _stext\n")
    (root / "proc/cmdline").write_text("root=LABEL=kjroot ro nokaslr\n")
    assert machine(root, Recorder()).kernel_problems() == []


# --- user space: the cgroup v2 freezer through systemctl ------------------------------------------------


def cgroup_tree(root: Path) -> Path:
    cgroup = root / "sys/fs/cgroup"
    (cgroup / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (cgroup / "cgroup.controllers").write_text("cpu memory pids\n")
    for unit in ("user.slice", "system.slice/cron.service", "system.slice/dbus.service",
                 "system.slice/kjumpd.service", "system.slice/systemd-journald.service",
                 "system.slice/system-getty.slice", "system.slice/postgresql.service"):
        (cgroup / unit).mkdir(parents=True, exist_ok=True)
        (cgroup / unit / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (root / "proc/self/cgroup").write_text("0::/system.slice/kjumpd.service\n")
    return cgroup


class Systemctl(Recorder):
    """systemctl freeze/thaw writing the cgroup's state as systemd would; ``stuck`` units never freeze."""

    def __init__(self, cgroup: Path, stuck: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.cgroup, self.stuck = cgroup, stuck

    def runner(self, argv):
        self.calls.append(("run", list(argv)))
        verb, units = argv[1], argv[3:]
        for unit in units:
            path = self.cgroup / (unit if unit == "user.slice" else f"system.slice/{unit}")
            if unit not in self.stuck:
                (path / "cgroup.events").write_text(f"populated 1\nfrozen {1 if verb == 'freeze' else 0}\n")
        return subprocess.CompletedProcess(argv, 1 if self.stuck else 0, "", "Failed to freeze" if self.stuck else "")


def test_user_space_is_frozen_but_what_the_jump_needs(root: Path) -> None:
    """Issue 10.4: user.slice and system.slice's units, except logging, the bus and kjumpd itself."""
    cgroup = cgroup_tree(root)
    rec = Systemctl(cgroup)
    m = machine(root, rec)
    units = m.freeze_user_space()
    assert units == ["user.slice", "cron.service", "postgresql.service", "system-getty.slice"]
    assert rec.calls == [("run", ["systemctl", "freeze", "--", *units])]
    assert m.thaw_user_space(units) == []
    assert rec.calls[-1] == ("run", ["systemctl", "thaw", "--", *reversed(units)])


def test_a_unit_that_does_not_freeze_is_left_running_not_fatal(root: Path) -> None:
    cgroup = cgroup_tree(root)
    m = machine(root, Systemctl(cgroup, stuck=("postgresql.service",)))
    assert m.freeze_user_space() == ["user.slice", "cron.service", "system-getty.slice"]


def test_units_left_frozen_are_thawed_at_start(root: Path) -> None:
    cgroup = cgroup_tree(root)
    (cgroup / "user.slice/cgroup.events").write_text("populated 1\nfrozen 1\n")
    rec = Systemctl(cgroup)
    thawed = machine(root, rec).thaw_left_frozen()
    assert "user.slice" in thawed
    assert ("run", ["systemctl", "thaw", "--", "user.slice"]) in rec.calls


def test_no_systemctl_leaves_user_space_running(root: Path) -> None:
    """A machine with cgroup v2 but without systemd (the VM test's guest): logged, never fatal."""
    cgroup_tree(root)

    def missing(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    m = RealMachine(str(root), runner=missing, reboot_call=Recorder().reboot, ioctl=Recorder().ioctl)
    assert m.freeze_user_space() == []
    assert m.thaw_user_space(["user.slice"]) == ["cannot thaw user.slice: cannot run systemctl: No such file or directory"]


def test_no_unified_cgroup_hierarchy_no_freezer(root: Path) -> None:
    rec = Recorder()
    assert machine(root, rec).freeze_user_space() == []
    assert rec.calls == []


# --- suspend-then-hibernate: the RTC alarm ---------------------------------------------------------------


class Clock:
    """The wall clock: ``asleep`` seconds pass while /sys/power/state is written."""

    def __init__(self, root: Path, asleep: float) -> None:
        self.now, self.asleep, self.state = 1_000_000.0, asleep, root / "sys/power/state"

    def __call__(self) -> float:
        if self.state.read_text() == "mem":          # the write happened: the machine slept
            self.state.write_text("freeze mem disk\n")
            self.now += self.asleep
        return self.now


@pytest.mark.parametrize(("asleep", "by_alarm"), [(3600, True), (7200, True), (60, False)])
def test_suspend_with_an_alarm_says_whether_the_alarm_woke_it(root: Path, asleep: float, by_alarm: bool) -> None:
    alarm = root / "sys/class/rtc/rtc0/wakealarm"
    alarm.parent.mkdir(parents=True)
    alarm.write_text("")
    m = RealMachine(str(root), runner=Recorder().runner, reboot_call=Recorder().reboot, ioctl=Recorder().ioctl,
                    clock=Clock(root, asleep))
    assert m.suspend_to_ram(alarm=3600) is by_alarm
    assert alarm.read_text() == "0", "the alarm is cleared after the wake-up"


def test_suspend_without_an_rtc_fails_before_sleeping(root: Path) -> None:
    m = machine(root, Recorder())
    with pytest.raises(MachineError, match="cannot set the RTC wake alarm"):
        m.suspend_to_ram(alarm=3600)
    assert (root / "sys/power/state").read_text() == "freeze mem disk\n"


def _gpt_disk(path: Path, partitions: list[tuple[str, str]]) -> None:
    """A disk image with a GPT (512-byte sectors) naming ``partitions`` as (unique GUID, name)."""
    import struct
    import uuid

    entries = b"".join(uuid.uuid4().bytes_le + uuid.UUID(guid).bytes_le + struct.pack("<QQQ", 2048, 4095, 0)
                       + name.encode("utf-16-le").ljust(72, b"\0") for guid, name in partitions)
    header = b"EFI PART" + struct.pack("<IIIIQQQQ16sQIII", 0x10000, 92, 0, 0, 1, 0, 34, 0, bytes(16), 2,
                                       len(partitions), 128, 0)
    path.write_bytes(bytes(512) + header.ljust(512, b"\0") + entries.ljust(16384, b"\0"))


def test_resolve_target_finds_partitions_without_udev_or_blkid(root: Path) -> None:
    """B's initramfs has no udev (no /dev/disk links) and Debian's static busybox
    has no blkid: by-partlabel names (the documented form) and by-partuuid names
    (what A records when the target has one) are found from sysfs and the GPT.
    B said "No such file or directory: 'blkid'" and saved nothing."""
    _gpt_disk(root / "dev/vdb", [("0d2f0a1e-3c4b-4d5e-8f90-a1b2c3d4e5f6", "kjump-image")])
    (root / "dev/vdb1").write_bytes(b"")
    for name, devtype, extra in (("vdb", "disk", ""), ("vdb1", "partition", "PARTN=1\nPARTNAME=kjump-image\n")):
        device = root / "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vdb" / (name if name != "vdb" else "")
        device.mkdir(parents=True, exist_ok=True)
        (device / "uevent").write_text(f"MAJOR=254\nMINOR=0\nDEVNAME={name}\nDEVTYPE={devtype}\n{extra}")
        (root / "sys/class/block").mkdir(parents=True, exist_ok=True)
        (root / "sys/class/block" / name).symlink_to(os.path.relpath(device, root / "sys/class/block"))

    class NoBlkid(Recorder):
        def runner(self, argv):
            raise FileNotFoundError(2, "No such file or directory", argv[0])

    m = machine(root, NoBlkid())
    assert m.resolve_target("/dev/disk/by-partlabel/kjump-image") == str(root / "dev/vdb1")
    assert m.resolve_target("/dev/disk/by-partuuid/0d2f0a1e-3c4b-4d5e-8f90-a1b2c3d4e5f6") == str(root / "dev/vdb1")
    with pytest.raises(MachineError, match="by-partlabel/other not found"):
        m.resolve_target("/dev/disk/by-partlabel/other")
    with pytest.raises(MachineError, match="by-uuid/1234 not found"):
        m.resolve_target("/dev/disk/by-uuid/1234")
