"""suspend-then-hibernate through kjumpd (issue 10 §3): the image is saved, A suspends to RAM with an
RTC alarm, and if the alarm ends the sleep A powers off: the saved image is the hibernation.

On the simulated machine, ``suspend_seconds`` says how long the person at the machine lets it sleep.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cycle_sim import TOKEN, Background, events, hibernator, machine, superblock, token, wait_until  # noqa: F401

from kjumpd.daemon.config import ConfigError, load
from kjumpd.errors import RefusedError
from kjumpd.format import State
from kjumpd.machine.simulated import SimulatedMachine


def test_alarm_powers_off_and_the_next_boot_resumes(machine: SimulatedMachine) -> None:  # noqa: F811
    machine.inject_fault("suspend_seconds", 7200)
    h = hibernator(machine)

    class Job(Background):
        def _run(self, h: object, point: str) -> None:
            try:
                self.result = h.hibernate(point, wake_after=3600)  # type: ignore[attr-defined]
            except BaseException as exc:
                self.error = exc

    job = Job(h, "suspend")
    wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "A to power off")
    assert superblock(machine).state == State.SAVED, "the image saved before the sleep is the hibernation"
    assert SimulatedMachine(machine.path).power_on().resumed
    job.join()
    assert job.error is None
    assert (job.result.success, job.result.result, job.result.resumed_from_disk) == (True, "resumed-from-disk", True)
    assert token(machine) == TOKEN
    log = events(machine)
    steps = ["freeze", "jump:B", "jump:A", "wake-alarm", "suspend-to-ram", "wake-from-ram", "power-off",
             "power-on", "jump:R", "jump:A", "thaw"]
    rest = iter(log)
    assert all(step in rest for step in steps), log
    woke = [e for e in machine.events() if e["event"] == "wake-from-ram"]
    assert woke[-1]["by"] == "alarm"
    assert machine.frozen_filesystems() == []


def test_woken_before_the_alarm_is_a_plain_suspend(machine: SimulatedMachine) -> None:  # noqa: F811
    machine.inject_fault("suspend_seconds", 60)
    result = hibernator(machine).hibernate("suspend", wake_after=3600)
    assert (result.success, result.result) == (True, "woke-from-suspend")
    assert superblock(machine).state == State.DISCARDED
    assert "power-off" not in events(machine)
    assert [e["seconds"] for e in machine.events() if e["event"] == "wake-alarm"] == [3600]


def test_an_alarm_needs_the_suspend_restart_point(machine: SimulatedMachine) -> None:  # noqa: F811
    with pytest.raises(RefusedError, match="restart point suspend"):
        hibernator(machine).hibernate("shutdown", wake_after=3600)
    assert "jump:B" not in events(machine)


def test_hibernate_delay_is_configured_like_systemd(tmp_path: Path) -> None:
    (tmp_path / "kjumpd.conf").write_text("[Sleep]\nHibernateDelaySec=1h 30min\n")
    config = load(tmp_path)
    assert config.hibernate_delay == 5400
    assert config.restart_point_for("suspend-then-hibernate") == "suspend"
    assert load(tmp_path / "none").hibernate_delay == 7200
    (tmp_path / "kjumpd.conf").write_text("[Sleep]\nHibernateDelaySec=soon\n")
    with pytest.raises(ConfigError, match=r"kjumpd.conf:2: \[Sleep\] HibernateDelaySec=: 'soon' is not a time span"):
        load(tmp_path)
