"""Issue 5's acceptance: kjumpd under umockdev, with fake block, memory and USB devices.

kjumpd runs in this process (``InProcessDaemon`` with ``hibernator=None``:
``kjumpd.daemon.main.make_manager``, as the ``kjumpd`` command builds it) with the real
Hibernator on a simulated machine and the real udev ``DeviceTracker``, on a
private bus. The process runs under ``umockdev-wrapper``, so libudev and every
/sys path the tracker reads are umockdev's test bed (``test_devices.Bed``),
and the test bed's uevents reach the tracker's monitor on the daemon's main
loop. umockdev does not fake /proc: the tracker reads the test bed's mount
table file instead of /proc/self/mountinfo (its ``mountinfo`` argument,
set here for the tracker ``make_tracker`` builds). That table puts the
simulated machine's directory, and so its image file, on the test bed's sda1.

What a client sees is checked on the bus: ``Problems``, ``CanHibernate()``,
the errors of ``Hibernate``, the ``Resumed`` and ``DevicesChanged`` signals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gi.repository import GLib
from test_cycle_sim import events
from test_dbus_daemon import NAME, PATH, write_config
from test_devices import Bed, bed, pytestmark, system_disk, usb_stick  # noqa: F401  (fixture, skip mark)

from dbus_testing import InProcessDaemon, Mock, Signals, connect, wait_for
from kjumpd.daemon import config as configmod
from kjumpd.daemon import devices
from kjumpd.machine.simulated import SimulatedMachine

STICK_PROBLEM = ("/media/stick is mounted writable from /dev/sdc1 and sdc is removable: "
                 "unmount it, remount it read-only, or hibernate with force")


@pytest.fixture
def machine(tmp_path: Path, bed: Bed, monkeypatch: pytest.MonkeyPatch) -> SimulatedMachine:
    """A simulated machine whose directory (and image file) is on the test bed's sda1, per the mount table."""
    m = SimulatedMachine.create(str(tmp_path / "machine"), ram_size=48 << 20, cpus=1)
    system_disk(bed)
    bed.mount((8, 1), m.path)

    class BedTracker(devices.DeviceTracker):
        """The real tracker, reading the test bed's mount table."""

        def __init__(self, image_target: str, **kwargs: object) -> None:
            super().__init__(image_target, mountinfo=str(bed.mountinfo), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(devices, "DeviceTracker", BedTracker)
    return m


@pytest.fixture
def start_kjumpd(tmp_path: Path, machine: SimulatedMachine, system_bus: str, polkitd: Mock,
                 logind: Mock) -> Iterator[Callable[[], tuple[InProcessDaemon, Any]]]:
    """Start kjumpd in-process once the test has set up its devices; returns it and a proxy of its object."""
    started: list[InProcessDaemon] = []

    def start() -> tuple[InProcessDaemon, Any]:
        config = configmod.load(write_config(tmp_path / "etc", machine))
        started.append(InProcessDaemon(system_bus, None, config))
        assert started[0].manager.tracker is not None, "the daemon runs without its device tracker"
        polkitd.proxy.SetAllowed(["org.kjump.hibernate", "org.kjump.manage"])
        return started[0], connect(system_bus).get(NAME, PATH)

    yield start
    for daemon in started:
        daemon.stop()


def idle_with_result(obj: Any) -> dict:
    """Wait until the daemon is idle again and return LastResult."""
    wait_for(lambda: obj.State == "idle", "State idle")
    return obj.LastResult


def test_image_target_vanishes_and_comes_back(bed: Bed, machine: SimulatedMachine, start_kjumpd) -> None:
    kjumpd, obj = start_kjumpd()
    assert obj.Problems == [] and obj.CanHibernate() == "yes"
    signals = Signals(obj, "PropertiesChanged")

    # On the daemon's loop, so that the tracker handles the uevent once the device is gone, as it would
    # with udevd (umockdev sends the "remove" uevent before the device's files go away).
    kjumpd.call(lambda: bed.remove("/sys/devices/sda/sda1"))
    missing = (f"image file {machine.target_path} is on /dev/x (8:1) at {machine.path}, "
               "which is missing: no such block device")
    wait_for(lambda: signals.announced("Problems")[-1:] == [[missing]], "the problem to be announced")
    assert obj.Problems == [missing]
    assert obj.CanHibernate() == "na"
    with pytest.raises(GLib.Error, match="org.kjump.Hibernate1.Error.NotReady: .*" + re.escape(missing)):
        obj.Hibernate("resume")
    assert "jump:B" not in events(machine)

    bed.block("sda1", (8, 1), "/sys/devices/sda", partition=True, ID_FS_UUID="aaaa-1111",
              ID_PART_ENTRY_UUID="0d0e0f-01")
    wait_for(lambda: signals.announced("Problems")[-1:] == [[]], "the problem to go away by itself")
    assert obj.Problems == []
    assert obj.CanHibernate() == "yes"


def test_removable_writable_mount_blocks_unless_forced(bed: Bed, machine: SimulatedMachine, start_kjumpd) -> None:
    usb_stick(bed)
    bed.mount((8, 33), "/media/stick")
    _kjumpd, obj = start_kjumpd()
    assert obj.Problems == [STICK_PROBLEM]
    assert obj.CanHibernate() == "na"
    with pytest.raises(GLib.Error, match="org.kjump.Hibernate1.Error.NotReady: .*" + re.escape(STICK_PROBLEM)):
        obj.Hibernate("resume")
    with pytest.raises(GLib.Error, match="org.kjump.Hibernate1.Error.NotReady"):
        obj.HibernateWithOptions("resume", {"force": GLib.Variant("b", False)})
    assert "jump:B" not in events(machine)

    signals = Signals(obj, "Resumed")
    obj.HibernateWithOptions("resume", {"force": GLib.Variant("b", True)})
    [(point, details)] = signals.wait("Resumed")
    assert point == "resume" and details["success"] is True, details
    assert idle_with_result(obj) == details
    assert "jump:B" in events(machine)
    assert obj.Problems == [STICK_PROBLEM], "forcing once does not make the stick safe"


def test_devices_changed_across_a_jump(bed: Bed, machine: SimulatedMachine, start_kjumpd) -> None:
    controller = bed.add("usb", "usb3", None, {"idVendor": "1d6b"}, {"DEVTYPE": "usb_device"})
    keyboard = bed.add("usb", "3-2", controller, {"idVendor": "04d9"}, {"DEVTYPE": "usb_device"})
    _kjumpd, obj = start_kjumpd()
    signals = Signals(obj, "Resumed", "DevicesChanged")

    obj.Hibernate("shutdown")
    wait_for(lambda: machine.running == "off", "the machine to switch off")
    # While the machine is off, the keyboard is unplugged and a USB stick is plugged in.
    bed.remove(keyboard)
    usb_stick(bed)
    assert SimulatedMachine(machine.path).power_on().resumed

    [(point, details)] = signals.wait("Resumed")
    added = ["/devices/usb1", "/devices/usb1/1-1 [SanDisk_Stick_01]", "/devices/usb1/1-1/sdc",
             "/devices/usb1/1-1/sdc/sdc1"]
    removed = ["/devices/usb3/3-2"]
    assert point == "shutdown" and details["result"] == "resumed-from-disk", details
    assert details["details"]["devices-added"] == added
    assert details["details"]["devices-removed"] == removed
    assert details["details"]["rebind-failed"] == []
    assert signals.wait("DevicesChanged") == [(added, removed)]
    assert idle_with_result(obj) == details


def test_memory_hotplug_restages_before_the_next_hibernation(bed: Bed, machine: SimulatedMachine,
                                                             start_kjumpd) -> None:
    bed.add("memory", "memory0", None, {"state": "online"})
    _kjumpd, obj = start_kjumpd()
    obj.Prepare()
    wait_for(lambda: obj.State == "idle" and obj.Staged, "the first staging")
    loads = events(machine).count("kexec-load")
    signals = Signals(obj, "PropertiesChanged", "Resumed")

    bed.add("memory", "memory1", None, {"state": "online"})
    wait_for(lambda: signals.announced("State")[-1:] == ["idle"], "kjumpd to stage B again")
    assert signals.announced("State") == ["preparing", "idle"]
    assert events(machine).count("kexec-load") == loads + 1
    assert obj.Staged is True and obj.Problems == []
    start = len(events(machine))

    obj.Hibernate("resume")
    [(_point, details)] = signals.wait("Resumed")
    assert details["success"] is True, details
    log = events(machine)[start:]
    assert "kexec-load" not in log[:log.index("jump:B")], "B was already staged for the new memory"
    assert "stage" not in details["durations"]
