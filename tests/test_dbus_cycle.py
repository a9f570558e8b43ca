"""Issue 3's acceptance: the whole cycle for every restart point, driven through the D-Bus API.

The real ``kjumpd`` process serves org.kjump.Hibernate1 on a private
dbus-daemon (dbusmock's polkitd and logind beside it) and drives a simulated
machine; the test plays the clients (pydbus, busctl, gdbus, ``kjumpctl``) and
the person at the machine (``power_on()``). Each test checks what a client
sees (the ``Resumed`` signal, ``LastResult``, ``State``) against what the
machine recorded (its event log and the image superblock).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from test_cycle_sim import events, superblock
from test_dbus_daemon import NAME, PATH, Daemon, kjumpd_process, machine  # noqa: F401  (fixtures)

from dbus_testing import Mock, Signals, connect, wait_for
from kjumpd.ctl import EXIT_FAILED
from kjumpd.format import DATA_OFFSET, State
from kjumpd.machine.simulated import SimulatedMachine

INTERFACE = NAME

# The restart points, the client that asks for each, and what the machine must have done: the events
# from A's jump into B on, in order (each list is a subsequence of the log; B itself powers off or
# reboots, A enters S3 or S4 after B jumped back), the events that must not appear, the result,
# whether A came back from the disk, and the image's state afterwards. Filesystems are frozen only
# where A runs again before the machine sleeps (suspend, platform); otherwise A syncs.
CYCLES = {
    "resume": dict(client="pydbus", steps=["sync", "jump:B", "jump:A"], never=["power-off", "power-on", "jump:R", "freeze"],
                   result="saved", from_disk=False, image=State.DISCARDED),
    "suspend": dict(client="busctl", steps=["freeze", "jump:B", "jump:A", "suspend-to-ram", "wake-from-ram", "thaw"],
                    never=["power-off", "power-on", "jump:R"], result="woke-from-suspend", from_disk=False,
                    image=State.DISCARDED),
    "platform": dict(client="gdbus", steps=["freeze", "jump:B", "jump:A", "platform-s4", "power-on", "jump:R", "jump:A", "thaw"],
                     never=["power-off", "reboot"], result="resumed-from-disk", from_disk=True, image=State.RESTORED),
    "shutdown": dict(client="pydbus", steps=["sync", "jump:B", "power-off", "power-on", "jump:R", "jump:A"],
                     never=["platform-s4", "reboot", "freeze"], result="resumed-from-disk", from_disk=True,
                     image=State.RESTORED),
    "reboot": dict(client="pydbus", steps=["sync", "jump:B", "reboot", "power-on", "jump:R", "jump:A"],
                   never=["power-off", "platform-s4", "freeze"], result="resumed-from-disk", from_disk=True,
                   image=State.RESTORED),
}
# Restart points after which the machine stays off until someone presses the power button.
NEEDS_POWER_ON = ("platform", "shutdown")


def call_hibernate(client: str, address: str, restart_point: str) -> None:
    """Hibernate(s) through ``client``: pydbus in this process, or the busctl or gdbus command."""
    if client == "pydbus":
        connect(address).get(NAME, PATH).Hibernate(restart_point)
        return
    if client == "busctl":
        command = ["busctl", f"--address={address}", "call", NAME, PATH, INTERFACE, "Hibernate", "s", restart_point]
    else:
        command = ["gdbus", "call", "--address", address, "--dest", NAME, "--object-path", PATH,
                   "--method", f"{INTERFACE}.Hibernate", f"'{restart_point}'"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{client}: {done.stderr}"


def in_order(log: list[str], steps: list[str], after: int = 0) -> bool:
    """True when ``steps`` occur in ``log[after:]`` in this order (not necessarily adjacent)."""
    rest = iter(log[after:])
    return all(step in rest for step in steps)


def power_on_when_off(m: SimulatedMachine) -> None:
    """Wait for the machine to be off with a saved image, then power it on; the boot must resume A."""
    wait_for(lambda: m.running == "off", "the machine to switch off")
    assert superblock(m).state == State.SAVED
    boot = SimulatedMachine(m.path).power_on()
    assert boot.resumed, boot.output


def check_result(last: dict[str, Any], restart_point: str, result: str, from_disk: bool) -> None:
    """LastResult of a successful cycle: what happened, the sizes and the durations of its steps."""
    assert (last["restart-point"], last["success"], last["result"], last["reason"]) == (restart_point, True, result, "")
    assert last["resumed-from-disk"] is from_disk
    assert 0 < last["image-bytes"] < last["memory-bytes"], "an image of a mostly empty RAM is smaller than the RAM"
    durations = last["durations"]
    assert {"total", "away", "save"} <= set(durations)
    assert ("restore" in durations) is from_disk
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in durations.values())


@pytest.mark.parametrize("restart_point", list(CYCLES))
def test_cycle_through_the_bus(restart_point: str, kjumpd_process: Daemon, polkitd: Mock, system_bus: str,
                               machine: SimulatedMachine) -> None:
    expect = CYCLES[restart_point]
    polkitd.proxy.SetAllowed(["org.kjump.hibernate"])
    obj = connect(system_bus).get(NAME, PATH)
    assert (obj.State, obj.LastResult, obj.Problems) == ("idle", {}, [])
    signals = Signals(obj, "Resumed", "PropertiesChanged")
    start = len(events(machine))

    call_hibernate(str(expect["client"]), system_bus, restart_point)
    if restart_point in NEEDS_POWER_ON:
        power_on_when_off(machine)
    [(point, details)] = signals.wait("Resumed")

    assert point == restart_point
    wait_for(lambda: signals.announced("State")[-1:] == ["idle"], "State idle to be announced")
    assert signals.announced("State") == ["hibernating", "idle"]
    last = obj.LastResult
    assert details == last, "Resumed carries the new LastResult"
    check_result(last, restart_point, str(expect["result"]), bool(expect["from_disk"]))
    log = events(machine)
    assert in_order(log, list(expect["steps"]), start), " ".join(log[start:])
    assert not set(expect["never"]) & set(log[start:]), log[start:]
    assert superblock(machine).state == expect["image"]
    assert machine.running == "A"
    assert obj.Staged is True, "B is staged again after the cycle"


# --- faults ---------------------------------------------------------------------------------------------------------


def test_failed_save_is_reported_and_a_carries_on(kjumpd_process: Daemon, polkitd: Mock, system_bus: str,
                                                  machine: SimulatedMachine) -> None:
    polkitd.proxy.SetAllowed(["org.kjump.hibernate"])
    obj = connect(system_bus).get(NAME, PATH)
    signals = Signals(obj, "Resumed")
    machine.inject_fault("ram_read_error_at", 8 << 20)
    start = len(events(machine))

    obj.Hibernate("shutdown")
    [(point, details)] = signals.wait("Resumed")

    assert point == "shutdown"
    wait_for(lambda: obj.State == "idle", "State idle")
    last = obj.LastResult
    assert details == last
    assert (last["restart-point"], last["success"], last["result"]) == ("shutdown", False, "failed")
    assert "saving the image failed" in last["reason"] and "machine check" in last["reason"]
    assert last["resumed-from-disk"] is False
    log = events(machine)[start:]
    assert in_order(log, ["sync", "jump:B", "jump:A"]), log
    assert "power-off" not in log and machine.running == "A"
    assert superblock(machine).state == State.DISCARDED

    # A carries on, and so does kjumpd: the next hibernation works.
    assert obj.Problems == [] and obj.CanHibernate() == "yes"
    machine.inject_fault("ram_read_error_at", None)
    obj.Hibernate("resume")
    signals.wait("Resumed", 2)
    wait_for(lambda: obj.State == "idle", "State idle")
    assert obj.LastResult["success"] is True and obj.LastResult["result"] == "saved"


def flip_byte_in_chunk_stream(m: SimulatedMachine) -> None:
    """Corrupt the saved image: one byte in the middle of the chunk stream (a header or payload byte,
    both covered by a checksum)."""
    position = DATA_OFFSET + superblock(m).stream_bytes // 2
    with open(m.target_path, "r+b") as disk:
        disk.seek(position)
        byte = disk.read(1)[0]
        disk.seek(position)
        disk.write(bytes([byte ^ 0xFF]))


def test_corrupted_image_gives_a_normal_boot_and_the_waiting_caller_fails(
        kjumpd_process: Daemon, polkitd: Mock, system_bus: str, machine: SimulatedMachine) -> None:
    polkitd.proxy.SetAllowed(["org.kjump.hibernate"])
    obj = connect(system_bus).get(NAME, PATH)
    waiter = subprocess.Popen([sys.executable, "-m", "kjumpd.ctl", "hibernate", "--wait", "--restart-point=shutdown"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: machine.running == "off" or waiter.poll() is not None, "the machine to switch off")
        assert superblock(machine).state == State.SAVED
        flip_byte_in_chunk_stream(machine)
        boot = SimulatedMachine(machine.path).power_on()
        _out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()

    assert not boot.resumed
    assert "corrupt" in boot.output and "normal boot" in boot.output
    # R finds the damaged chunk as it writes (docs/machine.md): one image, one chance
    assert superblock(machine).state == State.DISCARDED, "no later boot may resume it"
    assert waiter.returncode == EXIT_FAILED
    last = obj.LastResult
    assert (last["restart-point"], last["success"], last["result"]) == ("shutdown", False, "failed")
    assert last["reason"].startswith("the machine booted normally") and "corrupt" in last["reason"]
    assert f"hibernation: failed (restart point shutdown): {last['reason']}" in err
    assert obj.State == "idle"

