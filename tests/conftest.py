"""Shared fixtures: a private system bus served by a real dbus-daemon, dbusmock's logind and
polkitd on it, and kjumpd's D-Bus service running in-process against a controllable hibernator.

Any test may use ``system_bus`` (the bus address, also exported as
``DBUS_SYSTEM_BUS_ADDRESS``), ``polkitd``/``logind`` (the mock processes with
a pydbus proxy of their control interface), ``start_dbus_daemon`` (for buses
with a custom configuration) and ``FakeHibernator``/``kjumpd_service``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

PERMISSIVE_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
"""


def bus_config(socket: Path, body: str, bus_type: str = "system") -> str:
    """A dbus-daemon configuration listening on ``socket`` with ``body`` as its policy part."""
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{bus_type}</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
{body}
</busconfig>
"""


@dataclass
class DBusDaemon:
    """A running dbus-daemon and its address."""

    process: subprocess.Popen
    address: str

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_dbus_daemon(directory: Path, body: str = PERMISSIVE_POLICY) -> DBusDaemon:
    """Start a real dbus-daemon with the given policy (the default allows everything)."""
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "bus.sock"
    conf = directory / "bus.conf"
    conf.write_text(bus_config(socket, body))
    process = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = process.stdout.readline().strip()
    if not address:
        process.kill()
        raise RuntimeError(f"dbus-daemon did not start with {conf}")
    return DBusDaemon(process, address)


@pytest.fixture
def system_bus(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private, permissive system bus; its address is also in DBUS_SYSTEM_BUS_ADDRESS."""
    bus = start_dbus_daemon(tmp_path_factory.mktemp("bus"))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    yield bus.address
    bus.stop()


def connect(address: str) -> Any:
    """A private pydbus connection (exit-on-close off: the bus going away must not kill pytest)."""
    import pydbus

    return pydbus.connect(address)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout``.

    The default GLib main context is iterated meanwhile, so signals subscribed
    on connections made in the test thread are delivered.
    """
    from gi.repository import GLib

    context = GLib.MainContext.default()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while context.iteration(False):
            pass
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Mock:
    """A dbusmock template process and a proxy of its object (mock control interface included)."""

    process: subprocess.Popen
    proxy: Any


def spawn_mock(address: str, template: str) -> Mock:
    """Run ``python -m dbusmock --template TEMPLATE`` on the bus and wait for its name."""
    import importlib

    module = importlib.import_module(f"dbusmock.templates.{template}")
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    process = subprocess.Popen([PYTHON, "-m", "dbusmock", "--system", "--template", template], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bus = connect(address)
    wait_for(lambda: bus.dbus.NameHasOwner(module.BUS_NAME), f"{template} mock on the bus")
    return Mock(process, bus.get(module.BUS_NAME, module.MAIN_OBJ))


def _stop(mock: Mock) -> None:
    mock.process.terminate()
    mock.process.wait(timeout=10)


@pytest.fixture
def polkitd(system_bus: str) -> Iterator[Mock]:
    """dbusmock's polkitd: denies everything until ``proxy.SetAllowed([...])``."""
    mock = spawn_mock(system_bus, "polkitd")
    yield mock
    _stop(mock)


@pytest.fixture
def logind(system_bus: str) -> Iterator[Mock]:
    """dbusmock's logind; emit PrepareForSleep with ``proxy.EmitSignal(...)``."""
    mock = spawn_mock(system_bus, "logind")
    yield mock
    _stop(mock)


# --- a controllable hibernator ------------------------------------------------------------------


@dataclass
class FakeResult:
    """Has the fields and ``as_dict`` of kjumpd.hibernator.HibernateResult."""

    restart_point: str
    success: bool
    result: str
    reason: str = ""
    resumed_from_disk: bool = False
    image_bytes: int = 0
    memory_bytes: int = 0
    durations: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"restart-point": self.restart_point, "success": self.success, "result": self.result,
                "reason": self.reason, "resumed-from-disk": self.resumed_from_disk,
                "image-bytes": self.image_bytes, "memory-bytes": self.memory_bytes,
                "durations": dict(self.durations)}


