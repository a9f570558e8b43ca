"""kjumpd's own share of one image, one chance: a boot without kjumpd's resume hook (dracut,
an initramfs without it) never looks at the image, so the daemon discards it when it starts
(docs/format.md, "States"). The real ``kjumpd`` process on a private bus, a simulated machine."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbus_testing import Mock
from sim_testing import save_image_of_itself

from kjumpd import image
from kjumpd.format import State
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.target import ImageTarget
from test_dbus_daemon import Daemon, write_config


@pytest.fixture
def machine() -> Iterator[SimulatedMachine]:
    """A machine whose target holds a SAVED image that the running boot did not resume."""
    directory = tempfile.mkdtemp(prefix="kjd", dir="/tmp")   # short: the target name fits the handoff
    m = SimulatedMachine.create(directory, ram_size=32 << 20)
    save_image_of_itself(m)
    yield m
    shutil.rmtree(directory)


def test_kjumpd_discards_a_saved_image_when_it_starts(tmp_path: Path, machine: SimulatedMachine, system_bus: str,
                                                      polkitd: Mock, logind: Mock) -> None:
    daemon = Daemon(write_config(tmp_path / "etc", machine), system_bus)
    try:
        with ImageTarget.open(machine.target_path, writable=False) as target:
            superblock = image.read_superblock(target)
    finally:
        _, log = daemon.stop()
    assert superblock.state == State.DISCARDED, "a later boot with the hook would resume the stale image"
    assert "did not resume it" in superblock.reason
    assert "image discarded" in log
