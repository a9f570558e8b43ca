"""The real ``kjumpd`` process on a private system bus, driving a simulated machine end to end.

Nothing is faked here but the machine (kjumpd.machine.simulated): the daemon
reads its configuration directory, publishes org.kjump.Hibernate1, asks the
dbusmock polkitd, holds a delay inhibitor on the dbusmock logind, and runs
whole hibernation cycles that kjumpctl waits for.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbus_testing import Mock, connect, wait_for
from kjumpd.ctl import EXIT_FAILED, EXIT_OK
from kjumpd.machine.simulated import SimulatedMachine

NAME, PATH = "org.kjump.Hibernate1", "/org/kjump/Hibernate1"
RAM = 64 << 20


def write_config(directory: Path, machine: SimulatedMachine, restart_point: str = "resume") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kjumpd.conf").write_text(machine.kjumpd_config(restart_point=restart_point))
    return directory


def kjumpctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from kjumpd.ctl import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=120)


class Daemon:
    """A kjumpd process and a way to stop it."""

    def __init__(self, config: Path, address: str, env: dict | None = None, extra: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kjumpd.daemon", "--config", str(config), "--bus-address", address, *(extra or [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        bus = connect(address)
        wait_for(lambda: bus.dbus.NameHasOwner(NAME) or self.process.poll() is not None, "kjumpd on the bus")
        if self.process.poll() is not None:
            raise AssertionError(f"kjumpd exited: {self.process.communicate()[1]}")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _out, err = self.process.communicate(timeout=60)
        return self.process.returncode, err


def read_line_with(stream, text: str, timeout: float = 60) -> str:
    """Read lines from a process's pipe until one contains ``text``.

    Reads the descriptor itself: select() on a buffered stream misses lines
    that already sit in Python's buffer.
    """
    deadline = time.monotonic() + timeout
    fd, pending = stream.fileno(), ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536).decode(errors="replace")
        if not chunk:
            break
        *lines, pending = (pending + chunk).split("\n")
        for line in lines:
            if text in line:
                return line
    raise AssertionError(f"no line with {text!r} from the daemon")


@pytest.fixture
def machine() -> Iterator[SimulatedMachine]:
    # A short path: the image target's name is recorded in a 64-byte field of the handoff.
    directory = tempfile.mkdtemp(prefix="kjd", dir="/tmp")
    yield SimulatedMachine.create(directory, ram_size=RAM)
    shutil.rmtree(directory)


@pytest.fixture
def kjumpd_process(tmp_path: Path, machine: SimulatedMachine, system_bus: str, polkitd: Mock,
                   logind: Mock) -> Iterator[Daemon]:
    daemon = Daemon(write_config(tmp_path / "etc", machine), system_bus)
    yield daemon
    daemon.stop()


def test_hibernate_wait_succeeds_on_the_simulated_machine(kjumpd_process: Daemon, polkitd: Mock, system_bus: str,
                                                           machine: SimulatedMachine) -> None:
    polkitd.proxy.SetAllowed(["org.kjump.hibernate", "org.kjump.manage"])
    assert kjumpctl("prepare").returncode == EXIT_OK
    obj = connect(system_bus).get(NAME, PATH)
    assert obj.Staged is True and obj.Problems == []
    result = kjumpctl("hibernate", "--wait")
    assert result.returncode == EXIT_OK, result.stderr
    last = obj.LastResult
    assert last["success"] is True and last["restart-point"] == "resume"
    assert last["image-bytes"] > 0 and last["memory-bytes"] > 0
    assert obj.State == "idle"


def test_hibernate_wait_fails_when_the_save_fails(kjumpd_process: Daemon, polkitd: Mock, system_bus: str,
                                                  machine: SimulatedMachine) -> None:
    polkitd.proxy.SetAllowed(["org.kjump.hibernate"])
    machine.inject_fault("ram_read_error_at", 8 << 20)
    result = kjumpctl("hibernate", "--wait", "--restart-point=resume")
    assert result.returncode == EXIT_FAILED
    last = connect(system_bus).get(NAME, PATH).LastResult
    assert last["success"] is False and last["reason"]
    assert "hibernation: " in result.stderr and last["reason"] in result.stderr


def test_sighup_rereads_the_configuration_and_keeps_it_when_broken(kjumpd_process: Daemon, tmp_path: Path,
                                                                   machine: SimulatedMachine, system_bus: str) -> None:
    obj = connect(system_bus).get(NAME, PATH)
    assert obj.DefaultRestartPoint == "resume"
    write_config(tmp_path / "etc", machine, restart_point="reboot")
    kjumpd_process.process.send_signal(signal.SIGHUP)
    wait_for(lambda: obj.DefaultRestartPoint == "reboot", "the reloaded restart point")
    dropins = tmp_path / "etc" / "kjumpd.conf.d"
    dropins.mkdir()
    (dropins / "50-broken.conf").write_text("[Sleep]\nHibernateRestartPoint=nap\n")
    kjumpd_process.process.send_signal(signal.SIGHUP)
    line = read_line_with(kjumpd_process.process.stderr, "configuration not reloaded")
    assert f"{dropins / '50-broken.conf'}:2" in line and "'nap'" in line
    assert obj.DefaultRestartPoint == "reboot"
    assert kjumpd_process.process.poll() is None


def test_documented_error_names_when_started_with_python_m(kjumpd_process: Daemon, system_bus: str) -> None:
    """``python -m kjumpd.daemon`` (how this fixture starts it) answers with the documented names.

    The daemon module was once loaded twice under ``-m`` (as ``__main__`` and as
    ``kjumpd.daemon``), so its refusals were not the classes the bus binding
    knew and every one of them became ``Error.Failed``.
    """
    from gi.repository import GLib

    proxy = connect(system_bus).get(NAME, PATH)
    with pytest.raises(GLib.Error, match=r"org\.kjump\.Hibernate1\.Error\.InvalidRestartPoint"):
        proxy.Hibernate("no-such-point")
    with pytest.raises(GLib.Error, match=r"org\.kjump\.Hibernate1\.Error\.InvalidOption"):
        proxy.HibernateWithOptions("", {"no-such-option": GLib.Variant("b", True)})


def test_sigterm_stops_and_releases_the_name(kjumpd_process: Daemon, system_bus: str) -> None:
    code, err = kjumpd_process.stop()
    assert code == 0
    assert not connect(system_bus).dbus.NameHasOwner(NAME)
    assert "kjumpd stopped" in err


def test_bad_configuration_refuses_to_start_naming_file_and_line(tmp_path: Path, system_bus: str) -> None:
    config = tmp_path / "etc"
    config.mkdir()
    (config / "kjumpd.conf").write_text("[Image]\nOffset=12\nCompression=gzip\n")
    process = subprocess.run([sys.executable, "-m", "kjumpd.daemon", "--config", str(config), "--bus-address", system_bus],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 1
    assert f"{config / 'kjumpd.conf'}:3" in process.stderr and "gzip" in process.stderr
    assert not connect(system_bus).dbus.NameHasOwner(NAME)


def test_notifies_systemd_when_ready(tmp_path: Path, machine: SimulatedMachine, system_bus: str) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(60)
    daemon = Daemon(write_config(tmp_path / "etc", machine), system_bus, env=dict(os.environ, NOTIFY_SOCKET=str(path)))
    messages = notify.recv(4096).decode()
    daemon.stop()
    messages += notify.recv(4096).decode()
    notify.close()
    assert "READY=1" in messages and "STATUS=serving org.kjump.Hibernate1" in messages
    assert "STOPPING=1" in messages


def test_second_daemon_does_not_start(kjumpd_process: Daemon, tmp_path: Path, system_bus: str) -> None:
    process = subprocess.run([sys.executable, "-m", "kjumpd.daemon", "--config", str(tmp_path / "etc"),
                              "--bus-address", system_bus], capture_output=True, text=True, timeout=60)
    assert process.returncode == 1 and "another process owns it" in process.stderr


def test_start_thaws_what_a_dead_daemon_left_frozen(tmp_path: Path, machine: SimulatedMachine, system_bus: str,
                                                     polkitd: Mock, logind: Mock) -> None:
    """Issue 16.2 / 10.4: a daemon that died with file systems frozen; the next one thaws them on start."""
    frozen = machine.freeze_filesystems()
    assert frozen and machine.frozen_filesystems() == frozen
    daemon = Daemon(write_config(tmp_path / "etc", machine), system_bus)
    try:
        assert machine.frozen_filesystems() == []
        assert [e["mount"] for e in machine.events() if e["event"] == "thaw"] == list(reversed(frozen))
    finally:
        daemon.stop()


def test_logind_and_the_sleep_services_learn_kjumpds_readiness(tmp_path: Path, machine: SimulatedMachine,
                                                                system_bus: str, polkitd: Mock, logind: Mock) -> None:
    """Issue 10.3: the process keeps the sleep.conf drop-in and the ready marker, and removes them when it stops."""
    config = write_config(tmp_path / "etc", machine)
    dropin, ready = tmp_path / "50-kjumpd.conf", tmp_path / "ready"
    daemon = Daemon(config, system_bus, extra=["--sleep-conf", str(dropin), "--ready-file", str(ready)])
    try:
        obj = connect(system_bus).get(NAME, PATH)
        assert obj.Problems == []
        wait_for(ready.exists, "the ready marker")
        assert "AllowHibernation=no" not in dropin.read_text()
        with (config / "kjumpd.conf").open("a") as conf:
            conf.write("[HibernateKernel]\nKernel=/nonexistent/bzImage\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: not ready.exists(), "the ready marker to go")
        text = dropin.read_text()
        assert "AllowHibernation=no" in text and "AllowSuspendThenHibernate=no" in text
        assert "/nonexistent/bzImage" in text
    finally:
        daemon.stop()
    assert not dropin.exists() and not ready.exists()