class FakeHibernator:
    """Implements the Hibernator interface with no machine behind it, for the bus tests.

    Each call is recorded in ``calls``. ``gate`` (when set) makes ``stage``
    and ``hibernate`` wait until the test sets it, so a test can act while a
    job runs; ``fail`` makes ``hibernate`` report a failed cycle.
    """

    def __init__(self) -> None:
        self.staged = False
        self.problem_list: list[str] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail = False
        self.calls: list[tuple] = []

    def problems(self, *, force: bool = False) -> list[str]:
        return list(self.problem_list)

    def is_staged(self) -> bool:
        return self.staged

    def _wait_gate(self) -> None:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test never opened the gate"

    def stage(self) -> None:
        self.calls.append(("stage",))
        self._wait_gate()
        self.staged = True

    def region(self) -> tuple[int, int]:
        return (0x3000_0000, 256 << 20)

    def image_capacity(self) -> int:
        return 1 << 30

    def estimated_image_size(self) -> int:
        return 300 << 20

    def hibernate(self, restart_point: str, *, force: bool = False, progress: Any = None, cancel: Any = None) -> FakeResult:
        self.calls.append(("hibernate", restart_point, force))
        self._wait_gate()
        if progress:
            progress("save", 0.5)
            progress("save", 1.0)
        if cancel is not None and cancel.is_set():
            return FakeResult(restart_point, False, "cancelled", "cancelled before the jump")
        if self.fail:
            return FakeResult(restart_point, False, "failed", "image target is full")
        return FakeResult(restart_point, True, "saved", image_bytes=123, memory_bytes=456,
                          durations={"save": 1.5})


class InProcessDaemon:
    """kjumpd's Manager and D-Bus Service on their own GLib main context in a thread."""

    def __init__(self, address: str, hibernator: FakeHibernator, config: Any) -> None:
        from gi.repository import GLib

        self.hibernator = hibernator
        self.context = GLib.MainContext.new()
        self.loop = GLib.MainLoop(self.context)
        self.address = address
        self.config = config
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kjumpd-test-daemon", daemon=True)
        self.thread.start()
        assert self._ready.wait(20), "in-process kjumpd did not start"
        if self.error:
            raise self.error

    def schedule(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the daemon's main context (the Manager's ``schedule``)."""
        from gi.repository import GLib

        source = GLib.idle_source_new()
        source.set_callback(lambda *_: fn() or GLib.SOURCE_REMOVE)
        source.attach(self.context)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the daemon's loop and return its result (for reading the manager safely)."""
        done = threading.Event()
        box: list[Any] = []
        self.schedule(lambda: (box.append(fn()), done.set()) and None)
        assert done.wait(20)
        return box[0]

    def _run(self) -> None:
        from kjumpd import daemon, dbus_service

        self.context.push_thread_default()
        try:
            self.manager = daemon.Manager(self.config, lambda config, participants: self.hibernator, self.schedule)
            self.service = dbus_service.Service.start(self.manager, self.address)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run()
        self.service.stop()
        self.context.pop_thread_default()

    def stop(self) -> None:
        self.schedule(self.loop.quit)
        self.thread.join(20)


@pytest.fixture
def fake_hibernator() -> FakeHibernator:
    return FakeHibernator()


@pytest.fixture
def kjumpd_service(system_bus: str, polkitd: Mock, logind: Mock, fake_hibernator: FakeHibernator) -> Iterator[InProcessDaemon]:
    """kjumpd serving org.kjump.Hibernate1 on ``system_bus`` with the fake hibernator."""
    from kjumpd.config import Config

    daemon = InProcessDaemon(system_bus, fake_hibernator, Config(image_target="/var/lib/kjump/image"))
    yield daemon
    daemon.stop()
