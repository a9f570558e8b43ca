"""Hibernator: participants around the jump, pre-flight problems and staging, on the
simulated machine (the cycle itself is in test_cycle_sim.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kjumpd.daemon.hibernator import HibernateSettings, Hibernator
from kjumpd.errors import RefusedError
from kjumpd.machine.simulated import SimulatedMachine


class Participant:
    def __init__(self, name: str, log: list[str], problem: str = "", fail_before: bool = False) -> None:
        self.name, self.log, self.problem, self.fail_before = name, log, problem, fail_before

    def problems(self, *, force: bool) -> list[str]:
        return [self.problem] if self.problem and not force else []

    def before_jump(self) -> None:
        self.log.append(f"before {self.name}")
        if self.fail_before:
            raise RuntimeError(f"{self.name} cannot unbind")

    def after_jump(self) -> dict[str, object]:
        self.log.append(f"after {self.name}")
        return {f"{self.name}-devices": ["added"]}


@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    m = SimulatedMachine.create(str(tmp_path / "m"), ram_size=32 << 20)
    m.wake_timeout = 120
    return m


def settings(m: SimulatedMachine, **changes: object) -> HibernateSettings:
    s = HibernateSettings(image_target=m.target_path, kernel=m.kernel_path, initrd=m.initrd_path,
                          region_size=4 << 20, compression="none")
    for key, value in changes.items():
        setattr(s, key, value)
    return s


def test_participants_wrap_the_jump_and_add_details(machine: SimulatedMachine) -> None:
    log: list[str] = []
    h = Hibernator(machine, settings(machine), [Participant("udev", log), Participant("net", log)])
    result = h.hibernate("resume")
    assert result.success
    assert log == ["before udev", "before net", "after net", "after udev"]
    assert result.details == {"udev-devices": ["added"], "net-devices": ["added"], "encrypted": False}
    assert result.as_dict()["details"] == result.details
    assert result.as_dict()["restart-point"] == "resume"


def test_participant_problem_refuses_unless_forced(machine: SimulatedMachine) -> None:
    log: list[str] = []
    h = Hibernator(machine, settings(machine), [Participant("usb", log, problem="/media/usb is mounted")])
    assert h.problems() == ["/media/usb is mounted"]
    with pytest.raises(RefusedError, match="/media/usb is mounted"):
        h.hibernate("shutdown")
    assert log == [] and "freeze" not in [e["event"] for e in machine.events()]
    assert h.problems(force=True) == []


def test_failing_before_jump_undoes_the_others(machine: SimulatedMachine) -> None:
    log: list[str] = []
    h = Hibernator(machine, settings(machine), [Participant("a", log), Participant("b", log, fail_before=True)])
    result = h.hibernate("shutdown")
    assert not result.success and "b cannot unbind" in result.reason
    assert log == ["before a", "before b", "after a"]
    events = [e["event"] for e in machine.events()]
    assert "jump" not in events and events.count("freeze") == events.count("thaw")


def test_problems_name_each_bad_setting(machine: SimulatedMachine, tmp_path: Path) -> None:
    h = Hibernator(machine, settings(machine, kernel=str(tmp_path / "no-kernel"), compression="lzma"))
    problems = h.problems()
    assert any("unknown compression 'lzma'" in p for p in problems)
    h = Hibernator(machine, settings(machine, kernel=str(tmp_path / "no-kernel")))
    assert any("no-kernel does not exist" in p for p in h.problems())
    h = Hibernator(machine, settings(machine, region_size=20 << 20))
    assert any("exceeds half of RAM" in p for p in h.problems())
    assert h.region() == (0, 0)


def test_staging_and_changed_settings(machine: SimulatedMachine) -> None:
    h = Hibernator(machine, settings(machine))
    assert not h.is_staged()
    h.stage()
    assert h.is_staged() and machine.kexec_loaded()
    base, size = h.region()
    assert size == 4 << 20 and base + size <= 32 << 20
    h.settings.kernel_arguments = "console=ttyS0"
    assert not h.is_staged(), "B's command line changed: it must be staged again"
    assert h.image_capacity() == 40 << 20
    assert 0 < h.estimated_image_size() <= h.image_capacity()


def test_cancel_after_the_point_of_no_return_is_refused(machine: SimulatedMachine) -> None:
    """Issue 16.11: once the jump is under way a cancel request says it is too late (and changes nothing)."""
    from kjumpd.daemon.hibernator import Cancellation

    cancel = Cancellation()
    answers: list[bool] = []

    class LateCanceller(Participant):
        def before_jump(self) -> None:
            super().before_jump()
            answers.append(cancel.request())

    h = Hibernator(machine, settings(machine), [LateCanceller("late", [])])
    result = h.hibernate("resume", cancel=cancel)
    assert answers == [False]
    assert result.success and result.result == "saved"
    early = Cancellation()
    assert early.request() is True
    assert h.hibernate("resume", cancel=early).result == "cancelled"


def test_thaw_on_every_path_after_the_jump(machine: SimulatedMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.2: reading the result after the jump fails (I/O error): every frozen file system is thawed
    and every participant still gets its after_jump call."""
    log: list[str] = []
    h = Hibernator(machine, settings(machine), [Participant("udev", log)])

    def broken(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(h, "_after_jump", broken)
    with pytest.raises(OSError):
        h.hibernate("suspend")
    events = [e for e in machine.events() if e["event"] in ("freeze", "thaw")]
    frozen = [e["mount"] for e in events if e["event"] == "freeze"]
    assert frozen, "suspend freezes the file systems"
    assert [e["mount"] for e in events if e["event"] == "thaw"] == list(reversed(frozen))
    assert log == ["before udev", "after udev"]
    assert machine.frozen_filesystems() == []


def test_thaw_what_a_crash_left_frozen(machine: SimulatedMachine) -> None:
    """Issue 16.2: a daemon that died with file systems frozen: the next start thaws them."""
    frozen = machine.freeze_filesystems()
    assert frozen and machine.frozen_filesystems() == frozen
    h = Hibernator(machine, settings(machine))
    assert h.thaw_left_frozen() == frozen
    assert machine.frozen_filesystems() == []
    assert h.thaw_left_frozen() == []


def test_no_target_configured_is_said_so(machine: SimulatedMachine) -> None:
    """Issue 10 §2: with no [Image] Target= the problem says so (it used to be "cannot open image
    target /: Is a directory" on a real machine, the machine's directory here)."""
    h = Hibernator(machine, settings(machine, image_target=""))
    assert h.problems() == ["no image target is configured: set [Image] Target= in kjumpd.conf to a partition "
                            "or file made kjumpd's with `kjumpctl target init`"]
    assert h.image_capacity() == 0
    with pytest.raises(RefusedError, match="no image target is configured"):
        h.hibernate("shutdown")


def test_a_target_that_is_not_kjumpds_is_a_problem_and_left_alone(machine: SimulatedMachine,
                                                                  tmp_path: Path) -> None:
    """Issue 10 §2: a target without kjumpd's signature is one clear problem; nothing is written to it."""
    foreign = tmp_path / "foreign.img"
    foreign.write_bytes(b"\x00" * 1080 + b"\x53\xef" + bytes((64 << 20) - 1082))    # an ext4 magic
    before = foreign.read_bytes()
    h = Hibernator(machine, settings(machine, image_target=str(foreign)))
    assert h.problems() == [f"image target {foreign} is not kjumpd's: it carries ext2/ext3/ext4 file system "
                            "(magic at byte 1080); refusing to touch it"]
    with pytest.raises(RefusedError, match="not kjumpd's"):
        h.hibernate("shutdown")
    assert foreign.read_bytes() == before


def test_user_space_stops_before_the_file_systems_freeze(machine: SimulatedMachine) -> None:
    """Issue 10.4: for suspend (and platform) the cgroup freezer stops user space first, FIFREEZE second;
    thawed in the reverse order, and nothing is left frozen."""
    result = Hibernator(machine, settings(machine)).hibernate("suspend")
    assert result.success, result.reason
    log = [e["event"] for e in machine.events() if e["event"] in
           ("freeze-user-space", "freeze", "jump", "thaw", "thaw-user-space")]
    assert log[0] == "freeze-user-space" and log[-1] == "thaw-user-space"
    assert log.index("freeze") < log.index("jump") < log.index("thaw")
    assert machine.frozen_units() == [] and machine.frozen_filesystems() == []


def test_resume_leaves_user_space_to_the_kernel(machine: SimulatedMachine) -> None:
    assert Hibernator(machine, settings(machine)).hibernate("resume").success
    assert "freeze-user-space" not in [e["event"] for e in machine.events()]


def test_units_a_crash_left_frozen_are_thawed(machine: SimulatedMachine) -> None:
    units = machine.freeze_user_space()
    assert units and machine.frozen_units() == units
    assert Hibernator(machine, settings(machine)).thaw_left_frozen() == units
    assert machine.frozen_units() == []
