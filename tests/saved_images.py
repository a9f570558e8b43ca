"""A SAVED image on a simulated machine's target, as B leaves it before powering off (for the resume tests)."""

from __future__ import annotations

from kjumpd import image
from kjumpd.format import Compression, Handoff
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
