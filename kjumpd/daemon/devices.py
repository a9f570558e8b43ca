"""Device state through udev: the image target, removable media, memory hot-plug, quirk devices.

``DeviceTracker`` is kjumpd's view of the devices that matter for a
hibernation (format and behaviour: ``docs/devices.md``):

- the **image target** (a stable ``/dev/disk/by-*`` name, a device node, or a
  file, whose identity is then the block device of its filesystem) must be
  present and be the same device it was when the tracker started;
- a **writable filesystem on a removable disk** (sysfs ``removable`` = 1, or on
  USB) blocks hibernation unless forced: the disk may be gone or changed by
  the time the saved system runs again. Writable is the superblock's flag:
  inside kjumpd.service every mount is a read-only bind mount;
- **memory hot-plug** makes the memory map stale;
- devices tagged ``KJUMP_UNBIND=1`` by udev rules are unbound from their
  drivers before the jump and bound again after it;
- devices added or removed across a hibernation are reported.

Events come from a pyudev ``Monitor`` watched on the GLib main context of the
thread that called ``start()`` (normally the daemon's main loop), and mount
changes from ``/proc/self/mountinfo`` (which signals ``POLLPRI``): nothing
polls, so an idle tracker never wakes the process. Every answer
(``problems()``, ``describe()``, ``target_identity()``) is computed from udev
when asked, so it is right even without udevd; events only drive
``on_change`` and ``memory_stale``. The jump hooks are called from the
hibernator's worker thread: a lock serialises every use of the udev context.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import pyudev
from gi.repository import GLib

from ..errors import MachineError, RefusedError
from ..mounts import Mount, mount_of, read_mountinfo

log = logging.getLogger(__name__)

UNBIND_PROPERTY = "KJUMP_UNBIND"
"""udev property: a device whose value is ``1`` is unbound from its driver for the jump."""

WATCHED_SUBSYSTEMS = ("block", "memory")

# /dev/disk/by-KIND/NAME -> the udev properties NAME comes from, for udev databases without DEVLINKS.
_LINK_PROPERTIES = {
    "by-uuid": ("ID_FS_UUID_ENC", "ID_FS_UUID"),
    "by-partuuid": ("ID_PART_ENTRY_UUID",),
    "by-label": ("ID_FS_LABEL_ENC", "ID_FS_LABEL"),
    "by-partlabel": ("ID_PART_ENTRY_NAME",),
}
# identity key -> udev property of the device itself
_DEVICE_KEYS = (("fs-uuid", "ID_FS_UUID"), ("part-uuid", "ID_PART_ENTRY_UUID"),
                ("dm-uuid", "DM_UUID"), ("md-uuid", "MD_UUID"))
# identity key -> udev property of the device or, failing that, of its whole disk
_DISK_KEYS = (("serial", "ID_SERIAL"), ("wwn", "ID_WWN"))
_STABLE_KEYS = tuple(k for k, _ in _DISK_KEYS + _DEVICE_KEYS)
# keys whose change means "not the same target" (devname may change across a replug: that is fine)
_COMPARED_KEYS = _STABLE_KEYS + ("size", "inode")


# --- the udev view at one moment ----------------------------------------------------------------------


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip() == "1"


def _attribute(device: pyudev.Device, name: str) -> str | None:
    """A sysfs attribute as text, None when the device has no such attribute."""
    try:
        return device.attributes.asstring(name).strip()
    except (KeyError, UnicodeDecodeError, OSError):
        return None


def _whole_disk(device: pyudev.Device) -> pyudev.Device:
    if device.device_type == "partition":
        disk = device.find_parent("block", "disk")
        if disk is not None:
            return disk
    return device


def _depth(device_path: str) -> int:
    return device_path.count("/")


class _BlockView:
    """The block devices udev knows, enumerated once and indexed, for one evaluation."""

    def __init__(self, context: pyudev.Context) -> None:
        self.devices = list(context.list_devices(subsystem="block"))
        self._by_number = {}
        self._by_name = {}
        for dev in self.devices:
            self._by_name[dev.sys_name] = dev
            major, minor = dev.properties.get("MAJOR"), dev.properties.get("MINOR")
            if major is not None and minor is not None and major.isdigit() and minor.isdigit():
                self._by_number[(int(major), int(minor))] = dev

    def by_number(self, major: int, minor: int) -> pyudev.Device | None:
        return self._by_number.get((major, minor))

    def by_path(self, path: str) -> list[pyudev.Device]:
        """The block devices a ``/dev`` path names: device node, udev symbolic link, or the link's udev property."""
        found = [d for d in self.devices
                 if d.device_node == path or path in d.properties.get("DEVLINKS", "").split()]
        if not found and os.path.exists(path):
            real = os.path.realpath(path)
            found = [d for d in self.devices if d.device_node == real]
            if not found:
                try:
                    rdev = os.stat(path).st_rdev
                except OSError:
                    rdev = 0
                dev = self.by_number(os.major(rdev), os.minor(rdev)) if rdev else None
                found = [dev] if dev is not None else []
        if not found and path.startswith("/dev/disk/"):
            kind, _, name = path[len("/dev/disk/"):].partition("/")
            keys = _LINK_PROPERTIES.get(kind, ())
            found = [d for d in self.devices if any(d.properties.get(k) == name for k in keys)]
        return found

    def underlying(self, device: pyudev.Device) -> list[pyudev.Device]:
        """The device and, through sysfs ``slaves`` (device mapper, md), every device it is built on."""
        result, todo, seen = [], [device], set()
        while todo:
            dev = todo.pop()
            if dev.sys_path in seen:
                continue
            seen.add(dev.sys_path)
            result.append(dev)
            try:
                slaves = sorted(os.listdir(os.path.join(dev.sys_path, "slaves")))
            except OSError:
                slaves = []
            todo.extend(self._by_name[s] for s in slaves if s in self._by_name)
        return result

    def removable_reason(self, device: pyudev.Device) -> str | None:
        """Why ``device`` sits on removable media (``"sdb is removable"``, ``"sdb is on USB"``), or None.

        The whole disks under it are asked: sysfs ``removable``, udev ``ID_BUS``,
        and a USB device among their ancestors (which needs no udev database).
        """
        disks = list(dict.fromkeys(_whole_disk(dev) for dev in self.underlying(device)))
        for disk in disks:
            if _is_true(_attribute(disk, "removable")):
                return f"{disk.sys_name} is removable"
        for disk in disks:
            if disk.properties.get("ID_BUS") == "usb" or any(a.subsystem == "usb" for a in disk.ancestors):
                return f"{disk.sys_name} is on USB"
        return None


