"""The udev device tracker under umockdev: fake block, memory and USB devices, real pyudev and libudev code paths.

The process must run under ``umockdev-wrapper`` (``make check`` does), so that
libudev and every /sys path see the test bed. A small fake kernel (``Kernel``)
does what the kernel would do on writes to a driver's ``bind``/``unbind``
files: the writes land in the test bed's files and the ``driver`` link follows.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

gi = pytest.importorskip("gi")
pyudev = pytest.importorskip("pyudev")

pytestmark = pytest.mark.skipif("libumockdev-preload" not in os.environ.get("LD_PRELOAD", ""),
                                reason="needs the umockdev preload: run under umockdev-wrapper (make check does)")

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

from kjumpd.ctl import main as kjumpctl  # noqa: E402
from kjumpd.daemon import devices  # noqa: E402
from kjumpd.daemon.devices import DeviceTracker  # noqa: E402
from kjumpd.errors import MachineError, RefusedError  # noqa: E402


class Bed:
    """A umockdev test bed with helpers for the devices these tests need, and a mount table."""

    def __init__(self, tmp_path: Path) -> None:
        self.tb = UMockdev.Testbed.new()
        self.sys_dir = self.tb.get_sys_dir()
        self.mountinfo = tmp_path / "mountinfo"
        self.mountinfo.write_text("")
        self._mount_id = 100

    def add(self, subsystem: str, name: str, parent: str | None = None, attributes: dict | None = None,
            properties: dict | None = None) -> str:
        """Add a device (emits "add" to running monitors); returns its /sys path."""
        attrs = [x for kv in (attributes or {}).items() for x in kv]
        props = [x for kv in (properties or {}).items() for x in kv]
        return self.tb.add_device(subsystem, name, parent, attrs, props)

    def block(self, name: str, number: tuple[int, int], parent: str | None = None, *, partition: bool = False,
              attributes: dict | None = None, **properties: str) -> str:
        props = {"DEVNAME": f"/dev/{name}", "DEVTYPE": "partition" if partition else "disk",
                 "MAJOR": str(number[0]), "MINOR": str(number[1])}
        props.update(properties)
        return self.add("block", name, parent, {"size": "2097152", **(attributes or {})}, props)

    def remove(self, path: str) -> None:
        """Unplug a device the way the kernel announces it."""
        self.tb.uevent(path, "remove")
        self.tb.remove_device(path)
        # umockdev 0.17 leaves /sys/block/NAME and similar links dangling, and aborts when NAME is added
        # again: remove every dangling link, as the kernel would have.
        for root, dirs, files in os.walk(self.sys_dir):
            for name in dirs + files:
                link = os.path.join(root, name)
                if os.path.islink(link) and not os.path.exists(link):
                    os.unlink(link)

    def real(self, sys_path: str) -> str:
        """The test bed's real file for a /sys path."""
        return self.sys_dir + sys_path[len("/sys"):]

    def bind(self, sys_path: str, subsystem: str, driver: str) -> str:
        """Give the device a driver (a bus driver directory with bind/unbind files); returns that directory."""
        driver_dir = os.path.join(self.sys_dir, "bus", subsystem, "drivers", driver)
        os.makedirs(driver_dir, exist_ok=True)
        for name in ("bind", "unbind"):
            Path(driver_dir, name).touch()
        os.symlink(os.path.relpath(driver_dir, self.real(sys_path)), os.path.join(self.real(sys_path), "driver"))
        return driver_dir

    def mount(self, number: tuple[int, int], mount_point: str, *, options: str = "rw", fstype: str = "ext4",
              source: str = "/dev/x", super_options: str | None = None) -> None:
        """A mount table line; the superblock's options are the mount's unless given."""
        self._mount_id += 1
        escaped = mount_point.replace(" ", "\\040")
        with self.mountinfo.open("a") as f:
            f.write(f"{self._mount_id} 1 {number[0]}:{number[1]} / {escaped} {options},relatime shared:1 "
                    f"- {fstype} {source} {super_options or options}\n")


