"""When kjumpd refuses to hibernate, the waiting caller says why at once and fails (issue 15).

The real ``kjumpd`` process drives a simulated machine whose image target is
gone (the disk was removed after kjumpd started): ``Hibernate`` is refused up
front with the problems kjumpd found. ``kjumpctl hibernate --wait`` must
end with kjumpd's reason on one line and the documented exit code 3 (not
available), and nothing may have happened to the machine.
"""

from __future__ import annotations

import os

from dbus_testing import Mock, connect
from test_cycle_sim import events
from test_dbus_daemon import NAME, PATH, Daemon, kjumpctl, kjumpd_process, machine  # noqa: F401  (fixtures)

from kjumpd.ctl import EXIT_UNAVAILABLE
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
