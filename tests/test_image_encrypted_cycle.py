"""Encrypted hibernation on the simulated machine: A seals to the public key, B encrypts, C asks the
passphrase and hands the data key to R inside R's initramfs, R restores.

The secret a workload keeps in RAM must not be on the image target; a wrong
passphrase (every try) or no answer ends in a normal boot with the image
discarded and the reason on the console; a plain image is refused where a key
is configured; memfd_secret memory refuses the hibernation.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from sim_testing import machine_with_token, superblock

from kjumpd import seal
from kjumpd.daemon.hibernator import HibernateSettings, Hibernator
from kjumpd.errors import RefusedError
from kjumpd.format import State
from kjumpd.machine import MachineLostError
from kjumpd.machine.simulated import PASSPHRASE_FILE, SimulatedMachine

SECRET = b"known-random-secret-5f0c9e2d41a7b3"
PASSPHRASE = b"open sesame"


@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    return machine_with_token(str(tmp_path / "machine"), SECRET)


def with_key(m: SimulatedMachine, tmp_path: Path) -> str:
    """``kjumpctl key init`` for the simulated machine: the public key for A, the secret one in C's initramfs."""
    public, secret = seal.generate_key_pair(PASSPHRASE, seal.ScryptCost(log_n=10))
    Path(m.secret_key_path).write_bytes(secret)
    path = tmp_path / "image-key.pub"
    path.write_text(seal.format_public_key(public))
    return str(path)


def hibernator(m: SimulatedMachine, public_key: str, encryption: str = "auto") -> Hibernator:
    return Hibernator(m, HibernateSettings(image_target=m.target_path, kernel=m.kernel_path, initrd=m.initrd_path,
                                           region_size=4 << 20, compression="lz4", encryption=encryption,
                                           public_key=public_key))


def type_at_console(m: SimulatedMachine, *lines: bytes) -> None:
    Path(m.path, PASSPHRASE_FILE).write_bytes(b"\n".join(lines))


def secret_in_ram(m: SimulatedMachine) -> bytes:
    with m.physical_memory() as ram:
        return ram.read(m.workload_area()[0], len(SECRET))


def power_off_with_image(h: Hibernator, m: SimulatedMachine) -> threading.Thread:
    """A hibernates in a thread (as the daemon does); returns once B powered the machine off.

    The thread ends with the next boot: A resumed, or MachineLostError when that boot did not resume A.
    """
    def run() -> None:
        try:
            h.hibernate("shutdown")
        except MachineLostError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while m.running != "off" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.running == "off"
    return thread


def test_encrypted_cycle_resumes_with_the_passphrase_and_the_disk_holds_no_secret(machine, tmp_path):
    h = hibernator(machine, with_key(machine, tmp_path))
    thread = power_off_with_image(h, machine)
    sb = superblock(machine)
    assert sb.state == State.SAVED and sb.seal
    assert SECRET not in Path(machine.target_path).read_bytes(), "the secret reached the disk in the clear"
    type_at_console(machine, b"wrong", PASSPHRASE)
    boot = SimulatedMachine(machine.path).power_on()
    thread.join(120)
    assert boot.resumed, boot.output
    assert secret_in_ram(machine) == SECRET
    assert "wrong passphrase (1 of 3)" in machine.console_output()
    done = superblock(machine)
    assert done.state == State.RESTORED and seal.Envelope.unpack(done.seal).destroyed


def test_every_wrong_passphrase_gives_a_normal_boot_and_discards_the_image(machine, tmp_path):
    h = hibernator(machine, with_key(machine, tmp_path))
    power_off_with_image(h, machine)
    type_at_console(machine, b"one", b"two", b"three", PASSPHRASE)
    boot = SimulatedMachine(machine.path).power_on()
    assert not boot.resumed
    console = machine.console_output()
    assert "wrong passphrase (3 of 3)" in console
    assert "not resuming: the image key was not unlocked" in console and "discarded" in console
    assert superblock(machine).state == State.DISCARDED
    assert secret_in_ram(machine) != SECRET


def test_no_answer_gives_a_normal_boot(machine, tmp_path):
    power_off_with_image(hibernator(machine, with_key(machine, tmp_path)), machine)
    boot = SimulatedMachine(machine.path).power_on()          # nobody types anything
    assert not boot.resumed
    assert superblock(machine).state == State.DISCARDED


def test_a_plain_image_is_refused_where_the_initramfs_has_a_key(machine, tmp_path):
    """Encryption off in A (or a forger's plain image): C with a key refuses it."""
    public = with_key(machine, tmp_path)
    power_off_with_image(hibernator(machine, public, encryption="off"), machine)
    assert not superblock(machine).seal
    boot = SimulatedMachine(machine.path).power_on()
    assert not boot.resumed
    assert "only encrypted images are resumed here" in machine.console_output()
    assert superblock(machine).state == State.DISCARDED


def test_encryption_on_without_a_public_key_refuses_hibernation(machine, tmp_path):
    h = hibernator(machine, str(tmp_path / "missing.pub"), encryption="on")
    with pytest.raises(RefusedError, match="images are to be encrypted, but cannot read the public key"):
        h.hibernate("shutdown")
    assert superblock(machine).state == State.EMPTY
    auto = hibernator(machine, str(tmp_path / "missing.pub"))
    assert auto.recipient() == b"", "auto without a key: plain images"


def test_memfd_secret_memory_refuses_hibernation(machine, tmp_path):
    path = Path(machine.path, "machine.json")
    hardware = json.loads(path.read_text())
    hardware.setdefault("faults", {})["secret_memory"] = "process 4242 (keepassxc)"
    path.write_text(json.dumps(hardware))
    h = hibernator(SimulatedMachine(machine.path), with_key(machine, tmp_path))
    with pytest.raises(RefusedError, match=r"process 4242 \(keepassxc\) holds memfd_secret memory"):
        h.hibernate("shutdown")
    assert superblock(machine).state == State.EMPTY
