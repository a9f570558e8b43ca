"""The image engine: write → verify → restore, and refusal of every kind of damage.

Every refusal found in the records (superblock, handoff, trailer, layout)
must leave the destination byte-for-byte untouched; a damaged chunk found
while restoring discards the image (tests/test_restore_stream.py).
"""

import hashlib
import os
import random
import struct

import pytest
import xxhash
from hypothesis import given, settings, strategies as st

from kjumpd import image
from kjumpd.errors import ImageError
from kjumpd.format import (ALIGN, DATA_OFFSET, HANDOFF_OFFSET, ChunkHeader, Compression, Handoff, Identity,
                           State, FORMAT_VERSION)
from kjumpd.memmap import PAGE_SIZE, Extent, MemoryMap, Range
from kjumpd.physmem import FileMemory
from kjumpd.target import ImageTarget

IDENT = Identity(b"B" * 16, b"M" * 16, "6.12.117", b"L" * 32, b"F" * 32)


def make_memory(path, pages: int, seed: int, zero: float = 0.4) -> bytes:
    """A memory file with zero, random, repetitive and text pages."""
    rnd = random.Random(seed)
    out = bytearray()
    for i in range(pages):
        kind = rnd.random()
        if kind < zero:
            out += bytes(PAGE_SIZE)
        elif kind < zero + 0.2:
            out += rnd.randbytes(PAGE_SIZE)
        elif kind < zero + 0.4:
            out += (b"page %d pattern " % i * PAGE_SIZE)[:PAGE_SIZE]
        else:
            out += bytes([rnd.randrange(4)]) * PAGE_SIZE
    path.write_bytes(bytes(out))
    return bytes(out)


def handoff_for(memmap: MemoryMap, compression=Compression.LZ4, restart="shutdown") -> Handoff:
    return Handoff(IDENT, restart, compression, 1 << 30, 1 << 28, 0x10000, 0x40000, memmap, 3, 123, "test-disk")


def save_image(tmp_path, memory_path, memmap, compression=Compression.LZ4, chunk_pages=image.CHUNK_PAGES):
    img = tmp_path / "image"
    with ImageTarget.create(str(img), image.required_capacity(memmap, chunk_pages)) as target, \
            FileMemory(str(memory_path)) as source:
        sb = image.save(source, target, handoff_for(memmap, compression), jump_back_entry=0xABC0F2,
                        chunk_pages=chunk_pages)
    return img, sb


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def saved(tmp_path):
    """A saved image of 96 pages in 6 chunks of 16, and a destination full of 0xEE."""
    mem = tmp_path / "ram"
    make_memory(mem, 96, seed=7)
    memmap = MemoryMap.from_ranges([Range(0, 96 * PAGE_SIZE)])
    img, sb = save_image(tmp_path, mem, memmap, chunk_pages=16)
    dest = tmp_path / "dest"
    dest.write_bytes(b"\xee" * 96 * PAGE_SIZE)
    return img, sb, mem, dest


def restore_into(img, dest, **kwargs):
    with ImageTarget.open(str(img)) as target, FileMemory(str(dest), writable=True) as memory:
        return image.restore(target, memory, **kwargs)


def assert_refused(img, dest, match):
    before = digest(dest)
    with pytest.raises(ImageError, match=match):
        restore_into(img, dest)
    assert digest(dest) == before, "a refused restore changed the destination"


@pytest.mark.parametrize("compression", list(Compression))
def test_round_trip_every_compression(tmp_path, compression):
    mem = tmp_path / "ram"
    original = make_memory(mem, 700, seed=1)
    memmap = MemoryMap.from_ranges([Range(0, 700 * PAGE_SIZE)])
    img, sb = save_image(tmp_path, mem, memmap, compression)
    assert sb.state == State.SAVED and sb.pages_total == 700 and sb.chunk_count == 3
    assert sb.pages_zero == sum(original[i:i + PAGE_SIZE] == bytes(PAGE_SIZE)
                                for i in range(0, len(original), PAGE_SIZE))
    if compression != Compression.NONE:
        assert sb.stream_bytes < len(original) - sb.pages_zero * PAGE_SIZE
    with ImageTarget.open(str(img), writable=False) as target:
        assert image.verify(target).jump_back_entry == 0xABC0F2
    dest = tmp_path / "dest"
    dest.write_bytes(b"\xff" * len(original))
    after = restore_into(img, dest)
    assert dest.read_bytes() == original
    assert after.state == State.RESTORED and after.restored_ns > 0


