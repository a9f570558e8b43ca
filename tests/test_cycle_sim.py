"""The whole cycle on the simulated machine, through the Hibernator, for every restart
point, and with faults injected at each step: A keeps running or the next boot is a
normal one, never half-restored memory, and the reason is visible."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sim_testing import machine_with_token, superblock

from kjumpd import image
from kjumpd.daemon.hibernator import HibernateResult, HibernateSettings, Hibernator
from kjumpd.errors import RefusedError
from kjumpd.format import DATA_OFFSET, RESULT_FAILED, ChunkHeader, Compression, Handoff, State
from kjumpd.machine import MachineLostError
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.memmap import DEFAULT_LOW, Range, choose_region, save_map
from kjumpd.target import ImageTarget

TOKEN = b"workload-token-0123456789"


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    return machine_with_token(str(tmp_path / "machine"), TOKEN)


def hibernator(m: SimulatedMachine, compression: str = "none", **overrides: object) -> Hibernator:
    settings = HibernateSettings(image_target=m.target_path, kernel=m.kernel_path, initrd=m.initrd_path,
                                 region_size=4 << 20, compression=compression)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return Hibernator(m, settings)


def token(m: SimulatedMachine) -> bytes:
    with m.physical_memory() as ram:
        return ram.read(m.workload_area()[0], len(TOKEN))


def events(m: SimulatedMachine) -> list[str]:
    return [e["event"] + (f":{e['to']}" if "to" in e else "") for e in m.events()]


class Background:
    """hibernate() in a thread, as the daemon runs it; the test plays the person at the machine."""

    def __init__(self, h: Hibernator, point: str) -> None:
        self.result: HibernateResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(h, point))
        self.thread.start()

    def _run(self, h: Hibernator, point: str) -> None:
        try:
            self.result = h.hibernate(point)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(180)
        assert not self.thread.is_alive()


def workload() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"])


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_resume_saves_and_carries_on(machine: SimulatedMachine, compression: str) -> None:
    h = hibernator(machine, compression)
    assert h.problems() == []
    result = h.hibernate("resume")
    assert (result.success, result.result, result.resumed_from_disk) == (True, "saved", False)
    assert 0 < result.image_bytes < result.memory_bytes, "zero pages are not stored"
    assert token(machine) == TOKEN
    sb = superblock(machine)
    assert sb.state == State.DISCARDED, "an image A carried on past must never be resumed"
    log = events(machine)
    assert log.index("sync") < log.index("jump:B") < log.index("jump:A")
    assert "freeze" not in log, "A never runs between the jump and the image being discarded"
    assert h.is_staged(), "B stays staged after a jump back"


def states_when_a_runs_again(monkeypatch: pytest.MonkeyPatch) -> list[State]:
    """The image's state at each moment A's user space runs again after B (and may write)."""
    seen: list[State] = []
    original = SimulatedMachine._back_in_a

    def spy(self: SimulatedMachine) -> None:
        seen.append(superblock(self).state)
        original(self)

    monkeypatch.setattr(SimulatedMachine, "_back_in_a", spy)
    return seen


def test_resume_image_is_unusable_before_a_writes_again(machine: SimulatedMachine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.3: with restart point resume, A's tasks run (and write) as soon as B jumps
    back; a SAVED image at that moment would be resumed stale after a crash."""
    seen = states_when_a_runs_again(monkeypatch)
    result = hibernator(machine).hibernate("resume")
    assert (result.success, result.result) == (True, "saved")
    assert seen == [State.DISCARDED], "B discards the image before A runs again"


