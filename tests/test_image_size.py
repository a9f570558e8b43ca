"""A target sized for the image, not for all of RAM (issue 13, point 4).

A asks for what the image is expected to need (the memory map, the last
image's ratio or a first-image assumption, and a margin), not for every page
stored raw; when memory compresses less than expected, B finds the target
full and the save fails cleanly: the image is discarded with the reason and
A carries on.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from sim_testing import machine_with_token

from kjumpd import image
from kjumpd.daemon.hibernator import (FIRST_IMAGE_RATIO, RATIO_MARGIN, RATIO_SLACK, HibernateSettings,
                                      Hibernator)
from kjumpd.errors import ImageError, RefusedError
from kjumpd.format import DATA_OFFSET, Compression, Handoff, Identity, State
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.memmap import PAGE_SIZE, MemoryMap, Range
from kjumpd.physmem import FileMemory
from kjumpd.target import ImageTarget

IDENT = Identity(b"B" * 16, b"M" * 16, "6.12.0", b"L" * 32, b"F" * 32)
TOKEN = b"image-size-token-0123456789"


def handoff(memmap: MemoryMap) -> Handoff:
    return Handoff(IDENT, "shutdown", Compression.LZ4, 1 << 30, 1 << 28, 0x10000, 0x40000, memmap, 3, 1, "d")


def memory_file(path: Path, pages: int, *, random_share: float, seed: int = 5) -> bytes:
    rnd = random.Random(seed)
    data = b"".join(rnd.randbytes(PAGE_SIZE) if rnd.random() < random_share else bytes([i % 7]) * PAGE_SIZE
                    for i in range(pages))
    path.write_bytes(data)
    return data


def test_expected_capacity_follows_the_ratio():
    memmap = MemoryMap.from_ranges([Range(0, 1000 * PAGE_SIZE)])
    worst = image.required_capacity(memmap)
    assert image.expected_capacity(memmap, 1.0) <= worst
    low, high = image.expected_capacity(memmap, 0.1), image.expected_capacity(memmap, 0.5)
    assert DATA_OFFSET < low < high < worst
    assert high - low == pytest.approx(0.4 * memmap.total_bytes, abs=2)


def test_a_target_smaller_than_all_ram_holds_a_compressible_image(tmp_path):
    pages = 1024
    original = memory_file(tmp_path / "ram", pages, random_share=0.2)
    memmap = MemoryMap.from_ranges([Range(0, pages * PAGE_SIZE)])
    capacity = DATA_OFFSET + pages * PAGE_SIZE // 2
    assert capacity < image.required_capacity(memmap)
    img = tmp_path / "image"
    with ImageTarget.create(str(img), capacity) as target, FileMemory(str(tmp_path / "ram")) as source:
        sb = image.save(source, target, handoff(memmap))
    assert sb.state == State.SAVED and sb.image_bytes <= capacity
    dest = tmp_path / "dest"
    dest.write_bytes(bytes(len(original)))
    with ImageTarget.open(str(img)) as target, FileMemory(str(dest), writable=True) as out:
        image.restore(target, out)
    assert dest.read_bytes() == original


def test_a_full_target_is_a_clean_failed_save(tmp_path):
    pages = 256
    memory_file(tmp_path / "ram", pages, random_share=1.0)
    memmap = MemoryMap.from_ranges([Range(0, pages * PAGE_SIZE)])
    img = tmp_path / "image"
    capacity = DATA_OFFSET + 64 * PAGE_SIZE
    ImageTarget.create(str(img), capacity).close()
    with ImageTarget.open(str(img)) as target, FileMemory(str(tmp_path / "ram")) as source:
        with pytest.raises(ImageError, match=r"image target .* is full: .* of 1.0 MiB of memory"):
            image.save(source, target, handoff(memmap), chunk_pages=16)
    assert os.path.getsize(img) == capacity
    with ImageTarget.open(str(img), writable=False) as target:
        sb = image.read_superblock(target)
    assert sb.state == State.DISCARDED and "is full" in sb.reason


def test_a_target_that_cannot_hold_the_records_is_refused_before_writing(tmp_path):
    memory_file(tmp_path / "ram", 64, random_share=0.0)
    memmap = MemoryMap.from_ranges([Range(0, 64 * PAGE_SIZE)])
    img = tmp_path / "image"
    ImageTarget.create(str(img), DATA_OFFSET).close()
    before = img.read_bytes()
    with ImageTarget.open(str(img)) as target, FileMemory(str(tmp_path / "ram")) as source:
        with pytest.raises(ImageError, match="too small.*nothing was written"):
            image.save(source, target, handoff(memmap))
    assert img.read_bytes() == before


# --- A's check and B's failure on the simulated machine -------------------------------------

RAM = 32 << 20


@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    return machine_with_token(str(tmp_path / "machine"), TOKEN, RAM)


def hibernator(m: SimulatedMachine) -> Hibernator:
    return Hibernator(m, HibernateSettings(image_target=m.target_path, kernel=m.kernel_path,
                                           initrd=m.initrd_path, region_size=4 << 20, compression="lz4"))


def map_bytes(h: Hibernator) -> int:
    return h._plan().memmap.total_bytes


def test_the_first_image_needs_the_documented_share_of_memory_not_all_of_it(machine):
    h = hibernator(machine)
    need = image.expected_capacity(h._plan().memmap, FIRST_IMAGE_RATIO)
    assert need < image.required_capacity(h._plan().memmap)
    os.truncate(machine.target_path, need)
    assert h.problems() == []
    os.truncate(machine.target_path, need - PAGE_SIZE)
    assert any("too small" in p and "expected to need" in p for p in h.problems())


def test_the_last_images_ratio_sizes_the_next_one(machine):
    h = hibernator(machine)
    result = h.hibernate("resume")          # a fresh machine: nearly every page is zero
    assert result.success, result.reason
    ratio = result.image_bytes / map_bytes(h)
    assert ratio < 0.05
    need = image.expected_capacity(h._plan().memmap, min(1.0, ratio * RATIO_MARGIN + RATIO_SLACK))
    assert need < image.expected_capacity(h._plan().memmap, FIRST_IMAGE_RATIO)
    os.truncate(machine.target_path, need + PAGE_SIZE)
    assert h.problems() == [], "the small last image lets a small target do"
    assert h.estimated_image_size() <= need + PAGE_SIZE
    os.truncate(machine.target_path, DATA_OFFSET + 2 * PAGE_SIZE)
    with pytest.raises(RefusedError, match="too small"):
        h.hibernate("resume")


def test_b_running_out_of_space_fails_the_save_cleanly(machine):
    with machine.physical_memory(writable=True) as ram:        # memory that does not compress
        ram.write(8 << 20, random.Random(3).randbytes(20 << 20))
    h = hibernator(machine)
    need = image.expected_capacity(h._plan().memmap, FIRST_IMAGE_RATIO)
    os.truncate(machine.target_path, need)
    assert h.problems() == []
    result = h.hibernate("shutdown")
    assert not result.success and result.result == "failed"
    assert "is full" in result.reason, result.reason
    assert machine.running == "A" and "power-off" not in [e["event"] for e in machine.events()]
    with machine.physical_memory() as ram:
        assert ram.read(machine.workload_area()[0], len(TOKEN)) == TOKEN, "A carries on with its memory"
    with ImageTarget.open(machine.target_path, writable=False) as target:
        sb = image.read_superblock(target)
    assert sb.state == State.DISCARDED and "is full" in sb.reason