@settings(derandomize=True, deadline=None, max_examples=25)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40)), min_size=1, max_size=6),
       st.integers(0, 2 ** 32), st.sampled_from([1, 3, 16, 256]))
def test_random_maps_restore_exactly_the_mapped_pages(tmp_path_factory, spans, seed, chunk_pages):
    tmp = tmp_path_factory.mktemp("rt")
    memmap = MemoryMap(Extent(start * 2, count) for start, count in spans)
    end = max(e.start + e.count for e in memmap.extents)
    mem = tmp / "ram"
    original = make_memory(mem, end, seed)
    img, _ = save_image(tmp, mem, memmap, chunk_pages=chunk_pages)
    dest = tmp / "dest"
    dest.write_bytes(b"\x99" * len(original))
    restore_into(img, dest)
    got = dest.read_bytes()
    mapped = {e.start + i for e in memmap.extents for i in range(e.count)}
    for page in range(end):
        chunk = slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)
        assert got[chunk] == (original[chunk] if page in mapped else b"\x99" * PAGE_SIZE)


def test_consumed_image_is_refused_the_second_time(saved):
    img, _, _, dest = saved
    restore_into(img, dest)
    assert_refused(img, dest, "already restored")


def test_truncation_at_every_chunk_boundary(saved, tmp_path):
    img, sb, _, dest = saved
    data = img.read_bytes()
    boundaries = [DATA_OFFSET]
    with ImageTarget.open(str(img), writable=False) as target:
        for header, _ in image._chunks(target, sb):
            boundaries.append(boundaries[-1] + header.total)
    assert len(boundaries) == sb.chunk_count + 1
    for cut in boundaries + [boundaries[-1] + ALIGN // 2]:
        img.write_bytes(data[:cut])
        assert_refused(img, dest, "truncated|trailer|chunk")


def test_random_byte_flips_in_chunk_data(saved):
    img, sb, _, dest = saved
    data = img.read_bytes()
    rnd = random.Random(42)
    stream_end = DATA_OFFSET + sb.stream_bytes
    for _ in range(40):
        damaged = bytearray(data)
        damaged[rnd.randrange(DATA_OFFSET, stream_end)] ^= 1 << rnd.randrange(8)
        img.write_bytes(bytes(damaged))
        try:
            restore_into(img, dest)
        except ImageError:
            with ImageTarget.open(str(img), writable=False) as target:
                after = image.read_superblock(target)
            assert after.state == State.DISCARDED and after.reason.startswith("restore failed: ")
        else:
            # the flip hit alignment padding, which carries no data: the restore must be exact
            img.write_bytes(data)


def test_every_superblock_and_trailer_byte_change(saved):
    img, sb, _, dest = saved
    data = img.read_bytes()
    trailer_at = DATA_OFFSET + sb.stream_bytes
    # the used part of each record (the rest is checked to be zero)
    for start, length in ((0, 512), (trailer_at, 64)):
        for offset in range(start, start + length, 3):
            damaged = bytearray(data)
            damaged[offset] ^= 0xFF
            img.write_bytes(bytes(damaged))
            assert_refused(img, dest, "")
    img.write_bytes(data)
    restore_into(img, dest)


def test_unknown_version_is_refused(saved):
    img, _, _, dest = saved
    data = bytearray(img.read_bytes())
    data[8:10] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    img.write_bytes(bytes(data))
    assert_refused(img, dest, f"version {FORMAT_VERSION + 1} is not supported")


def test_image_for_another_layout_is_refused(saved, tmp_path):
    img, _, _, _ = saved
    small = tmp_path / "small"
    small.write_bytes(b"\x11" * 50 * PAGE_SIZE)
    assert_refused(img, small, "another layout")
    other = Identity(IDENT.boot_id, IDENT.machine_id, IDENT.kernel_release, b"X" * 32, IDENT.machine_fingerprint)
    dest = saved[3]
    before = digest(dest)
    with pytest.raises(ImageError, match="RAM layout differs"):
        restore_into(img, dest, expect=other)
    assert digest(dest) == before


def test_target_too_small_is_refused_before_writing(tmp_path):
    """Too small for even an image of zero pages (a target that fills up: tests/test_image_size.py)."""
    mem = tmp_path / "ram"
    make_memory(mem, 64, seed=3)
    memmap = MemoryMap.from_ranges([Range(0, 64 * PAGE_SIZE)])
    img = tmp_path / "image"
    ImageTarget.create(str(img), DATA_OFFSET + ALIGN).close()
    before = img.read_bytes()
    with ImageTarget.open(str(img)) as target, FileMemory(str(mem)) as source:
        with pytest.raises(ImageError, match="too small"):
            image.save(source, target, handoff_for(memmap))
    assert img.read_bytes() == before


@pytest.mark.parametrize("state,match", [(State.SAVING, "incomplete"), (State.DISCARDED, "discarded image: gone"),
                                         (State.RESTORING, "interrupted")])
def test_states_that_may_not_be_restored(saved, state, match):
    img, _, _, dest = saved
    with ImageTarget.open(str(img)) as target:
        image.set_state(target, state, reason="gone" if state == State.DISCARDED else "")
    assert_refused(img, dest, match)


def test_save_killed_midway_leaves_an_incomplete_image(tmp_path):
    mem = tmp_path / "ram"
    make_memory(mem, 64, seed=5)
    memmap = MemoryMap.from_ranges([Range(0, 64 * PAGE_SIZE)])

    class Dies(FileMemory):
        def read(self, address, length):
            if address >= 32 * PAGE_SIZE:
                raise OSError("power cut")
            return super().read(address, length)

    img = tmp_path / "image"
    with ImageTarget.create(str(img), image.required_capacity(memmap, 8)) as target:
        with pytest.raises(OSError):
            image.save(Dies(str(mem)), target, handoff_for(memmap), chunk_pages=8)
        assert image.read_superblock(target).state == State.SAVING
    dest = tmp_path / "dest"
    dest.write_bytes(bytes(64 * PAGE_SIZE))
    assert_refused(img, dest, "incomplete")


def test_progress_reaches_the_total(saved, tmp_path):
    img, _, _, dest = saved
    seen = []
    restore_into(img, dest, progress=lambda done, total, phase: seen.append((phase, done, total)))
    assert seen[-1] == ("restore", 96 * PAGE_SIZE, 96 * PAGE_SIZE)
    assert {phase for phase, _, _ in seen} == {"restore"}, "one pass: no separate verification"


def test_image_at_an_offset_leaves_the_bytes_before_it_alone(tmp_path):
    mem = tmp_path / "ram"
    original = make_memory(mem, 40, seed=9)
    memmap = MemoryMap.from_ranges([Range(0, 40 * PAGE_SIZE)])
    img = tmp_path / "disk"
    prefix = os.urandom(1 << 20)
    img.write_bytes(prefix + bytes(image.required_capacity(memmap)))
    with ImageTarget.open_unclaimed(str(img), offset=1 << 20) as target:
        target.initialise()
    with ImageTarget.open(str(img), offset=1 << 20) as target, FileMemory(str(mem)) as source:
        image.save(source, target, handoff_for(memmap))
    assert img.read_bytes()[:1 << 20] == prefix
    dest = tmp_path / "dest"
    dest.write_bytes(bytes(len(original)))
    with ImageTarget.open(str(img), offset=1 << 20) as target, FileMemory(str(dest), writable=True) as out:
        image.restore(target, out)
    assert dest.read_bytes() == original


def forge_header(data: bytearray, position: int, *, stored_len: int | None = None, bitmap_xor: int = 0) -> None:
    """Change the chunk header at ``position`` and re-seal its checksum, as a forger would."""
    size = struct.unpack_from("<I", data, position + 8)[0]
    raw = bytearray(data[position:position + size])
    if stored_len is not None:
        struct.pack_into("<I", raw, 32, stored_len)
    raw[60] ^= bitmap_xor
    raw[52:60] = bytes(8)
    raw[52:60] = struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(raw)))
    data[position:position + size] = raw


