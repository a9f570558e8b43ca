"""logind's answers and the sleep services' choice follow kjumpd's readiness (issue 10 §3).

The manager runs with the controllable hibernator; ``Readiness`` writes the
sleep.conf drop-in and the ready marker into a temporary directory. The real
process, and what logind makes of the drop-in, are in test_dbus_daemon.py and
the system test.
"""

from __future__ import annotations

from pathlib import Path

from dbus_testing import FakeHibernator
from kjumpd.daemon.config import Config
from kjumpd.daemon.manager import Manager
from kjumpd.daemon.readiness import ALLOW_KEYS, Readiness, sleep_conf

FORBIDDEN = [f"{key}=no" for key in ALLOW_KEYS]


def allowed_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Allow")]


def test_sleep_conf_forbids_only_when_neither_kjumpd_nor_the_kernel_can() -> None:
    assert allowed_lines(sleep_conf([], ["no swap"])) == []
    assert allowed_lines(sleep_conf(["no kexec jump"], [])) == [], "the kernel's own hibernation stands in"
    text = sleep_conf(["no kexec\njump"], ["no swap"])
    assert allowed_lines(text) == FORBIDDEN
    assert "#   no kexec jump" in text and "#   no swap" in text, "each reason on one comment line"
    assert text.splitlines()[0].startswith("#") and "[Sleep]" in text.splitlines()


def test_files_follow_the_managers_problems(tmp_path: Path) -> None:
    hibernator = FakeHibernator()
    manager = Manager(Config(image_target="/dev/vdb"), lambda config, participants: hibernator, lambda fn: fn())
    dropin, ready = tmp_path / "sleep.conf.d" / "50-kjumpd.conf", tmp_path / "ready"
    dropin.parent.mkdir()
    told = Readiness(manager, hibernator.fallback_problems, dropin=dropin, ready=ready)
    manager.observers.append(told)
    told.update()
    assert ready.exists() and allowed_lines(dropin.read_text()) == []
    hibernator.problem_list = ["the kernel lacks CONFIG_KEXEC_JUMP"]
    manager.refresh()
    assert not ready.exists()
    assert allowed_lines(dropin.read_text()) == FORBIDDEN
    assert "CONFIG_KEXEC_JUMP" in dropin.read_text()
    hibernator.problem_list = []
    manager.refresh()
    assert ready.exists() and allowed_lines(dropin.read_text()) == []
    told.stop()
    assert not ready.exists() and not dropin.exists()


def test_an_unwritable_place_is_reported_once_and_harms_nothing(tmp_path: Path, caplog) -> None:
    hibernator = FakeHibernator()
    manager = Manager(Config(), lambda config, participants: hibernator, lambda fn: fn())
    told = Readiness(manager, hibernator.fallback_problems, dropin=tmp_path / "missing" / "50-kjumpd.conf",
                     ready=tmp_path / "ready")
    told.update()
    told.update()
    assert (tmp_path / "ready").exists()
    assert sum("cannot update" in r.getMessage() for r in caplog.records) == 1