class Kernel:
    """Does what the kernel does on bind/unbind writes: the driver link goes away or comes back.

    Wraps kjumpd.daemon.devices._write_sysfs (the real write still lands in the test
    bed) and records every write in order.
    """

    def __init__(self, bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bed = bed
        self.writes: list[tuple[str, str, str]] = []  # (driver, "bind"/"unbind", device name)
        self._write = devices._write_sysfs
        monkeypatch.setattr(devices, "_write_sysfs", self.write)

    def write(self, path: str, value: str) -> None:
        self._write(path, value)
        driver_dir, op = os.path.split(path)
        self.writes.append((os.path.basename(driver_dir), op, value))
        real_driver_dir = self.bed.real(driver_dir)
        for root, _dirs, _ in os.walk(os.path.join(self.bed.sys_dir, "devices")):
            if os.path.basename(root) == value:
                link = os.path.join(root, "driver")
                if op == "unbind":
                    os.unlink(link)
                else:
                    os.symlink(os.path.relpath(real_driver_dir, root), link)
                return


@pytest.fixture
def main_context() -> Iterator[GLib.MainContext]:
    """A private main context, pushed as this thread's default: the tracker's watches attach to it."""
    context = GLib.MainContext.new()
    context.push_thread_default()
    yield context
    context.pop_thread_default()


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    testbed = Bed(tmp_path)
    yield testbed
    del testbed.tb
    gc.collect()


@pytest.fixture
def tracker_factory(bed: Bed, main_context: GLib.MainContext) -> Iterator[Callable[..., DeviceTracker]]:
    """Build trackers on the test bed (and stop them at the end); ``changes`` counts on_change calls."""
    made: list[DeviceTracker] = []

    def make(target: str, *, start: bool = True) -> DeviceTracker:
        def on_change() -> None:
            tracker.changes += 1
            tracker.change_threads.add(threading.get_ident())

        tracker = DeviceTracker(target, context=pyudev.Context(), mountinfo=str(bed.mountinfo), on_change=on_change)
        tracker.changes = 0
        tracker.change_threads = set()
        if start:
            tracker.start()
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.stop()


def pump(context: GLib.MainContext) -> None:
    """Dispatch everything that is ready (umockdev delivers uevents synchronously)."""
    while context.iteration(False):
        pass


def system_disk(bed: Bed) -> tuple[str, str]:
    """A SATA disk sda with partition sda1 (fs UUID, partition UUID, by-id link)."""
    disk = bed.block("sda", (8, 0), ID_SERIAL="DISK-A", ID_BUS="ata")
    part = bed.block("sda1", (8, 1), disk, partition=True, ID_FS_UUID="aaaa-1111", ID_FS_UUID_ENC="aaaa-1111",
                     ID_PART_ENTRY_UUID="0d0e0f-01",
                     DEVLINKS="/dev/disk/by-id/ata-DISK-A-part1 /dev/disk/by-path/pci-0000:00:1f.2-ata-1-part1")
    return disk, part


# --- the image target ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/dev/disk/by-uuid/aaaa-1111", "/dev/disk/by-partuuid/0d0e0f-01",
                                    "/dev/disk/by-id/ata-DISK-A-part1", "/dev/sda1"])
def test_target_resolves_through_udev(bed: Bed, tracker_factory, target: str) -> None:
    system_disk(bed)
    tracker = tracker_factory(target)
    assert tracker.problems() == []
    identity = tracker.target_identity()
    assert identity["target"] == target
    assert identity["kind"] == "block"
    assert identity["devname"] == "/dev/sda1"
    assert identity["disk"] == "/dev/sda"
    assert identity["serial"] == "DISK-A"
    assert identity["fs-uuid"] == "aaaa-1111"
    assert identity["part-uuid"] == "0d0e0f-01"
    assert identity["size"] == "2097152"


def test_target_missing_from_the_start(bed: Bed, tracker_factory) -> None:
    system_disk(bed)
    tracker = tracker_factory("/dev/disk/by-uuid/bbbb-2222")
    assert tracker.problems() == ["image target /dev/disk/by-uuid/bbbb-2222 is missing: no such block device"]
    assert tracker.target_identity() is None


