"""When kjumpd refuses to hibernate, the waiting caller says why at once and fails (issue 15).

The real ``kjumpd`` process drives a simulated machine whose image target is
gone (the disk was removed): ``Hibernate`` is refused up front with the
problems kjumpd found. ``kjumpctl hibernate --wait`` must end with kjumpd's
reason on one line and the documented exit code 3 (not available), and
nothing may have happened to the machine. ``make demo`` must stop at that
point with kjumpd's reason too, and when a hibernation kjumpd accepted fails
before the machine powers off, it must stop with kjumpctl's report instead
of waiting for a power-off that will not come.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import pytest
from dbus_testing import Mock, connect
from test_cycle_sim import events
from test_dbus_daemon import NAME, PATH, Daemon, kjumpctl, kjumpd_process, machine  # noqa: F401  (fixtures)

from kjumpd.ctl import EXIT_FAILED, EXIT_UNAVAILABLE
from kjumpd.host import demo
from kjumpd.machine.simulated import SimulatedMachine


def test_hibernate_wait_refused_says_why_and_exits_3(kjumpd_process: Daemon, polkitd: Mock, system_bus: str,
                                                     machine: SimulatedMachine) -> None:
    polkitd.proxy.SetAllowed(["org.kjump.hibernate"])
    os.unlink(machine.target_path)
    before = events(machine)

    result = kjumpctl("hibernate", "--wait", "--restart-point=shutdown")

    obj = connect(system_bus).get(NAME, PATH)
    assert any(machine.target_path in problem for problem in obj.Problems), obj.Problems
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert result.stderr == f"kjumpctl: hibernation is not possible: {'; '.join(obj.Problems)}\n"
    assert (obj.State, obj.LastResult) == ("idle", {})
    assert events(machine) == before, "a refused hibernation touches nothing"


# --- make demo ------------------------------------------------------------------------------------------------------


def run_demo(monkeypatch: pytest.MonkeyPatch, change: Callable[[SimulatedMachine], object]) -> tuple[str, list[str]]:
    """Run the demo on a machine that ``change`` altered right after it was made.

    Returns the demo's failure message (it must fail) and the machine's
    events. The demo makes its own bus, daemon and machine; its working
    directory is short, as the handoff's 64-byte target name field wants.
    """
    create = SimulatedMachine.create.__func__
    made: list[SimulatedMachine] = []

    def create_and_change(cls: type[SimulatedMachine], *args: object, **kwargs: object) -> SimulatedMachine:
        machine = create(cls, *args, **kwargs)
        change(machine)
        made.append(machine)
        return machine

    monkeypatch.setattr(SimulatedMachine, "create", classmethod(create_and_change))
    workdir = tempfile.mkdtemp(prefix="kjd", dir="/tmp")
    try:
        with pytest.raises(SystemExit) as failed:
            demo.run(workdir)
        return str(failed.value.code), events(made[0])
    finally:
        shutil.rmtree(workdir)


@pytest.mark.bus
def test_demo_stops_at_once_when_kjumpd_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    missing: list[str] = []
    reason, log = run_demo(monkeypatch, lambda machine: (missing.append(machine.target_path),
                                                         os.unlink(machine.target_path)))
    assert reason.startswith("demo: kjumpd refuses to hibernate: "), reason
    assert f"image target {missing[0]} not found" in reason
    assert not [event for event in log if event.startswith("jump")], log


@pytest.mark.bus
def test_demo_stops_at_once_when_the_hibernation_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    reason, log = run_demo(monkeypatch, lambda machine: machine.inject_fault("ram_read_error_at", 8 << 20))
    assert reason.startswith(f"demo: kjumpctl hibernate --wait exited {EXIT_FAILED} before the machine powered off"), \
        reason
    assert "hibernation: failed (restart point shutdown): saving the image failed" in reason
    assert "power-off" not in log and "jump:B" in log
