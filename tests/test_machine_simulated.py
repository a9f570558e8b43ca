"""The simulated machine on its own: layout, identity, boots without an image, the hook's
exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kjumpd.errors import MachineError
from kjumpd.machine import machine_from_command_line, open_machine
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.memmap import Range


@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    return SimulatedMachine.create(str(tmp_path / "m"), ram_size=32 << 20, cpus=4)


def test_layout_and_identity(machine: SimulatedMachine) -> None:
    assert machine.system_ram() == [Range(0x1000, 0x9FC00), Range(0x100000, (32 << 20) - (128 << 10))]
    fp = machine.fingerprint()
    assert fp.cpus == 4
    ident = machine.identity()
    assert ident.machine_id.hex() == machine.machine_id()
    assert machine.running == "A"


def test_power_on_without_image_is_a_normal_boot_with_a_new_boot_id(machine: SimulatedMachine) -> None:
    with machine.physical_memory(writable=True) as ram:
        ram.write(0x400000, b"old contents")
    old_boot = machine.boot_id()
    with pytest.raises(MachineError, match="must be off"):
        machine.power_on()
    machine.power_cut()
    boot = machine.power_on()
    assert not boot.resumed and boot.exit_code == 0
    assert "no hibernation image" in boot.output
    assert machine.boot_id() != old_boot and machine.running == "A"
    with machine.physical_memory() as ram:
        assert ram.read(0x400000, 12) == bytes(12), "a cold boot wipes RAM"


def test_open_machine_by_name(machine: SimulatedMachine) -> None:
    assert open_machine("simulated", machine.path).path == machine.path
    m = machine_from_command_line({"kjump.machine": f"simulated:{machine.path}"}, kernel="B")
    assert isinstance(m, SimulatedMachine) and m.kernel == "B"
    with pytest.raises(MachineError, match="unknown machine type"):
        open_machine("virtual")
    with pytest.raises(MachineError, match="not a simulated machine"):
        SimulatedMachine(str(Path(machine.path).parent))


def test_unknown_fault_is_rejected(machine: SimulatedMachine) -> None:
    with pytest.raises(MachineError, match="unknown fault"):
        machine.inject_fault("gremlins", True)


def hook(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kjumpd.ctl", "resume-check", *args],
                          capture_output=True, text=True, check=False)


def test_resume_check_without_configuration_continues_the_boot(machine: SimulatedMachine) -> None:
    result = hook("--cmdline", f"kjump.machine=simulated:{machine.path}")
    assert result.returncode == 0
    assert "no kjump.resume= image target configured" in result.stdout


def test_resume_check_reports_missing_target(machine: SimulatedMachine) -> None:
    result = hook("--cmdline", f"kjump.machine=simulated:{machine.path} kjump.resume=/nonexistent/disk")
    assert result.returncode == 0
    assert "not resuming" in result.stdout and "not found" in result.stdout


def test_command_line_steps(tmp_path: Path) -> None:
    path = str(tmp_path / "cli")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kjumpd.machine.simulated", *args], capture_output=True,
                              text=True, check=False)

    assert run("create", "--ram", "32", path).returncode == 0
    assert run("power-on", path).returncode == 1, "a running machine cannot be powered on"
    assert run("power-cut", path).returncode == 0
    boot = run("power-on", path)
    assert boot.returncode == 0 and "normal boot" in boot.stdout
    assert '"event": "power-cut"' in run("status", path).stdout