def test_target_vanishes_and_returns(bed: Bed, tracker_factory, main_context) -> None:
    disk, part = system_disk(bed)
    tracker = tracker_factory("/dev/disk/by-uuid/aaaa-1111")
    pump(main_context)
    assert tracker.changes == 0
    before = tracker.target_identity()

    bed.remove(part)
    pump(main_context)
    assert tracker.changes == 1
    assert tracker.problems() == ["image target /dev/disk/by-uuid/aaaa-1111 is missing: no such block device"]

    bed.block("sda1", (8, 1), disk, partition=True, ID_FS_UUID="aaaa-1111", ID_PART_ENTRY_UUID="0d0e0f-01")
    pump(main_context)
    assert tracker.changes == 2
    assert tracker.problems() == []
    assert tracker.target_identity()["serial"] == before["serial"]


def test_target_replaced_by_another_disk_is_reported_until_restart(bed: Bed, tracker_factory, main_context) -> None:
    disk, part = system_disk(bed)
    tracker = tracker_factory("/dev/disk/by-uuid/aaaa-1111")
    bed.remove(part)
    bed.remove(disk)
    # a clone of the partition on another disk: same filesystem UUID, different serial
    other = bed.block("sdb", (8, 16), ID_SERIAL="DISK-B")
    bed.block("sdb1", (8, 17), other, partition=True, ID_FS_UUID="aaaa-1111", ID_PART_ENTRY_UUID="0d0e0f-01")
    pump(main_context)
    assert tracker.changes >= 1
    [problem] = tracker.problems()
    assert problem.startswith("image target /dev/disk/by-uuid/aaaa-1111 changed: serial was DISK-A, now DISK-B")
    assert tracker.target_identity() is None
    tracker.stop()
    tracker.start()  # a restart accepts the disk that is there now
    assert tracker.problems() == []
    assert tracker.target_identity()["serial"] == "DISK-B"


def test_target_changed_in_place(bed: Bed, tracker_factory, main_context) -> None:
    """A change event that resizes the target partition is a different target."""
    _, part = system_disk(bed)
    tracker = tracker_factory("/dev/disk/by-partuuid/0d0e0f-01")
    bed.tb.set_attribute(part, "size", "4096")
    bed.tb.uevent(part, "change")
    pump(main_context)
    assert tracker.changes == 1
    assert tracker.problems()[0].endswith("size was 2097152, now 4096; it is not the device it was when kjumpd "
                                          "started (restart kjumpd to accept it)")


def test_ambiguous_target(bed: Bed, tracker_factory) -> None:
    system_disk(bed)
    other = bed.block("sdb", (8, 16), ID_SERIAL="DISK-B")
    bed.block("sdb1", (8, 17), other, partition=True, ID_FS_UUID="aaaa-1111")
    tracker = tracker_factory("/dev/disk/by-uuid/aaaa-1111")
    assert tracker.problems() == ["image target /dev/disk/by-uuid/aaaa-1111 is ambiguous: /dev/sda1, /dev/sdb1 "
                                  "all match it"]


def test_file_target_is_identified_by_its_filesystem(bed: Bed, tracker_factory, tmp_path: Path) -> None:
    system_disk(bed)
    image = tmp_path / "store" / "kjump.img"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 4096)
    bed.mount((0, 40), "/", fstype="overlay", source="overlay")
    bed.mount((8, 1), str(image.parent))
    tracker = tracker_factory(str(image))
    assert tracker.problems() == []
    identity = tracker.target_identity()
    assert identity["kind"] == "file"
    assert identity["devname"] == "/dev/sda1"
    assert identity["fs-uuid"] == "aaaa-1111"
    assert identity["inode"] == str(image.stat().st_ino)

    # the file replaced by another one (both exist at once, so the inode differs): its blocks are elsewhere
    replacement = image.with_name("new.img")
    replacement.write_bytes(b"\0" * 4096)
    os.replace(replacement, image)
    assert tracker.problems()[0].startswith(f"image file {image} changed: inode was {identity['inode']}, now ")
    image.unlink()
    assert tracker.problems() == [f"image file {image} is missing: No such file or directory"]