def test_swapped_zero_bitmap_bits_with_a_resealed_header_are_refused(tmp_path):
    """Issue 16.5: the stream checksum covers the zero-page bitmaps.

    Swapping a zero page's bit with a stored page's keeps every length and
    payload checksum; with the header's own checksum recomputed, only a
    checksum over the headers that chains to the superblock notices it.
    """
    mem = tmp_path / "ram"
    pages = bytearray(make_memory(mem, 16, seed=3))
    pages[:PAGE_SIZE] = bytes(PAGE_SIZE)                        # page 0 zero, page 1 not
    pages[PAGE_SIZE:2 * PAGE_SIZE] = b"\x42" * PAGE_SIZE
    mem.write_bytes(bytes(pages))
    img, _ = save_image(tmp_path, mem, MemoryMap.from_ranges([Range(0, 16 * PAGE_SIZE)]), chunk_pages=16)
    data = bytearray(img.read_bytes())
    header = ChunkHeader.unpack(bytes(data[DATA_OFFSET:DATA_OFFSET + ALIGN]))
    assert header.zero_bitmap[0] & 0b11 == 0b01
    forge_header(data, DATA_OFFSET, bitmap_xor=0b11)
    assert ChunkHeader.unpack(bytes(data[DATA_OFFSET:DATA_OFFSET + ALIGN])).zero_bitmap[0] & 0b11 == 0b10
    img.write_bytes(bytes(data))
    with ImageTarget.open(str(img), writable=False) as target:
        with pytest.raises(ImageError, match="trailer does not match"):
            image.verify(target, deep=True)
    dest = tmp_path / "dest"
    dest.write_bytes(b"\xee" * 16 * PAGE_SIZE)
    with pytest.raises(ImageError, match="trailer does not match"):
        restore_into(img, dest)
    with ImageTarget.open(str(img), writable=False) as target:
        assert image.read_superblock(target).state == State.DISCARDED