@pytest.mark.parametrize("point", ["shutdown", "reboot"])
def test_b_that_cannot_power_off_discards_before_returning(machine: SimulatedMachine, point: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.3: B's power off fails and B returns to A. A runs (and writes) again, so the
    image is stale: it must be unusable before A runs, and A must not power off onto it."""
    seen = states_when_a_runs_again(monkeypatch)
    machine.inject_fault("b_power_error", "Input/output error")
    job = Background(hibernator(machine), point)
    wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "the hibernation to end")
    assert machine.running == "A", "A never powers off (after a sync) onto an image it made stale"
    job.join()
    assert job.error is None and not job.result.success
    assert f"could not {point}: " in job.result.reason and "Input/output error" in job.result.reason
    assert seen == [State.DISCARDED]
    assert superblock(machine).state == State.DISCARDED
    assert "power-off" not in events(machine) and "reboot" not in events(machine)


def test_shutdown_then_power_on_resumes_a(machine: SimulatedMachine) -> None:
    h = hibernator(machine)
    proc = workload()
    try:
        machine.register_workload(proc.pid)
        job = Background(h, "shutdown")
        wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "B to power off")
        assert process_state(proc.pid) == "T", "A's workload is stopped while A is away"
        assert superblock(machine).state == State.SAVED
        boot = SimulatedMachine(machine.path).power_on()
        job.join()
        assert boot.resumed, boot.output
        assert job.error is None
        assert job.result.success and job.result.resumed_from_disk
        assert job.result.result == "resumed-from-disk"
        assert token(machine) == TOKEN, "the RAM was wiped at power-on and restored by R"
        assert superblock(machine).state == State.RESTORED
        assert process_state(proc.pid) in ("S", "R")
        log = events(machine)
        assert log[log.index("power-off"):].count("kexec-load") == 2, "C loads R, then A stages B again"
        assert h.is_staged()
    finally:
        proc.kill()
        proc.wait()


def test_reboot_resumes_at_once(machine: SimulatedMachine) -> None:
    result = hibernator(machine).hibernate("reboot")
    assert result.success and result.resumed_from_disk
    assert token(machine) == TOKEN
    assert "reboot" in events(machine)


def test_platform_enters_s4_then_resumes(machine: SimulatedMachine) -> None:
    job = Background(hibernator(machine), "platform")
    wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "S4")
    assert "platform-s4" in events(machine)
    assert SimulatedMachine(machine.path).power_on().resumed
    job.join()
    assert job.result.resumed_from_disk and token(machine) == TOKEN


def test_platform_failure_falls_back_to_power_off(machine: SimulatedMachine) -> None:
    machine.inject_fault("platform_error", "Operation not permitted")
    job = Background(hibernator(machine), "platform")
    wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "power off")
    assert "power-off" in events(machine) and "platform-s4" not in events(machine)
    SimulatedMachine(machine.path).power_on()
    job.join()
    assert job.result.resumed_from_disk


def test_suspend_wakes_and_discards_image(machine: SimulatedMachine) -> None:
    result = hibernator(machine).hibernate("suspend")
    assert (result.success, result.result) == (True, "woke-from-suspend")
    assert superblock(machine).state == State.DISCARDED
    log = events(machine)
    assert log.index("suspend-to-ram") < log.index("wake-from-ram") < log.index("thaw")


def test_suspend_power_loss_resumes_from_disk(machine: SimulatedMachine) -> None:
    machine.inject_fault("suspend_power_loss", True)
    job = Background(hibernator(machine), "suspend")
    wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "power loss in S3")
    assert SimulatedMachine(machine.path).power_on().resumed
    job.join()
    assert job.result.resumed_from_disk and token(machine) == TOKEN


def test_second_hibernation_after_resume_from_disk(machine: SimulatedMachine) -> None:
    h = hibernator(machine)
    assert h.hibernate("reboot").resumed_from_disk
    assert h.hibernate("reboot").resumed_from_disk, "B was staged again after the resume"
    assert token(machine) == TOKEN


# --- faults ------------------------------------------------------------------------------


def test_missing_kernel_feature_refuses_before_touching_anything(machine: SimulatedMachine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "kernel_problems", lambda: ["this kernel was built without CONFIG_KEXEC_JUMP"])
    h = hibernator(machine)
    assert h.problems() == ["this kernel was built without CONFIG_KEXEC_JUMP"]
    before = Path(machine.target_path).read_bytes()[:8192]
    with pytest.raises(RefusedError, match="CONFIG_KEXEC_JUMP"):
        h.hibernate("shutdown")
    assert Path(machine.target_path).read_bytes()[:8192] == before
    assert events(machine)[-1] == "power-on", "nothing happened after the machine was created"


def test_kexec_load_failure_refuses_before_touching_anything(machine: SimulatedMachine) -> None:
    machine.inject_fault("kexec_load_error", "Operation not permitted")
    h = hibernator(machine)
    before = Path(machine.target_path).read_bytes()[:8192]
    with pytest.raises(RefusedError, match="Operation not permitted"):
        h.hibernate("shutdown")
    assert Path(machine.target_path).read_bytes()[:8192] == before
    assert "freeze" not in events(machine)


def test_missing_target_is_refused(machine: SimulatedMachine) -> None:
    h = hibernator(machine, image_target=os.path.join(machine.path, "nope.img"))
    assert any("not found" in p for p in h.problems())
    with pytest.raises(RefusedError, match="not found"):
        h.hibernate("shutdown")
    assert "jump:B" not in events(machine)


def test_too_small_target_is_refused(machine: SimulatedMachine) -> None:
    os.truncate(machine.target_path, 8 << 20)
    with pytest.raises(RefusedError, match="too small"):
        hibernator(machine).hibernate("shutdown")
    assert "jump:B" not in events(machine)


def test_unknown_restart_point_is_refused(machine: SimulatedMachine) -> None:
    with pytest.raises(RefusedError, match="unknown restart point"):
        hibernator(machine).hibernate("hover")


def test_cancel_before_the_jump(machine: SimulatedMachine) -> None:
    cancel = threading.Event()
    cancel.set()
    result = hibernator(machine).hibernate("shutdown", cancel=cancel)
    assert (result.success, result.result) == (False, "cancelled")
    assert "jump:B" not in events(machine)


def test_failed_save_comes_back_as_resume_with_reason(machine: SimulatedMachine) -> None:
    machine.inject_fault("ram_read_error_at", 0x800000)
    result = hibernator(machine).hibernate("shutdown")
    assert not result.success and result.result == "failed"
    assert "machine check" in result.reason
    assert superblock(machine).state == State.DISCARDED
    assert superblock(machine).restart_point == "resume"
    assert superblock(machine).result == RESULT_FAILED, "docs/format.md: result 2 = failed"
    assert token(machine) == TOKEN and "sync" in events(machine)
    assert "power-off" not in events(machine)


def test_freeze_failure_leaves_everything_thawed(machine: SimulatedMachine) -> None:
    machine.inject_fault("freeze_error", "/")
    result = hibernator(machine).hibernate("suspend")
    assert not result.success and "cannot freeze /" in result.reason
    log = events(machine)
    assert log.count("freeze") == log.count("thaw") == 1 and "jump:B" not in log


@pytest.mark.parametrize("restart_point,frozen", [("suspend", True), ("platform", True), ("shutdown", False),
                                                  ("reboot", False), ("resume", False)])
def test_filesystems_frozen_only_where_a_runs_before_sleeping(machine: SimulatedMachine, restart_point: str,
                                                             frozen: bool) -> None:
    """FIFREEZE only for suspend and platform; a writer to a frozen fs would stall the kernel's task freezer."""
    job = Background(hibernator(machine), restart_point)
    if restart_point in ("shutdown", "platform"):
        wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "the machine to go off")
        SimulatedMachine(machine.path).power_on()
    job.join()
    assert job.error is None and job.result is not None
    assert job.result.success, job.result.reason
    log = events(machine)
    assert ("freeze" in log) == frozen and ("thaw" in log) == frozen
    assert ("sync" in log) == (not frozen)