def test_file_target_on_a_filesystem_without_a_block_device(bed: Bed, tracker_factory, tmp_path: Path) -> None:
    image = tmp_path / "kjump.img"
    image.write_bytes(b"x")
    bed.mount((0, 40), str(tmp_path), fstype="tmpfs", source="tmpfs")
    tracker = tracker_factory(str(image))
    assert tracker.problems() == [f"image file {image} is on tmpfs at {tmp_path}, which is not on a block device"]


def test_no_target_configured(bed: Bed, tracker_factory) -> None:
    tracker = tracker_factory("")
    assert tracker.problems() == []
    assert tracker.target_identity() is None
    assert tracker.describe()[0]["state"] == "not configured"


# --- removable media ----------------------------------------------------------------------------------------


def usb_stick(bed: Bed, *, removable: str = "1") -> tuple[str, str, str]:
    """A USB host controller with a USB stick (disk sdc, partition sdc1)."""
    controller = bed.add("usb", "usb1", None, {"idVendor": "1d6b"}, {"DEVTYPE": "usb_device"})
    stick = bed.add("usb", "1-1", controller, {"idVendor": "0781", "removable": "removable"},
                    {"DEVTYPE": "usb_device", "ID_SERIAL": "SanDisk_Stick_01"})
    disk = bed.block("sdc", (8, 32), stick, attributes={"removable": removable}, ID_BUS="usb")
    part = bed.block("sdc1", (8, 33), disk, partition=True, ID_FS_UUID="cccc-3333")
    return controller, stick, part


def test_writable_mount_on_removable_disk_blocks_unless_forced(bed: Bed, tracker_factory) -> None:
    system_disk(bed)
    usb_stick(bed)
    bed.mount((8, 1), "/")
    bed.mount((8, 33), "/media/my stick")
    tracker = tracker_factory("/dev/disk/by-uuid/aaaa-1111")
    assert tracker.problems() == ["/media/my stick is mounted writable from /dev/sdc1 and sdc is removable: "
                                  "unmount it, remount it read-only, or hibernate with force"]
    assert tracker.problems(force=True) == []


def test_usb_disk_without_removable_flag_counts_as_removable(bed: Bed, tracker_factory) -> None:
    usb_stick(bed, removable="0")
    bed.mount((8, 33), "/media/stick")
    tracker = tracker_factory("")
    assert tracker.problems() == ["/media/stick is mounted writable from /dev/sdc1 and sdc is on USB: "
                                  "unmount it, remount it read-only, or hibernate with force"]


def test_removable_file_system_writable_elsewhere_blocks_inside_the_sandbox(bed: Bed, tracker_factory) -> None:
    """Issue 10.4: in kjumpd.service's namespace (ProtectSystem=strict) every mount is read-only; the
    superblock still says whether the stick's file system is written through the host's mount."""
    usb_stick(bed)
    bed.mount((8, 33), "/media/stick", options="ro", super_options="rw")
    tracker = tracker_factory("")
    assert tracker.problems() == ["/media/stick is mounted writable from /dev/sdc1 and sdc is removable: "
                                  "unmount it, remount it read-only, or hibernate with force"]
    [entry] = [e for e in tracker.describe() if e["role"] == "removable-mount"]
    assert entry["state"] == "writable"


def test_read_only_removable_mount_does_not_block(bed: Bed, tracker_factory) -> None:
    usb_stick(bed)
    bed.mount((8, 33), "/media/stick", options="ro")
    tracker = tracker_factory("")
    assert tracker.problems() == []
    [entry] = [e for e in tracker.describe() if e["role"] == "removable-mount"]
    assert entry["state"] == "read-only" and entry["action"] == "none"


def test_encrypted_volume_on_a_usb_stick_is_removable(bed: Bed, tracker_factory) -> None:
    """A device-mapper volume counts as removable when a device under it (sysfs slaves) is."""
    usb_stick(bed)
    dm = bed.block("dm-0", (254, 0), DM_UUID="CRYPT-LUKS2-xyz", DEVLINKS="/dev/mapper/stick")
    os.makedirs(os.path.join(bed.real(dm), "slaves"))
    os.symlink("../../sdc/sdc1", os.path.join(bed.real(dm), "slaves", "sdc1"))
    bed.mount((254, 0), "/media/secret")
    tracker = tracker_factory("")
    assert tracker.problems() == ["/media/secret is mounted writable from /dev/dm-0 and sdc is removable: "
                                  "unmount it, remount it read-only, or hibernate with force"]


