"""RAM layouts, the B region and the save map, from recorded /proc/iomem texts."""

import os

import pytest

from kjumpd.errors import FormatError
from kjumpd.memmap import (
    MemoryMap,
    Range,
    choose_region,
    layout_fingerprint,
    parse_iomem,
    parse_ranges,
    read_system_ram,
    save_map,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


def layout(name: str) -> list[Range]:
    with open(os.path.join(DATA, f"iomem-{name}.txt"), encoding="ascii") as handle:
        return parse_iomem(handle.read())


def test_vm_layout_matches_the_research_run():
    ram = layout("qemu-1g")
    assert ram == [Range(0x1000, 0x9fc00), Range(0x100000, 0x3ffda000)]
    region = choose_region(ram, 256 << 20)
    assert region == Range(0x2ff00000, 0x3ff00000)
    saved = save_map(ram, region)
    assert [str(r) for r in saved.ranges()] == [
        "0x1000-0xffff", "0x50000-0x9efff", "0x100000-0x2fefffff", "0x3ff00000-0x3ffd9fff"]


def test_ram_above_4g_is_kept():
    ram = layout("qemu-4g")
    region = choose_region(ram, 256 << 20)
    assert region.end == 0x140000000
    saved = save_map(ram, region)
    assert saved.ranges()[-1] == Range(0x100000000, 0x130000000)
    assert Range(0x100000, 0xbffd7000) in saved.ranges()


def test_laptop_with_holes_skips_reserved_and_acpi_memory():
    ram = layout("laptop")
    assert len(ram) == 6
    saved = save_map(ram, choose_region(ram, 512 << 20))
    for acpi in (Range(0x6b1c5000, 0x6b1c6000), Range(0x75f8e000, 0x75ffe000)):
        assert all(r.end <= acpi.start or r.start >= acpi.end for r in saved.ranges())


def test_two_socket_server_with_a_terabyte():
    ram = layout("server-1t")
    total = sum(r.size for r in ram)
    assert total > 1000 << 30
    saved = save_map(ram, choose_region(ram, 1 << 30))
    assert saved.total_bytes == pytest.approx(total - (1 << 30) - (256 << 10), abs=1 << 20)
    assert len(saved.extents) <= 6


def test_region_may_not_exceed_half_of_ram():
    with pytest.raises(FormatError, match="half of RAM"):
        choose_region(layout("qemu-1g"), 768 << 20)


def test_region_needs_a_contiguous_range():
    ram = [Range(0, 200 << 20), Range(1 << 30, (1 << 30) + (200 << 20)), Range(1 << 32, (1 << 32) + (200 << 20))]
    with pytest.raises(FormatError, match="no RAM range .* 256 MiB"):
        choose_region(ram, 256 << 20)


def test_region_below_a_small_top_range_under_uefi():
    """OVMF (and UEFI firmware generally) leaves only a few MiB of RAM between
    its reserved and ACPI areas at the top of low memory: the region goes to
    the top of the highest range that holds it (a 1 GiB QEMU guest with OVMF)."""
    ram = [Range(0x0, 0xa0000), Range(0x100000, 0x806000), Range(0x808000, 0x810000),
           Range(0x900000, 0x3ea8a000), Range(0x3eb8c000, 0x3f4ec000), Range(0x3f7fe000, 0x3feec000)]
    assert choose_region(ram, 256 << 20) == Range(0x2ea00000, 0x3ea00000)
    # a top range that is big enough is still the one used
    assert choose_region(ram, 4 << 20) == Range(0x3fa00000, 0x3fe00000)


def test_fingerprint_tells_layouts_apart():
    assert layout_fingerprint(layout("qemu-1g")) == layout_fingerprint(list(reversed(layout("qemu-1g"))))
    assert layout_fingerprint(layout("qemu-1g")) != layout_fingerprint(layout("qemu-4g"))


def test_bad_iomem_line_is_reported_with_its_number():
    with pytest.raises(FormatError, match="line 2"):
        parse_iomem("00001000-0009fbff : System RAM\nnonsense\n")


def test_parse_ranges_and_errors():
    assert parse_ranges("0x1000-0x1fff,0x2000-0x2fff") == [Range(0x1000, 0x3000)]
    with pytest.raises(FormatError, match="START-END"):
        parse_ranges("0x1000")


def test_firmware_memmap_preferred(tmp_path):
    for i, (start, end, kind) in enumerate([(0x1000, 0x9efff, "System RAM"), (0xf0000, 0xfffff, "Reserved"),
                                             (0x100000, 0x7fffffff, "System RAM")]):
        entry = tmp_path / "sys/firmware/memmap" / str(i)
        entry.mkdir(parents=True)
        (entry / "start").write_text(f"{start:#x}\n")
        (entry / "end").write_text(f"{end:#x}\n")
        (entry / "type").write_text(kind + "\n")
    assert read_system_ram(str(tmp_path)) == [Range(0x1000, 0x9f000), Range(0x100000, 0x80000000)]


def test_runs_cross_extent_boundaries():
    memmap = MemoryMap.from_ranges([Range(0, 3 * 4096), Range(10 * 4096, 14 * 4096)])
    assert list(memmap.runs(2, 3)) == [(2 * 4096, 0, 1), (10 * 4096, 1, 2)]