def test_huge_stored_length_is_refused_before_reading(tmp_path, monkeypatch):
    """Issue 16.7: a stored length of 0xffffffff (header re-sealed) never sizes a read.

    On a large target the old reader asked for 4 GiB at once (MemoryError
    under a memory limit); now every read stays within one window.
    """
    mem = tmp_path / "ram"
    make_memory(mem, 16, seed=3)
    img, _ = save_image(tmp_path, mem, MemoryMap.from_ranges([Range(0, 16 * PAGE_SIZE)]), chunk_pages=16)
    data = bytearray(img.read_bytes())
    forge_header(data, DATA_OFFSET, stored_len=0xFFFFFFFF)
    img.write_bytes(bytes(data))
    os.truncate(img, 8 << 30)                                   # sparse: room for the read it asks for
    real_read = ImageTarget.read
    sizes = []

    def recording_read(self, position, length):
        sizes.append(length)
        assert length <= 16 << 20, f"a read of {length} bytes"
        return real_read(self, position, length)

    monkeypatch.setattr(ImageTarget, "read", recording_read)
    with ImageTarget.open(str(img), writable=False) as target:
        with pytest.raises(ImageError, match="chunk 0 .*stored length 4294967295 is impossible"):
            image.verify(target)
    assert max(sizes) <= 16 << 20


def test_alternating_zero_pages_restore_exactly(tmp_path):
    """Every other page zero, in chunks of the largest size: the run decoder puts each page in place."""
    mem = tmp_path / "ram"
    pages = 2 * 1100
    original = b"".join(bytes(PAGE_SIZE) if i % 2 else bytes([i % 251 + 1]) * PAGE_SIZE for i in range(pages))
    mem.write_bytes(original)
    memmap = MemoryMap([Extent(0, 700), Extent(800, pages - 800)])
    img, sb = save_image(tmp_path, mem, memmap, chunk_pages=1024)
    assert sb.pages_zero == (pages - 100) // 2
    dest = tmp_path / "dest"
    dest.write_bytes(b"\xee" * len(original))
    restore_into(img, dest)
    got = dest.read_bytes()
    assert got[:700 * PAGE_SIZE] == original[:700 * PAGE_SIZE]
    assert got[700 * PAGE_SIZE:800 * PAGE_SIZE] == b"\xee" * 100 * PAGE_SIZE
    assert got[800 * PAGE_SIZE:] == original[800 * PAGE_SIZE:]