def test_internal_disk_does_not_block(bed: Bed, tracker_factory) -> None:
    system_disk(bed)
    bed.mount((8, 1), "/")
    assert tracker_factory("/dev/sda1").problems() == []


# --- memory hot-plug ------------------------------------------------------------------------------------------


def test_memory_hotplug_makes_the_map_stale(bed: Bed, tracker_factory, main_context) -> None:
    bed.add("memory", "memory0", None, {"state": "online"})
    tracker = tracker_factory("")
    pump(main_context)
    assert tracker.memory_stale is False
    block = bed.add("memory", "memory1", None, {"state": "offline"})
    pump(main_context)
    assert tracker.memory_stale is True
    assert tracker.changes == 1
    tracker.clear_memory_stale()
    assert tracker.memory_stale is False
    bed.tb.set_attribute(block, "state", "online")
    bed.tb.uevent(block, "online")
    pump(main_context)
    assert tracker.memory_stale is True
    assert tracker.changes == 2  # clearing is the caller's own doing: it is not announced


def test_memory_change_is_seen_without_events(bed: Bed, tracker_factory) -> None:
    """Without udevd no events arrive: the memory blocks themselves are compared too."""
    bed.add("memory", "memory0", None, {"state": "online"})
    tracker = tracker_factory("")
    tracker.stop()
    bed.add("memory", "memory1", None, {"state": "online"})
    assert tracker.memory_stale is True


def test_events_the_tracker_does_not_watch_change_nothing(bed: Bed, tracker_factory, main_context) -> None:
    system_disk(bed)
    tracker = tracker_factory("/dev/sda1")
    pump(main_context)
    controller = bed.add("usb", "usb2", None, {"idVendor": "1d6b"}, {"DEVTYPE": "usb_device"})
    bed.add("net", "eth0", controller, {}, {"INTERFACE": "eth0"})
    pump(main_context)
    assert tracker.changes == 0
    assert tracker.problems() == []
    assert tracker.memory_stale is False


def test_idle_tracker_never_wakes_the_process(bed: Bed, tracker_factory, main_context) -> None:
    """Over an idle period the context wakes exactly once: for the test's own timer. The tracker never."""
    system_disk(bed)
    bed.add("memory", "memory0", None, {"state": "online"})
    bed.mount((8, 1), "/")
    tracker = tracker_factory("/dev/disk/by-uuid/aaaa-1111")
    pump(main_context)
    dispatches = tracker.dispatches
    ended = []
    timer = GLib.timeout_source_new(2000)
    timer.set_callback(lambda *_: ended.append(True) or False)
    timer.attach(main_context)
    wakeups = 0
    while not ended:
        main_context.iteration(True)
        wakeups += 1
    assert wakeups == 1
    assert tracker.dispatches == dispatches


# --- around the jump --------------------------------------------------------------------------------------------