def test_power_cut_during_save_gives_a_normal_boot(machine: SimulatedMachine) -> None:
    machine.inject_fault("power_cut_after_bytes", 8 << 20)
    job = Background(hibernator(machine), "shutdown")
    wait_until(lambda: machine.running == "off" or not job.thread.is_alive(), "the power cut")
    assert superblock(machine).state == State.SAVING
    boot = SimulatedMachine(machine.path).power_on()
    job.join()
    assert not boot.resumed
    assert "incomplete image" in boot.output and "normal boot" in boot.output
    assert isinstance(job.error, MachineLostError)
    assert superblock(machine).state == State.SAVING, "C leaves the image alone"
    assert token(machine) == bytes(len(TOKEN)), "nothing was restored into the fresh system"


def power_off_with_image(m: SimulatedMachine) -> Background:
    job = Background(hibernator(m), "shutdown")
    wait_until(lambda: m.running == "off" or not job.thread.is_alive(), "B to power off")
    assert superblock(m).state == State.SAVED
    return job


def edit_hardware(m: SimulatedMachine, change: Callable[[dict], None]) -> None:
    """Change machine.json (CPUs, boot parameters) as if the machine changed while off."""
    path = Path(m.path, "machine.json")
    hardware = json.loads(path.read_text())
    change(hardware)
    path.write_text(json.dumps(hardware))


def append_boot_parameter(m: SimulatedMachine, word: str) -> None:
    edit_hardware(m, lambda hw: hw.update(boot_parameters=f"{hw['boot_parameters']} {word}"))


def drop_boot_parameter(m: SimulatedMachine, word: str) -> None:
    edit_hardware(m, lambda hw: hw.update(boot_parameters=" ".join(
        w for w in hw["boot_parameters"].split() if w != word)))


