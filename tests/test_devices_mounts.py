"""The mount table side of the device tracker, without a udev test bed: parsing, and the POLLPRI watch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kjumpd.mounts import mount_of, read_mountinfo
from kjumpd.errors import MachineError


def test_read_mountinfo(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                     "30 22 8:33 / /media/my\\040stick rw,nosuid - vfat /dev/sdc1 ro,fmask=0022\n"
                     "31 22 8:1 / /srv ro master:2 - xfs /dev/sda1 rw\n"
                     "32 22 8:2 / /srv/data rw - xfs /dev/sda2 rw\n")
    mounts = read_mountinfo(str(table))
    assert [(m.mount_point, m.major, m.minor, m.fstype, m.source, m.writable) for m in mounts] == [
        ("/", 254, 0, "ext4", "/dev/vda", True), ("/media/my stick", 8, 33, "vfat", "/dev/sdc1", False),
        ("/srv", 8, 1, "xfs", "/dev/sda1", False), ("/srv/data", 8, 2, "xfs", "/dev/sda2", True)]
    assert mount_of("/srv/data/x", mounts).mount_point == "/srv/data"
    assert mount_of("/srv/database", mounts).mount_point == "/srv"
    assert mount_of("/etc", mounts).mount_point == "/"
    table.write_text("garbage\n")
    with pytest.raises(MachineError, match=f"{table}:1: malformed mountinfo line"):
        read_mountinfo(str(table))


MOUNT_WATCH_SCRIPT = """
import subprocess, sys
import pyudev
from gi.repository import GLib
from kjumpd.daemon.devices import DeviceTracker

tracker = DeviceTracker("", context=pyudev.Context())
tracker.start()
context = GLib.MainContext.default()
while context.iteration(False):
    pass
idle = tracker.dispatches
subprocess.run(["mount", "-t", "tmpfs", "kjump-test", sys.argv[1]], check=True)
GLib.timeout_add_seconds(60, lambda: False)  # only so that a broken watch fails instead of hanging
context.iteration(True)
print(idle, tracker.dispatches)
"""


def test_mount_table_changes_wake_the_tracker(tmp_path: Path) -> None:
    """The real /proc/self/mountinfo: no dispatch while nothing changes, one when something is mounted.

    Runs in a private mount namespace (unshare), so the host's mounts are not touched.
    """
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                           MOUNT_WATCH_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and proc.stderr.startswith("unshare:"):
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "1"]