@pytest.fixture
def kernel(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> Kernel:
    return Kernel(bed, monkeypatch)


def quirky_usb(bed: Bed) -> dict[str, str]:
    """A USB controller and a webcam below it, both tagged KJUMP_UNBIND=1, and an untagged keyboard."""
    controller = bed.add("usb", "usb3", None, {"idVendor": "1d6b"}, {"DEVTYPE": "usb_device", "KJUMP_UNBIND": "1"})
    camera = bed.add("usb", "3-1", controller, {"idVendor": "046d"},
                     {"DEVTYPE": "usb_device", "KJUMP_UNBIND": "1", "ID_SERIAL": "Logitech_Cam"})
    keyboard = bed.add("usb", "3-2", controller, {"idVendor": "04d9"}, {"DEVTYPE": "usb_device"})
    dirs = {"hub": bed.bind(controller, "usb", "hub"), "uvc": bed.bind(camera, "usb", "uvcvideo")}
    bed.bind(keyboard, "usb", "usbhid")
    return {"controller": controller, "camera": camera, "keyboard": keyboard, **dirs}


def test_quirk_devices_are_unbound_children_first_and_bound_parents_first(bed: Bed, tracker_factory,
                                                                        kernel: Kernel) -> None:
    devs = quirky_usb(bed)
    tracker = tracker_factory("")
    tracker.before_jump()
    assert kernel.writes == [("uvcvideo", "unbind", "3-1"), ("hub", "unbind", "usb3")]
    assert Path(devs["uvc"], "unbind").read_text() == "3-1"
    assert Path(devs["hub"], "unbind").read_text() == "usb3"
    assert not os.path.exists(os.path.join(bed.real(devs["camera"]), "driver"))
    result = tracker.after_jump()
    assert kernel.writes[2:] == [("hub", "bind", "usb3"), ("uvcvideo", "bind", "3-1")]
    assert Path(devs["hub"], "bind").read_text() == "usb3"
    assert Path(devs["uvc"], "bind").read_text() == "3-1"
    assert result == {"devices-added": [], "devices-removed": [], "rebind-failed": []}
    assert pyudev.Devices.from_path(pyudev.Context(), devs["camera"]).driver == "uvcvideo"


def test_device_already_bound_after_the_jump_is_left_alone(bed: Bed, tracker_factory, kernel: Kernel) -> None:
    devs = quirky_usb(bed)
    tracker = tracker_factory("")
    tracker.before_jump()
    bed.bind(devs["camera"], "usb", "uvcvideo")  # re-probed by itself when its hub came back
    tracker.after_jump()
    assert ("uvcvideo", "bind", "3-1") not in kernel.writes


def test_rebind_failure_is_reported_not_raised(bed: Bed, tracker_factory, kernel: Kernel) -> None:
    devs = quirky_usb(bed)
    tracker = tracker_factory("")
    tracker.before_jump()
    os.unlink(os.path.join(devs["uvc"], "bind"))  # the driver went away during the jump
    result = tracker.after_jump()
    assert result["rebind-failed"] == ["/devices/usb3/3-1 (uvcvideo): No such file or directory"]
    assert ("hub", "bind", "usb3") in kernel.writes


def test_unbind_failure_binds_again_and_raises(bed: Bed, tracker_factory, kernel: Kernel) -> None:
    devs = quirky_usb(bed)
    os.unlink(os.path.join(devs["hub"], "unbind"))
    tracker = tracker_factory("")
    with pytest.raises(MachineError, match="cannot unbind /devices/usb3 from hub: No such file or directory"):
        tracker.before_jump()
    assert kernel.writes == [("uvcvideo", "unbind", "3-1"), ("uvcvideo", "bind", "3-1")]
    with pytest.raises(RuntimeError, match="without a successful before_jump"):
        tracker.after_jump()


def test_unbinding_what_the_image_target_sits_on_is_refused(bed: Bed, tracker_factory, kernel: Kernel) -> None:
    controller, stick, part = usb_stick(bed)
    bed.tb.set_property(controller, "KJUMP_UNBIND", "1")
    bed.bind(controller, "usb", "hub")
    tracker = tracker_factory("/dev/disk/by-uuid/cccc-3333")
    expected = ("/devices/usb1 is tagged KJUMP_UNBIND=1 but the image target /dev/disk/by-uuid/cccc-3333 "
                "depends on it: it cannot be unbound for the jump")
    assert tracker.problems(force=True) == [expected]
    with pytest.raises(RefusedError, match="cannot be unbound"):
        tracker.before_jump()
    assert kernel.writes == []
    [entry] = [e for e in tracker.describe() if e["role"] == "unbind"]
    assert entry["action"] == f"refused: {expected}"


def test_tagged_device_without_driver_is_skipped(bed: Bed, tracker_factory, kernel: Kernel) -> None:
    bed.add("usb", "usb4", None, {}, {"DEVTYPE": "usb_device", "KJUMP_UNBIND": "1"})
    bed.add("usb", "usb5", None, {}, {"DEVTYPE": "usb_device", "KJUMP_UNBIND": "0"})
    tracker = tracker_factory("")
    [entry] = [e for e in tracker.describe() if e["role"] == "unbind"]
    assert (entry["device"], entry["state"], entry["action"]) == ("usb4", "unbound", "none: no driver bound")
    tracker.before_jump()
    assert tracker.after_jump()["rebind-failed"] == []
    assert kernel.writes == []


def test_devices_added_and_removed_across_the_jump(bed: Bed, tracker_factory, kernel: Kernel,
                                                   main_context) -> None:
    system_disk(bed)
    devs = quirky_usb(bed)
    bed.add("memory", "memory0", None, {"state": "online"})
    tracker = tracker_factory("/dev/disk/by-uuid/aaaa-1111")

    def in_worker(hook: Callable[[], object]) -> object:
        """Call a jump hook from another thread, as the hibernator does."""
        box = []
        worker = threading.Thread(target=lambda: box.append(hook()))
        worker.start()
        worker.join()
        return box[0]

    in_worker(tracker.before_jump)
    # while "away": the keyboard is unplugged, a stick and a memory block appear
    bed.remove(devs["keyboard"])
    usb_stick(bed)
    bed.add("memory", "memory1", None, {"state": "online"})
    result = in_worker(tracker.after_jump)
    assert result["devices-removed"] == ["/devices/usb3/3-2"]
    assert result["devices-added"] == ["/devices/memory1", "/devices/usb1", "/devices/usb1/1-1 [SanDisk_Stick_01]",
                                       "/devices/usb1/1-1/sdc", "/devices/usb1/1-1/sdc/sdc1"]
    assert result["rebind-failed"] == []
    assert tracker.memory_stale is True
    pump(main_context)
    assert tracker.changes >= 1
    assert tracker.change_threads == {threading.get_ident()}  # on the main context, never in the worker


def test_jump_hooks_misuse(bed: Bed, tracker_factory) -> None:
    tracker = tracker_factory("")
    tracker.before_jump()
    with pytest.raises(RuntimeError, match="called again"):
        tracker.before_jump()
    tracker.after_jump()


# --- describe, kjumpctl -----------------------------------------------------------------------------------------


def test_describe_lists_what_it_sees_and_would_do(bed: Bed, tracker_factory) -> None:
    system_disk(bed)
    quirky_usb(bed)
    usb_stick(bed)
    bed.add("memory", "memory0", None, {"state": "online"})
    bed.add("memory", "memory1", None, {"state": "offline"})
    bed.mount((8, 33), "/media/stick")
    entries = tracker_factory("/dev/disk/by-uuid/aaaa-1111").describe()
    for entry in entries:
        assert {"role", "device", "state", "action"} <= entry.keys()
    roles = [(e["role"], e["device"], e["state"]) for e in entries]
    assert roles == [("image-target", "/dev/disk/by-uuid/aaaa-1111", "ok"), ("unbind", "3-1", "bound"),
                     ("unbind", "usb3", "bound"), ("removable-mount", "/dev/sdc1", "writable"),
                     ("memory", "2 memory blocks", "current")]
    assert entries[0]["identity"]["serial"] == "DISK-A"
    assert entries[1]["action"] == "unbind from uvcvideo before the jump, bind again after"
    assert entries[3]["action"] == "blocks hibernation unless forced"
    assert entries[4]["online"] == 1


def test_kjumpctl_devices(bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """kjumpctl reads udev (the test bed) and the real mount table, on which no test-bed disk is mounted."""
    system_disk(bed)
    quirky_usb(bed)
    assert kjumpctl(["devices", "--json", "--target", "/dev/disk/by-uuid/aaaa-1111"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image-target"] == "/dev/disk/by-uuid/aaaa-1111"
    assert out["identity"]["devname"] == "/dev/sda1"
    assert out["problems"] == out["problems-with-force"] == []
    assert [(d["role"], d["device"]) for d in out["devices"]] == [
        ("image-target", "/dev/disk/by-uuid/aaaa-1111"), ("unbind", "3-1"), ("unbind", "usb3"),
        ("memory", "0 memory blocks")]

    assert kjumpctl(["devices", "--target", "/dev/disk/by-uuid/bbbb-2222"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["ROLE", "DEVICE", "STATE", "ACTION"]
    assert text[1].split()[:3] == ["image-target", "/dev/disk/by-uuid/bbbb-2222", "missing"]
    assert text[-2:] == ["Hibernation would be refused:",
                         "  image target /dev/disk/by-uuid/bbbb-2222 is missing: no such block device"]

    config = tmp_path / "etc"
    config.mkdir()
    (config / "kjumpd.conf").write_text("[Image]\nTarget=/dev/disk/by-id/ata-DISK-A-part1\n")
    assert kjumpctl(["devices", "--config", str(config)]) == 0
    assert "No device stands in the way of hibernation." in capsys.readouterr().out
    (config / "kjumpd.conf").write_text("[Image]\nTarget=relative\n")
    assert kjumpctl(["devices", "--config", str(config)]) == 1
    assert "is not an absolute path" in capsys.readouterr().err


def test_debug_log_names_events(bed: Bed, tracker_factory, main_context, caplog: pytest.LogCaptureFixture) -> None:
    tracker_factory("")
    with caplog.at_level(logging.DEBUG, logger="kjumpd.daemon.devices"):
        bed.block("sdz", (8, 240))
        pump(main_context)
    assert "udev: add block /devices/sdz" in caplog.text


# --- the tracker as a participant of a real hibernation (the simulated machine) --------------------------------


@pytest.fixture
def simulated(tmp_path: Path, bed: Bed):
    """A simulated machine whose image file lies on the test bed's sda1 (per the test's mount table)."""
    from kjumpd.daemon.hibernator import HibernateSettings, Hibernator
    from kjumpd.machine.simulated import SimulatedMachine

    machine = SimulatedMachine.create(str(tmp_path / "machine"), ram_size=16 << 20, cpus=1)
    system_disk(bed)
    bed.mount((8, 1), str(tmp_path / "machine"))

    def make(tracker: DeviceTracker) -> Hibernator:
        settings = HibernateSettings(image_target=machine.target_path, kernel=machine.kernel_path,
                                     initrd=machine.initrd_path, region_size=4 << 20, compression="lz4")
        return Hibernator(machine, settings, (tracker,))

    return machine, make


def test_hibernation_unbinds_and_reports_devices(bed: Bed, tracker_factory, kernel: Kernel, simulated) -> None:
    machine, make = simulated
    devs = quirky_usb(bed)
    tracker = tracker_factory(machine.target_path)
    assert tracker.target_identity()["devname"] == "/dev/sda1"
    result = make(tracker).hibernate("reboot")
    assert result.success and result.resumed_from_disk, result.reason
    assert kernel.writes == [("uvcvideo", "unbind", "3-1"), ("hub", "unbind", "usb3"),
                             ("hub", "bind", "usb3"), ("uvcvideo", "bind", "3-1")]
    assert result.details["devices-added"] == result.details["devices-removed"] == []
    assert result.details["rebind-failed"] == []
    assert os.path.islink(os.path.join(bed.real(devs["camera"]), "driver"))


def test_hibernation_refused_for_a_removable_mount_unless_forced(bed: Bed, tracker_factory, kernel: Kernel,
                                                                simulated) -> None:
    machine, make = simulated
    usb_stick(bed)
    bed.mount((8, 33), "/media/stick")
    tracker = tracker_factory(machine.target_path)
    hibernator = make(tracker)
    with pytest.raises(RefusedError, match="/media/stick is mounted writable from /dev/sdc1"):
        hibernator.hibernate("reboot")
    result = hibernator.hibernate("reboot", force=True)
    assert result.success, result.reason


def test_hibernation_refused_while_the_target_disk_is_gone(bed: Bed, tracker_factory, simulated,
                                                          main_context) -> None:
    machine, make = simulated
    tracker = tracker_factory(machine.target_path)
    bed.remove("/sys/devices/sda/sda1")
    pump(main_context)
    assert tracker.changes == 1
    with pytest.raises(RefusedError, match=f"image file {machine.target_path} is on /dev/x \\(8:1\\) at .*, "
                                           "which is missing: no such block device"):
        make(tracker).hibernate("reboot")