def flip_stored_byte(m: SimulatedMachine) -> None:
    """Flip one byte in the middle of the first chunk that stores data (twice = undone)."""
    with open(m.target_path, "r+b") as disk:
        position = DATA_OFFSET
        while True:
            disk.seek(position)
            header = ChunkHeader.unpack(disk.read(4096))
            if header.stored_len:
                break
            position += header.total
        disk.seek(position + header.size + header.stored_len // 2)
        byte = disk.read(1)
        disk.seek(position + header.size + header.stored_len // 2)
        disk.write(bytes([byte[0] ^ 0xFF]))


def boot_refuses(m: SimulatedMachine, job: Background, why: str) -> None:
    """The first boot after the save does not resume, says why, and leaves the image DISCARDED with the reason."""
    boot = SimulatedMachine(m.path).power_on()
    job.join()
    assert not boot.resumed
    assert why in boot.output and "normal boot" in boot.output
    assert isinstance(job.error, MachineLostError)
    assert token(m) == bytes(len(TOKEN)), "the fresh system is not A"
    sb = superblock(m)
    assert sb.state == State.DISCARDED, "one image, one chance: a refused image is made unusable"
    assert why in sb.reason, sb.reason


def never_resumed_again(m: SimulatedMachine) -> None:
    """A later boot that would have accepted the image does not resume it."""
    m.power_cut()
    boot = SimulatedMachine(m.path).power_on()
    assert not boot.resumed, boot.output
    assert "discarded image" in boot.output
    assert token(m) == bytes(len(TOKEN))


def test_corrupted_image_is_refused_once_and_never_resumed(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    flip_stored_byte(machine)
    boot_refuses(machine, job, "corrupt")
    flip_stored_byte(machine)       # the chunk is whole again
    never_resumed_again(machine)


def test_image_of_another_machine_is_refused_once_and_never_resumed(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    edit_hardware(machine, lambda hw: hw.update(cpus=1))
    boot_refuses(machine, job, "CPUs or firmware tables differ")
    assert "jump:R" not in events(machine)
    edit_hardware(machine, lambda hw: hw.update(cpus=2))     # the dock is back
    never_resumed_again(machine)


def test_image_of_another_ram_layout_is_refused_once_and_never_resumed(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    iomem = Path(machine.path, "iomem")
    original = iomem.read_text()
    iomem.write_text(original.replace("00100000-01fdffff : System RAM",
                                      "00100000-01edffff : System RAM\n01ee0000-01fdffff : Reserved"))
    boot_refuses(machine, job, "RAM layout differs")
    iomem.write_text(original)
    never_resumed_again(machine)


@pytest.mark.parametrize("word", ["noresume", "kjump.noresume"])
def test_noresume_discards_the_image(machine: SimulatedMachine, word: str) -> None:
    job = power_off_with_image(machine)
    append_boot_parameter(machine, word)
    boot_refuses(machine, job, f"{word} on the kernel command line")
    drop_boot_parameter(machine, word)
    never_resumed_again(machine)


def test_kexec_load_failure_in_c_discards_the_image(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    machine.inject_fault("kexec_load_error", "Cannot allocate memory")
    boot_refuses(machine, job, "Cannot allocate memory")
    machine.inject_fault("kexec_load_error", None)
    never_resumed_again(machine)


def test_missing_restore_kernel_discards_the_image(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    append_boot_parameter(machine, f"kjump.kernel={machine.path}/no-such-kernel")
    boot_refuses(machine, job, "does not exist")
    drop_boot_parameter(machine, f"kjump.kernel={machine.path}/no-such-kernel")
    never_resumed_again(machine)


def test_image_found_on_another_disk_is_refused(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    shutil.copyfile(machine.target_path, Path(machine.path, "other-disk.img"))
    edit_hardware(machine, lambda hw: hw.update(
        boot_parameters=hw["boot_parameters"].replace("disk.img", "other-disk.img")))
    boot = SimulatedMachine(machine.path).power_on()
    job.join()
    assert not boot.resumed and "written to disk.img but found on other-disk.img" in boot.output
    with ImageTarget.open(str(Path(machine.path, "other-disk.img")), writable=False) as target:
        assert image.read_superblock(target).state == State.DISCARDED, "the copy is not resumed later either"


def test_restore_that_dies_before_marking_the_image_boots_normally(machine: SimulatedMachine) -> None:
    """Issue 16.1: R dies before it can mark the image (a panic, an I/O error); the next boot
    must not start R again (boot loop) but discard the image and boot normally."""
    job = power_off_with_image(machine)
    machine.inject_fault("restore_crashes", 3)
    boot = SimulatedMachine(machine.path).power_on()
    job.join()
    assert not boot.resumed
    assert events(machine).count("jump:R") == 1, "R is started once per image, never again"
    sb = superblock(machine)
    assert sb.state == State.DISCARDED and "already tried to resume" in sb.reason, sb.reason
    assert isinstance(job.error, MachineLostError)
    never_resumed_again(machine)


def test_a_boot_without_the_hook_leaves_the_image_to_kjumpd_which_discards_it(machine: SimulatedMachine) -> None:
    """An initramfs without kjumpd's hook (or dracut) never looks at the image; kjumpd
    discards it when it starts in that boot, so no later boot resumes it."""
    job = power_off_with_image(machine)
    resume_word = next(w for w in machine.hardware["boot_parameters"].split() if w.startswith("kjump.resume="))
    drop_boot_parameter(machine, resume_word)
    boot = SimulatedMachine(machine.path).power_on()
    job.join()
    assert not boot.resumed and superblock(machine).state == State.SAVED, "this boot's C did not look"
    a = SimulatedMachine(machine.path)
    reason = hibernator(a).discard_stale_image()
    assert "did not resume it" in reason and a.boot_id() in reason
    assert superblock(machine).state == State.DISCARDED and superblock(machine).reason == reason
    assert hibernator(a).discard_stale_image() == "", "nothing left to discard"
    append_boot_parameter(machine, resume_word)
    never_resumed_again(machine)


def test_consumed_image_is_not_resumed_again(machine: SimulatedMachine) -> None:
    assert hibernator(machine).hibernate("reboot").resumed_from_disk
    machine.power_cut()
    boot = SimulatedMachine(machine.path).power_on()
    assert not boot.resumed
    assert "already restored (consumed)" in boot.output
    assert token(machine) == bytes(len(TOKEN))


def test_parked_b_entered_again_saves_afresh(machine: SimulatedMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real machine B stays parked after its jump back; A's next jump returns from
    B's jump_back and B must read the new handoff and save again."""
    from kjumpd.boot import common as boot_common
    from kjumpd.boot import save

    h = hibernator(machine)
    h.stage()
    spec_line = [e for e in machine.events() if e["event"] == "kexec-load"][-1]["command_line"]
    restart_points = iter(["platform"])
    jumps: list[int] = []

    class Done(Exception):
        pass

    class ParkedB(SimulatedMachine):
        def jump_back(self, entry: int) -> None:
            jumps.append(entry)
            if len(jumps) == 2:
                raise Done()
            # A hibernates again with another restart point, as it would before re-entering B.
            with ImageTarget.open(machine.target_path) as target:
                handoff, _ = image.read_handoff(target)
                image.write_handoff(target, dataclasses.replace(handoff, restart_point=next(restart_points)))

    ram = machine.system_ram()
    region = choose_region(ram, 4 << 20)
    low = Range(DEFAULT_LOW[0], DEFAULT_LOW[0] + DEFAULT_LOW[1])
    with ImageTarget.open(machine.target_path) as target:
        image.write_handoff(target, Handoff(machine.identity(), "suspend", Compression.NONE, region.start,
                                            region.size, low.start, low.size, save_map(ram, region, low), 7))
    monkeypatch.setattr(boot_common, "machine_from_command_line",
                        lambda params, kernel: ParkedB(machine.path, kernel="B"))
    with pytest.raises(Done):
        save.main(["--cmdline", f"{spec_line} kexec_jump_back_entry=0x2000fb"])
    assert jumps == [0x2000FB, 0x2000FB]
    sb = superblock(machine)
    assert sb.state == State.SAVED and sb.restart_point == "platform", "the second save used the new handoff"


def test_b_crash_reboots_into_a_normal_boot(machine: SimulatedMachine) -> None:
    machine.inject_fault("crash_after_bytes", 4 << 20)
    with pytest.raises(MachineLostError, match="incomplete image"):
        hibernator(machine).hibernate("shutdown")
    log = events(machine)
    assert log.index("jump:B") < log.index("crash") < len(log) - 1 - log[::-1].index("power-on")
    assert "Kernel panic" in machine.console_output()
    assert superblock(machine).state == State.SAVING and machine.running == "A"
