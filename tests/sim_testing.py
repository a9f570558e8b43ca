"""Helpers for tests on the simulated machine: a machine whose RAM holds a token, its superblock, a SAVED image."""

from __future__ import annotations

from kjumpd import image
from kjumpd.format import Compression, Handoff, Superblock
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.memmap import DEFAULT_LOW, Range, choose_region, save_map
from kjumpd.target import ImageTarget


def save_image_of_itself(machine: SimulatedMachine, restart_point: str = "shutdown", sequence: int = 7) -> None:
    """Save the machine's own memory to its target: a SAVED image of this machine, this layout, this disk."""
    ram = machine.system_ram()
    region = choose_region(ram, 4 << 20)
    low = Range(DEFAULT_LOW[0], DEFAULT_LOW[0] + DEFAULT_LOW[1])
    handoff = Handoff(machine.identity(), restart_point, Compression.NONE, region.start, region.size, low.start,
                      low.size, save_map(ram, region, low), sequence)
    with ImageTarget.open(machine.target_path) as target, machine.physical_memory() as memory:
        image.write_handoff(target, handoff)
        image.save(memory, target, handoff, jump_back_entry=0x2000FB)


def machine_with_token(path: str, token: bytes, ram_size: int = 32 << 20) -> SimulatedMachine:
    """A 2-CPU machine whose workload area holds ``token``: the test sees whether A's memory came back."""
    machine = SimulatedMachine.create(path, ram_size=ram_size, cpus=2)
    machine.wake_timeout = 120
    with machine.physical_memory(writable=True) as ram:
        ram.write(machine.workload_area()[0], token)
    return machine


def superblock(machine: SimulatedMachine) -> Superblock:
    """The image superblock on the machine's target, read without opening it for writing."""
    with ImageTarget.open(machine.target_path, writable=False) as target:
        return image.read_superblock(target)