def test_every_superblock_written_carries_the_target_uuid(saved):
    img, _, _, dest = saved
    with ImageTarget.open(str(img)) as target:
        uuid = target.uuid
        assert uuid != bytes(16) and image.read_superblock(target).target_uuid == uuid
        image.write_superblock(target, image.read_superblock(target).evolve(target_uuid=bytes(16)))
    restore_into(img, dest)
    with ImageTarget.open(str(img), writable=False) as target:
        assert image.read_superblock(target).target_uuid == uuid


def secret_memory(path, pages: int) -> bytes:
    """Pages that each hold a recognisable secret, and do not compress away."""
    rnd = random.Random(11)
    data = b"".join(b"SECRET-%05d-" % i + rnd.randbytes(PAGE_SIZE - 13) for i in range(pages))
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("how", ["restored", "discarded"])
def test_a_consumed_image_loses_its_handoff_and_trailer(tmp_path, how):
    """Issue 16.14: RESTORED or DISCARDED zeroes the handoff (map, identity) and the trailer at once."""
    mem = tmp_path / "ram"
    secret_memory(mem, 64)
    img, sb = save_image(tmp_path, mem, MemoryMap.from_ranges([Range(0, 64 * PAGE_SIZE)]), chunk_pages=16)
    trailer_at = DATA_OFFSET + sb.stream_bytes
    assert any(img.read_bytes()[HANDOFF_OFFSET:HANDOFF_OFFSET + ALIGN])
    if how == "restored":
        dest = tmp_path / "dest"
        dest.write_bytes(bytes(64 * PAGE_SIZE))
        restore_into(img, dest)
    else:
        with ImageTarget.open(str(img)) as target:
            image.discard(target, "test")
    data = img.read_bytes()
    assert not any(data[HANDOFF_OFFSET:DATA_OFFSET])
    assert not any(data[trailer_at:trailer_at + ALIGN])
    with ImageTarget.open(str(img), writable=False) as target:
        info = image.describe(target)
    assert info["state"] == how.upper() and "problem" not in info


def test_wipe_overwrites_every_page_of_a_saved_image(tmp_path):
    """Issue 16.14: after wipe() no stored page is left on the target."""
    mem = tmp_path / "ram"
    secret_memory(mem, 96)
    img, _ = save_image(tmp_path, mem, MemoryMap.from_ranges([Range(0, 96 * PAGE_SIZE)]), chunk_pages=8)
    assert img.read_bytes().count(b"SECRET-") == 96
    with ImageTarget.open(str(img)) as target:
        with pytest.raises(ImageError, match="discard it before wiping"):
            image.wipe(target)
        assert img.read_bytes().count(b"SECRET-") == 96
        image.discard(target, "done with it")
        wiped = image.wipe(target)
    assert img.read_bytes().count(b"SECRET-") == 0
    assert wiped.wiped_ns > 0 and wiped.state == State.DISCARDED


def test_wipe_finds_the_chunks_of_an_interrupted_save(tmp_path):
    """An interrupted save records no stream length: wipe() walks the chunk headers B did write."""
    mem = tmp_path / "ram"
    pages = 4096                        # 16 MiB stored raw: more than one of the writer's 8 MiB blocks
    secret_memory(mem, pages)
    memmap = MemoryMap.from_ranges([Range(0, pages * PAGE_SIZE)])
    img = tmp_path / "image"

    class Dies(FileMemory):
        def read(self, address, length):
            if address >= 3 * pages // 4 * PAGE_SIZE:
                raise OSError("power cut")
            return super().read(address, length)

    with ImageTarget.create(str(img), image.required_capacity(memmap)) as target:
        with pytest.raises(OSError):
            image.save(Dies(str(mem)), target, handoff_for(memmap, Compression.NONE), workers=1)
        image.discard(target, "the save failed")
        assert image.read_superblock(target).stream_bytes == 0
        assert img.read_bytes().count(b"SECRET-") >= 2048
        image.wipe(target)
    assert img.read_bytes().count(b"SECRET-") == 0
