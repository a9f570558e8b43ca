"""The resume check C (kjumpd.boot.resume) on its own, on a simulated machine: one image,
one chance (docs/format.md, "States"), what it does when it cannot write the target, and
what of C's command line reaches R."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sim_testing import save_image_of_itself

from kjumpd import image, kexec
from kjumpd.boot import resume
from kjumpd.errors import ImageError
from kjumpd.format import State
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.target import ImageTarget


@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    """A machine whose target holds a SAVED image of itself (as B leaves it before powering off)."""
    m = SimulatedMachine.create(str(tmp_path / "machine"), ram_size=32 << 20, cpus=2)
    save_image_of_itself(m)
    return m


@pytest.fixture(autouse=True)
def r_never_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """kexec -e returns as if R did not start: C runs on in this process (the simulated
    machine would replace it by R's program)."""
    monkeypatch.setattr(SimulatedMachine, "kexec_execute", lambda self: "")


def state(m: SimulatedMachine) -> State:
    with ImageTarget.open(m.target_path, writable=False) as target:
        return image.read_superblock(target).state


def options(m: SimulatedMachine, extra: str = "", **overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    resume.add_arguments(parser)
    namespace = parser.parse_args(["--cmdline", f"{m.kernel_command_line()} {extra}".strip()])
    for key, value in overrides.items():
        setattr(namespace, key, value)
    return namespace


def loads(m: SimulatedMachine) -> list[str]:
    return [e["command_line"] for e in m.events() if e["event"] == "kexec-load"]


def refuse_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target opens read-only only (a write-protected disk, an I/O error on write)."""
    original = SimulatedMachine.open_target

    def open_target(self: SimulatedMachine, name: str, *, offset: int = 0, writable: bool = True) -> ImageTarget:
        if writable:
            raise ImageError(f"cannot use image target {name}: Read-only file system")
        return original(self, name, offset=offset, writable=writable)

    monkeypatch.setattr(SimulatedMachine, "open_target", open_target)


def test_unwritable_target_with_a_saved_image_stops_the_boot(machine: SimulatedMachine,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    refuse_writing(monkeypatch)
    assert resume.run(options(machine)) == resume.EXIT_UNSAFE
    said = capsys.readouterr().out
    assert "cannot be made unusable" in said and "Read-only file system" in said
    assert "kjumpctl image discard" in said
    assert state(machine) == State.SAVED and loads(machine) == [], "neither resumed nor touched"


def test_unwritable_target_with_noresume_stops_the_boot_too(machine: SimulatedMachine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_writing(monkeypatch)
    assert resume.run(options(machine, "noresume")) == resume.EXIT_UNSAFE
    assert state(machine) == State.SAVED


def test_unwritable_target_without_a_saved_image_boots_on(machine: SimulatedMachine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with ImageTarget.open(machine.target_path) as target:
        image.discard(target, "test")
    refuse_writing(monkeypatch)
    assert resume.run(options(machine)) == resume.EXIT_CONTINUE


def test_restore_kernel_that_does_not_start_discards_the_image(machine: SimulatedMachine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """kexec -e returning (R never ran): the image is claimed, then discarded, and the boot goes on."""
    claimed: list[State] = []
    monkeypatch.setattr(SimulatedMachine, "kexec_execute", lambda self: claimed.append(state(self)) or "")
    assert resume.run(options(machine)) == resume.EXIT_CONTINUE
    assert claimed == [State.RESUMING], "the attempt is durable before R could run"
    with ImageTarget.open(machine.target_path, writable=False) as target:
        superblock = image.read_superblock(target)
    assert superblock.state == State.DISCARDED and "did not start" in superblock.reason


def test_a_claimed_image_is_discarded_not_resumed(machine: SimulatedMachine) -> None:
    with ImageTarget.open(machine.target_path) as target:
        image.set_state(target, State.RESUMING)
    assert resume.run(options(machine)) == resume.EXIT_CONTINUE
    assert state(machine) == State.DISCARDED and loads(machine) == []


def test_dry_run_touches_nothing(machine: SimulatedMachine, capsys: pytest.CaptureFixture[str]) -> None:
    assert resume.run(options(machine, "noresume", dry_run=True)) == resume.EXIT_CONTINUE
    assert "a boot would discard the image" in capsys.readouterr().out
    assert resume.run(options(machine, dry_run=True)) == resume.EXIT_CONTINUE
    assert "is valid" in capsys.readouterr().out
    assert state(machine) == State.SAVED and loads(machine) == []


@pytest.mark.parametrize("words", ["foo=it's", "dyndbg=\"file kexec.c +p\" o'brien"])
def test_single_quotes_on_the_command_line_do_not_stop_the_resume(machine: SimulatedMachine, words: str) -> None:
    """Issue 16.4: shlex raised ValueError on a lone ', which the kernel takes as a character."""
    resume.run(options(machine, words))
    assert len(loads(machine)) == 1, "R was loaded"


def test_r_gets_only_the_target_c_checked(machine: SimulatedMachine, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16.4: a quoted console= value carrying another parameter must not reach R."""
    resume.run(options(machine, 'console=ttyS0,115200 console="ttyS0 kjump.target=/dev/sdz kjump.offset=4096"'))
    (line,) = loads(machine)
    params = kexec.parse_command_line(line)
    assert params["kjump.target"] == machine.target_path and params["kjump.offset"] == "0"
    assert [w.text for w in kexec.split_command_line(line) if w.name == "console"] == ["console=ttyS0,115200"]
    assert "/dev/sdz" not in line
    assert "not passed on to the restore kernel" in capsys.readouterr().out


# --- kjumpctl image discard: the administrator's way to the same end ------------------


def kjumpctl(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kjumpd.ctl", *map(str, args)], capture_output=True, text=True,
                          check=False)


def test_kjumpctl_image_discard_makes_a_saved_image_unusable(machine: SimulatedMachine) -> None:
    done = kjumpctl("image", "discard", machine.target_path, "--reason", "disk replaced")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "discarded the SAVED image" in done.stdout
    with ImageTarget.open(machine.target_path, writable=False) as target:
        superblock = image.read_superblock(target)
    assert superblock.state == State.DISCARDED
    assert superblock.reason == "discarded by the administrator (kjumpctl image discard): disk replaced"
    assert resume.run(options(machine)) == resume.EXIT_CONTINUE and loads(machine) == [], "no boot resumes it"
    again = kjumpctl("image", "discard", machine.target_path)
    assert again.returncode == 0 and "nothing to discard (state DISCARDED)" in again.stdout


def test_kjumpctl_image_discard_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = kjumpctl("image", "discard", tmp_path / "nothing-here")
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    assert missing.stderr.startswith("kjumpctl: ") and "Traceback" not in missing.stderr
    usage = kjumpctl("image", "discard")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_an_unexpected_error_in_the_checks_still_discards(machine: SimulatedMachine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever stops the resume (here a bug: a ValueError from a layout helper), the image
    must not outlive the boot: the script boots on after any exit status but 3."""
    def broken(self: SimulatedMachine) -> list:
        raise ValueError("bad range")

    monkeypatch.setattr(SimulatedMachine, "system_ram", broken)
    assert resume.run(options(machine)) == resume.EXIT_CONTINUE
    with ImageTarget.open(machine.target_path, writable=False) as target:
        superblock = image.read_superblock(target)
    assert superblock.state == State.DISCARDED and superblock.reason == "bad range"
