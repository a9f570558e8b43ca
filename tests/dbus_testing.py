"""Helpers for tests on a private system bus: a real dbus-daemon, dbusmock templates, a
controllable hibernator, and kjumpd's D-Bus service running in-process.

The fixtures built on them are in conftest.py; tests import these names from
here (``from dbus_testing import ...``), never from conftest, which is not a
unique module name (tests/vm has its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def stop_mock(mock: Mock) -> None:
    """Terminate a mock process."""
    mock.process.terminate()
    mock.process.wait(timeout=10)


# --- a controllable hibernator ------------------------------------------------------------------


@dataclass
class FakeResult:
    """Has the fields and ``as_dict`` of kjumpd.daemon.hibernator.HibernateResult."""

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
    job runs; ``fail`` makes ``hibernate`` report a failed cycle;
    ``past_jump`` makes ``hibernate`` pass its point of no return before the gate.
    """

    def __init__(self) -> None:
        self.staged = False
        self.problem_list: list[str] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail = False
        self.past_jump = False
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

    def thaw_left_frozen(self) -> list[str]:
        return []

    def fallback_problems(self) -> list[str]:
        return ["no swap"]

    def hibernate(self, restart_point: str, *, force: bool = False, progress: Any = None, cancel: Any = None,
                  wake_after: float | None = None) -> FakeResult:
        self.calls.append(("hibernate", restart_point, force) + ((wake_after,) if wake_after is not None else ()))
        if self.past_jump and cancel is not None and not cancel.commit():
            return FakeResult(restart_point, False, "cancelled", "cancelled before the jump")
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
    """kjumpd's Manager and D-Bus Service on their own GLib main context in a thread.

    With a ``hibernator`` (a FakeHibernator) the manager drives it and has no
    device tracker. With ``hibernator=None`` the daemon is built as ``kjumpd``
    builds it (``kjumpd.daemon.main.make_manager``): the real Hibernator on the machine the
    configuration names, and the udev device tracker watching on the daemon's
    main context.
    """

    def __init__(self, address: str, hibernator: FakeHibernator | None, config: Any) -> None:
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
        from kjumpd.daemon import dbus_service, main, manager

        self.context.push_thread_default()
        try:
            if self.hibernator is None:
                self.manager = main.make_manager(self.config, self.schedule)
            else:
                self.manager = manager.Manager(self.config, lambda config, participants: self.hibernator,
                                              self.schedule)
            self.service = dbus_service.Service.start(self.manager, self.address)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run()
        self.service.stop()
        if self.manager.tracker is not None:
            self.manager.tracker.stop()
        self.context.pop_thread_default()

    def stop(self) -> None:
        self.schedule(self.loop.quit)
        self.thread.join(20)


class Signals:
    """Records signals of one D-Bus object, in arrival order, from the moment it is made.

    Make it before the action that causes the signals, then ``wait`` for them;
    the arguments of each signal are kept as a tuple (pydbus unpacks them).
    """

    def __init__(self, proxy: Any, *names: str) -> None:
        self.received: dict[str, list[tuple]] = {name: [] for name in names}
        for name in names:
            getattr(proxy, name).connect(lambda *args, name=name: self.received[name].append(args))

    def wait(self, name: str, count: int = 1, timeout: float = 60.0) -> list[tuple]:
        """Wait until ``count`` ``name`` signals arrived; returns all received so far."""
        wait_for(lambda: len(self.received[name]) >= count, f"{count} {name} signal(s)", timeout)
        return self.received[name]

    def announced(self, prop: str) -> list[Any]:
        """The values of property ``prop`` in the PropertiesChanged signals received so far, in order."""
        return [changed[prop] for _interface, changed, _invalidated in self.received["PropertiesChanged"]
                if prop in changed]