@dataclass
class _TargetStatus:
    """Where the image target is now: its device and identity, or why it is not usable."""

    device: pyudev.Device | None
    identity: dict[str, str] | None
    problem: str | None
    state: str  # "ok", "missing", "changed", "ambiguous", "not configured"


@dataclass(frozen=True)
class _Unbound:
    """A device kjumpd unbound before the jump, and how to bind it again."""

    sys_path: str
    device_path: str
    sys_name: str
    driver_dir: str
    driver: str


@dataclass
class _Jump:
    snapshot: set[str]
    unbound: list[_Unbound]


class _FdWatch(GLib.Source):
    """A GLib source that calls ``func()`` when ``fd`` is ready; ``func`` returns False to remove it."""

    def __init__(self, fd: int, condition: GLib.IOCondition, func: Callable[[], bool]) -> None:
        super().__init__()
        self._tag = self.add_unix_fd(fd, condition)
        self._func = func

    def prepare(self) -> tuple[bool, int]:
        return False, -1

    def check(self) -> bool:
        return bool(self.query_unix_fd(self._tag))

    def dispatch(self, callback: object, args: object) -> bool:
        return self._func()


# --- the tracker ------------------------------------------------------------------------------------------


class DeviceTracker:
    """kjumpd's view of the devices a hibernation depends on; see the module docstring and docs/devices.md."""

    def __init__(self, image_target: str, *, context: pyudev.Context | None = None,
                 on_change: Callable[[], None] | None = None, sys_root: str = "/sys",
                 mountinfo: str = "/proc/self/mountinfo") -> None:
        """Nothing is read until asked; ``start()`` begins watching events.

        ``image_target`` is the configured ``[Image] Target=`` (empty when not
        configured: then there is nothing to check about it). ``on_change`` is
        called on the main context of ``start()`` whenever ``problems()``, the
        target's identity or ``memory_stale`` may have changed. ``sys_root`` is
        where the driver ``bind``/``unbind`` files live; ``mountinfo`` the
        mount table (tests give their own).
        """
        self.image_target = image_target
        self.context = context if context is not None else pyudev.Context()
        self.on_change = on_change
        self.sys_root = sys_root
        self.mountinfo = mountinfo
        self.dispatches = 0  # event dispatches handled: how often the tracker woke the process
        self._lock = threading.RLock()
        self._baseline: dict[str, str] | None = None
        self._memory_flag = False
        self._memory_baseline: frozenset[tuple[str, str]] | None = None
        self._monitor: pyudev.Monitor | None = None
        self._mountinfo_file: BinaryIO | None = None
        self._sources: list[GLib.Source] = []
        self._main_context: GLib.MainContext | None = None
        self._last_state: object = None
        self._jump: _Jump | None = None

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the target's identity and the memory layout as the baseline, then watch udev and mount events.

        The watches are attached to the calling thread's default GLib main
        context. Calling ``start()`` again after ``stop()`` takes a new
        baseline (that is how a replaced image disk is accepted).
        """
        with self._lock:
            if self._monitor is not None:
                raise RuntimeError("DeviceTracker.start() called twice")
            self._baseline = None
            self._memory_flag = False
            self._memory_baseline = self._memory_signature()
            monitor = pyudev.Monitor.from_netlink(self.context)
            for subsystem in WATCHED_SUBSYSTEMS:
                monitor.filter_by(subsystem)
            monitor.start()
            self._monitor = monitor
            self._main_context = GLib.MainContext.ref_thread_default()
            self._add_watch(monitor.fileno(), GLib.IOCondition.IN, self._on_udev)
            try:
                self._mountinfo_file = open(self.mountinfo, "rb")
            except OSError as exc:
                self.stop()
                raise MachineError(f"cannot watch {self.mountinfo}: {exc.strerror or exc}") from exc
            # The kernel flags a changed mount table with POLLPRI|POLLERR; a plain file never does.
            self._add_watch(self._mountinfo_file.fileno(), GLib.IOCondition.PRI | GLib.IOCondition.ERR,
                            self._on_mounts)
            self._last_state = self._state()

    def stop(self) -> None:
        """Stop watching; answers on demand keep working."""
        with self._lock:
            for source in self._sources:
                source.destroy()
            self._sources = []
            if self._mountinfo_file is not None:
                self._mountinfo_file.close()
                self._mountinfo_file = None
            self._monitor = None

    def _add_watch(self, fd: int, condition: GLib.IOCondition, func: Callable[[], bool]) -> None:
        source = _FdWatch(fd, condition, func)
        source.attach(self._main_context)
        self._sources.append(source)

    # --- events ---------------------------------------------------------------------------------------

    def _on_udev(self) -> bool:
        """Drain the udev monitor; memory events make the memory map stale, block events may change problems."""
        with self._lock:
            self.dispatches += 1
            monitor = self._monitor
            while monitor is not None:
                try:
                    device = monitor.poll(timeout=0)
                except OSError as exc:  # ENOBUFS: the socket overflowed and events were lost
                    log.warning("udev events were lost (%s): assuming the memory map is stale", exc)
                    self._memory_flag = True
                    break
                if device is None:
                    break
                log.debug("udev: %s %s %s", device.action, device.subsystem, device.device_path)
                if device.subsystem == "memory":
                    self._memory_flag = True
        self._check_changes()
        return True

    def _on_mounts(self) -> bool:
        with self._lock:
            self.dispatches += 1
        self._check_changes()
        return True

    def _state(self) -> object:
        """What ``on_change`` observers can see: problems, the target's identity, memory staleness."""
        problems, status = self._evaluate(force=False)
        return (tuple(problems), status.identity, self._memory_flag)

    def _check_changes(self) -> None:
        """Call ``on_change`` when the observable state differs from what it was last time."""
        try:
            with self._lock:
                state = self._state()
                changed, self._last_state = state != self._last_state, state
        except MachineError as exc:
            log.error("device state cannot be read: %s", exc)
            changed = True
        if changed and self.on_change is not None:
            self.on_change()

    # --- the image target -----------------------------------------------------------------------------

    def _target_status(self, view: _BlockView) -> _TargetStatus:
        """Resolve the image target now and compare it with the baseline (which the first resolution sets)."""
        target = self.image_target
        if not target:
            return _TargetStatus(None, None, None, "not configured")
        inode = ""
        if target.startswith("/dev/"):
            found = view.by_path(target)
            what = f"image target {target}"
        else:
            what = f"image file {target}"
            real = os.path.realpath(target)
            try:
                inode = str(os.stat(real).st_ino)
            except OSError as exc:
                return _TargetStatus(None, None, f"{what} is missing: {exc.strerror}", "missing")
            mount = mount_of(real, read_mountinfo(self.mountinfo))
            if mount is None:
                return _TargetStatus(None, None, f"{what} is on no mounted filesystem", "missing")
            dev = view.by_number(mount.major, mount.minor)
            found = ([dev] if dev is not None
                     else view.by_path(mount.source) if mount.source.startswith("/dev/") else [])
            if not found and mount.major == 0 and not mount.source.startswith("/dev/"):
                return _TargetStatus(None, None, f"{what} is on {mount.fstype} at {mount.mount_point}, "
                                     "which is not on a block device", "missing")
            if not found:
                return _TargetStatus(None, None, f"{what} is on {mount.source} ({mount.major}:{mount.minor}) at "
                                     f"{mount.mount_point}, which is missing: no such block device", "missing")
        if not found:
            return _TargetStatus(None, None, f"{what} is missing: no such block device", "missing")
        if len(found) > 1:
            names = ", ".join(d.device_node or d.sys_name for d in found)
            return _TargetStatus(None, None, f"{what} is ambiguous: {names} all match it", "ambiguous")
        device = found[0]
        identity = self._identity(device, inode)
        if self._baseline is None:
            self._baseline = identity
        difference = _identity_difference(self._baseline, identity)
        if difference:
            return _TargetStatus(device, identity, f"{what} changed: {difference}; it is not the device it was "
                                 "when kjumpd started (restart kjumpd to accept it)", "changed")
        return _TargetStatus(device, identity, None, "ok")

    def _identity(self, device: pyudev.Device, inode: str) -> dict[str, str]:
        disk = _whole_disk(device)
        identity = {"target": self.image_target, "kind": "file" if inode else "block",
                    "devname": device.device_node or "", "devpath": device.device_path,
                    "disk": disk.device_node or disk.sys_name}
        for key, prop in _DEVICE_KEYS:
            if device.properties.get(prop):
                identity[key] = device.properties[prop]
        for key, prop in _DISK_KEYS:
            value = device.properties.get(prop) or disk.properties.get(prop)
            if value:
                identity[key] = value
        size = _attribute(device, "size")
        if size:
            identity["size"] = size
        if inode:
            identity["inode"] = inode
        return identity

    def target_identity(self) -> dict[str, str] | None:
        """The image target's stable identity now (for the image record), or None when it is not usable.

        Keys: ``target``, ``kind`` (``block``/``file``), ``devname``,
        ``devpath``, ``disk``, and those known of ``serial``, ``wwn``,
        ``fs-uuid``, ``part-uuid``, ``dm-uuid``, ``md-uuid``, ``size`` (512-byte
        sectors), ``inode`` (file targets).
        """
        with self._lock:
            status = self._target_status(_BlockView(self.context))
            return dict(status.identity) if status.identity is not None and status.problem is None else None

    # --- problems -------------------------------------------------------------------------------------

    def problems(self, *, force: bool = False) -> list[str]:
        """Why hibernating now would be unsafe, one sentence each; empty when nothing stands in the way.

        ``force`` overrides only the removable-media guard: a missing or
        changed target, or a ``KJUMP_UNBIND`` device that something needed
        depends on, cannot be forced.
        """
        with self._lock:
            return self._evaluate(force=force)[0]

    def _evaluate(self, *, force: bool) -> tuple[list[str], _TargetStatus]:
        """The problems and the target's status, from one enumeration of the block devices."""
        view = _BlockView(self.context)
        mounts = read_mountinfo(self.mountinfo)
        status = self._target_status(view)
        found = [status.problem] if status.problem else []
        found += self._unbind_conflicts(view, mounts, status).values()
        if not force:
            found += [f"{m.mount_point} is mounted writable from {dev.device_node} and {why}: unmount it, "
                      "remount it read-only, or hibernate with force"
                      for m, dev, why in self._removable_mounts(view, mounts) if m.super_writable]
        return found, status

    def _removable_mounts(self, view: _BlockView, mounts: list[Mount]) -> list[tuple[Mount, pyudev.Device, str]]:
        """Mounted filesystems on removable media, with the reason each counts as removable."""
        result = []
        for mount in mounts:
            dev = view.by_number(mount.major, mount.minor)
            why = view.removable_reason(dev) if dev is not None else None
            if why:
                result.append((mount, dev, why))
        return result

    def _unbind_candidates(self) -> list[pyudev.Device]:
        """Devices tagged ``KJUMP_UNBIND=1``, children before parents."""
        tagged = [d for d in self.context.list_devices(**{UNBIND_PROPERTY: "1"})
                  if _is_true(d.properties.get(UNBIND_PROPERTY))]
        return sorted(tagged, key=lambda d: (-_depth(d.sys_path), d.sys_path))

    def _unbind_conflicts(self, view: _BlockView, mounts: list[Mount], status: _TargetStatus) -> dict[str, str]:
        """Tagged devices that the image target or a mounted filesystem sits on (unbinding them is refused).

        Maps the tagged device's sysfs path to the sentence that explains it.
        """
        needed: list[tuple[str, pyudev.Device]] = []
        if status.device is not None:
            needed.append((f"the image target {self.image_target}", status.device))
        for mount in mounts:
            dev = view.by_number(mount.major, mount.minor)
            if dev is not None:
                needed.append((f"the filesystem mounted at {mount.mount_point}", dev))
        conflicts = {}
        for tagged in self._unbind_candidates():
            prefix = tagged.sys_path + "/"
            for what, dev in needed:
                if any(d.sys_path == tagged.sys_path or d.sys_path.startswith(prefix) for d in view.underlying(dev)):
                    conflicts[tagged.sys_path] = (f"{tagged.device_path} is tagged {UNBIND_PROPERTY}=1 but {what} "
                                                  "depends on it: it cannot be unbound for the jump")
                    break
        return conflicts

    # --- memory ------------------------------------------------------------------------------------------

    def _memory_signature(self) -> frozenset[tuple[str, str]]:
        return frozenset((d.sys_name, _attribute(d, "state") or "")
                         for d in self.context.list_devices(subsystem="memory"))

    @property
    def memory_stale(self) -> bool:
        """True when memory was hot-plugged (an event, or the memory blocks differ) since the baseline."""
        with self._lock:
            if not self._memory_flag and self._memory_baseline is not None \
                    and self._memory_signature() != self._memory_baseline:
                self._memory_flag = True
            return self._memory_flag

    def clear_memory_stale(self) -> None:
        """The memory map was computed again: take the current memory blocks as the new baseline."""
        with self._lock:
            self._memory_flag = False
            self._memory_baseline = self._memory_signature()
            if self._monitor is not None:
                self._last_state = self._state()

    # --- the jump ----------------------------------------------------------------------------------------

    def _snapshot(self) -> set[str]:
        """Every device udev knows, keyed by device path (plus serial, so a swapped disk counts as a change)."""
        return {d.device_path + (f" [{d.properties['ID_SERIAL']}]" if d.properties.get("ID_SERIAL") else "")
                for d in self.context.list_devices()}

    def _driver_dir(self, device: pyudev.Device) -> str:
        return os.path.join(self.sys_root, "bus", device.subsystem, "drivers", device.driver)

    def before_jump(self) -> None:
        """Snapshot the devices, then unbind the ``KJUMP_UNBIND=1`` devices (children first).

        Refuses (RefusedError, nothing touched) when a tagged device carries
        the image target or a mounted filesystem. When an unbind fails, the
        devices already unbound are bound again and MachineError is raised:
        then ``after_jump()`` must not be called.
        """
        with self._lock:
            if self._jump is not None:
                raise RuntimeError("before_jump() called again without after_jump()")
            view = _BlockView(self.context)
            mounts = read_mountinfo(self.mountinfo)
            conflicts = self._unbind_conflicts(view, mounts, self._target_status(view))
            if conflicts:
                raise RefusedError("; ".join(conflicts.values()))
            snapshot = self._snapshot()
            unbound: list[_Unbound] = []
            for device in self._unbind_candidates():
                if device.driver is None:
                    log.info("%s is tagged %s=1 but has no driver bound: nothing to unbind",
                             device.device_path, UNBIND_PROPERTY)
                    continue
                entry = _Unbound(device.sys_path, device.device_path, device.sys_name,
                                 self._driver_dir(device), device.driver)
                try:
                    _write_sysfs(os.path.join(entry.driver_dir, "unbind"), entry.sys_name)
                except OSError as exc:
                    failed = self._rebind(unbound)
                    undo = f"; binding again failed too: {', '.join(failed)}" if failed else ""
                    raise MachineError(f"cannot unbind {entry.device_path} from {entry.driver}: "
                                       f"{exc.strerror or exc}{undo}") from exc
                log.info("unbound %s from %s for the jump", entry.device_path, entry.driver)
                unbound.append(entry)
            self._jump = _Jump(snapshot, unbound)

    def _rebind(self, unbound: list[_Unbound]) -> list[str]:
        """Bind devices again, parents first; a device already bound (re-probed with its parent) is left alone.

        Returns one ``"DEVPATH (DRIVER): reason"`` per device that could not be bound.
        """
        failed = []
        for entry in reversed(unbound):
            try:
                device = pyudev.Devices.from_path(self.context, entry.sys_path)
            except pyudev.DeviceNotFoundError:
                failed.append(f"{entry.device_path} ({entry.driver}): the device is gone")
                continue
            if device.driver is not None:
                continue
            try:
                _write_sysfs(os.path.join(entry.driver_dir, "bind"), entry.sys_name)
            except OSError as exc:
                failed.append(f"{entry.device_path} ({entry.driver}): {exc.strerror or exc}")
                continue
            log.info("bound %s to %s again", entry.device_path, entry.driver)
        return failed

    def after_jump(self) -> dict[str, object]:
        """Bind the unbound devices again, re-enumerate, and report what changed across the jump.

        Returns ``{"devices-added": [...], "devices-removed": [...],
        "rebind-failed": [...]}``: device paths (with ``[ID_SERIAL]`` when
        known), and ``"DEVPATH (DRIVER): reason"`` for devices that could not be
        bound again (reported, not raised: the system is running again).
        """
        with self._lock:
            if self._jump is None:
                raise RuntimeError("after_jump() called without a successful before_jump()")
            jump, self._jump = self._jump, None
            failed = self._rebind(jump.unbound)
            for line in failed:
                log.warning("could not bind again after the jump: %s", line)
            now = self._snapshot()
            if self._memory_baseline is not None and self._memory_signature() != self._memory_baseline:
                self._memory_flag = True
            result: dict[str, object] = {"devices-added": sorted(now - jump.snapshot),
                                         "devices-removed": sorted(jump.snapshot - now),
                                         "rebind-failed": failed}
            if self._main_context is not None and self._monitor is not None:
                # on_change belongs to the main context, not to the hibernator's worker thread
                idle = GLib.idle_source_new()
                idle.set_callback(lambda *_: self._check_changes() or False)
                idle.attach(self._main_context)
        return result

    # --- what it sees ------------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, object]]:
        """What the tracker sees and what it would do, one dict per item (``kjumpctl devices``).

        Every entry has ``role`` (``image-target``, ``unbind``,
        ``removable-mount``, ``memory``), ``device``, ``state`` and ``action``;
        the rest depends on the role (docs/devices.md).
        """
        with self._lock:
            view = _BlockView(self.context)
            mounts = read_mountinfo(self.mountinfo)
            status = self._target_status(view)
            entries: list[dict[str, object]] = [{
                "role": "image-target", "device": self.image_target or "-", "state": status.state,
                "action": ("none: [Image] Target= is not set" if status.state == "not configured"
                           else "must be present and unchanged to hibernate"),
                "identity": dict(status.identity or {}), "problem": status.problem or ""}]
            conflicts = self._unbind_conflicts(view, mounts, status)
            for device in self._unbind_candidates():
                if device.sys_path in conflicts:
                    action = f"refused: {conflicts[device.sys_path]}"
                elif device.driver is None:
                    action = "none: no driver bound"
                else:
                    action = f"unbind from {device.driver} before the jump, bind again after"
                entries.append({"role": "unbind", "device": device.sys_name, "devpath": device.device_path,
                                "subsystem": device.subsystem or "", "driver": device.driver or "",
                                "state": "bound" if device.driver else "unbound", "action": action})
            for mount, dev, why in self._removable_mounts(view, mounts):
                entries.append({"role": "removable-mount", "device": dev.device_node or dev.sys_name,
                                "mount-point": mount.mount_point, "fstype": mount.fstype, "reason": why,
                                "state": "writable" if mount.super_writable else "read-only",
                                "action": "blocks hibernation unless forced" if mount.super_writable else "none"})
            blocks = self._memory_signature()
            if self._memory_baseline is None:
                state, action = "not watched", "none (the tracker is not started)"
            elif self.memory_stale:
                state, action = "stale", "memory map computed again before the next hibernation"
            else:
                state, action = "current", "none"
            entries.append({"role": "memory", "device": f"{len(blocks)} memory blocks",
                            "online": sum(1 for _, s in blocks if s == "online"), "state": state, "action": action})
            return entries


def _identity_difference(baseline: dict[str, str], now: dict[str, str]) -> str:
    """The first identity key that differs (``"serial was A, now B"``), or ``""`` when it is the same target."""
    keys = [k for k in _COMPARED_KEYS if k in baseline]
    if not any(k in baseline for k in _STABLE_KEYS):
        keys.append("devpath")  # nothing stable is known: the device's place is all there is
    for key in keys:
        if now.get(key) != baseline[key]:
            return f"{key} was {baseline[key]}, now {now.get(key, 'unknown')}"
    return ""


def _write_sysfs(path: str, value: str) -> None:
    """One write(2) of ``value`` to a sysfs file, as the kernel expects for bind/unbind (like ``echo >``)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
