"""Every record of docs/format.md: round trips, and refusal of anything damaged."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from kjumpd import format as F
from kjumpd.errors import FormatError
from kjumpd.memmap import Extent, MemoryMap

names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
extents = st.lists(st.tuples(st.integers(0, 1 << 36), st.integers(1, 1 << 20)), max_size=40)
memmaps = extents.map(lambda xs: MemoryMap(Extent(a, n) for a, n in xs))
identities = st.builds(F.Identity, st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
                       names, st.binary(min_size=32, max_size=32),
                       st.binary(min_size=32, max_size=32))
u64 = st.integers(0, (1 << 64) - 1)
# Deterministic runs (CI must not depend on luck) and no per-example deadline on a loaded machine.
DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=60)
handoffs = st.builds(F.Handoff, identities, st.sampled_from(F.RESTART_POINTS), st.sampled_from(list(F.Compression)),
                     u64, u64, u64, u64, memmaps, u64, u64, names)
superblocks = st.builds(
    F.Superblock, st.sampled_from(list(F.State)), identities, u64, st.sampled_from(F.RESTART_POINTS),
    st.integers(0, 2), st.sampled_from(list(F.Compression)), st.integers(0, 1 << 31), u64, u64, u64, u64, u64,
    u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, names, names)


@given(memmaps, st.sampled_from([None, F.ENC_EXTENTS, F.ENC_BITMAP]))
@DETERMINISTIC
def test_memory_map_round_trip(memmap, encoding):
    if encoding == F.ENC_BITMAP and memmap.extents and (
            memmap.extents[-1].start + memmap.extents[-1].count - memmap.extents[0].start) > 1 << 22:
        encoding = F.ENC_EXTENTS        # keep bitmaps of sparse random maps small
    data = F.MemoryMapRecord.encode(memmap, encoding)
    decoded, length = F.MemoryMapRecord.decode(data)
    assert decoded == memmap and length == len(data)


def test_smaller_encoding_is_chosen():
    dense = MemoryMap(Extent(p, 1) for p in range(0, 4096, 2))          # every other page
    assert struct.unpack_from("<H", F.MemoryMapRecord.encode(dense), 12)[0] == F.ENC_BITMAP
    sparse = MemoryMap([Extent(0x100, 1 << 20), Extent(1 << 30, 1 << 20)])
    assert struct.unpack_from("<H", F.MemoryMapRecord.encode(sparse), 12)[0] == F.ENC_EXTENTS


@given(handoffs)
@DETERMINISTIC
def test_handoff_round_trip(handoff):
    assert F.Handoff.unpack(handoff.pack()) == handoff


@given(superblocks)
@DETERMINISTIC
def test_superblock_round_trip(sb):
    data = sb.pack()
    assert len(data) == F.SUPERBLOCK_SIZE
    back = F.Superblock.unpack(data)
    assert back == sb.evolve(reason=back.reason) and sb.reason.encode()[:255].startswith(back.reason.encode())


@DETERMINISTIC
@given(st.integers(0, 1 << 20), u64, st.integers(1, 256), u64, u64, u64, u64, st.binary(max_size=32))
def test_chunk_header_round_trip(index, first, pages, raw_len, stored_len, rsum, ssum, bitmap):
    bitmap = (bitmap + bytes(32))[:(pages + 7) // 8]
    header = F.ChunkHeader(index, first, pages, raw_len & 0xFFFFFFFF, stored_len & 0xFFFFFFFF, rsum, ssum, bitmap,
                           F.CHUNK_FLAG_STORED_RAW)
    assert F.ChunkHeader.unpack(header.pack() + b"payload") == header


@DETERMINISTIC
@given(st.builds(F.Trailer, u64, u64, u64, u64, u64))
def test_trailer_round_trip(trailer):
    assert F.Trailer.unpack(trailer.pack()) == trailer


def test_blank_superblock_is_empty():
    assert F.Superblock.unpack(bytes(F.SUPERBLOCK_SIZE)).state == F.State.EMPTY


def _sample_superblock() -> F.Superblock:
    return F.Superblock(F.State.SAVED, F.Identity(b"b" * 16, b"m" * 16, "6.12.0", b"l" * 32, b"f" * 32), 7,
                        "shutdown", F.RESULT_OK, F.Compression.LZ4, 256, 1 << 30, 1 << 28, 0x10000, 0x40000,
                        0x1234, 1000, 10, 4, 4 << 20, 99, 98, 1, 2, 0, 3, 0, "disk", "")


@pytest.mark.parametrize("record", ["superblock", "trailer"])
def test_every_single_byte_change_is_refused(record):
    data = _sample_superblock().pack() if record == "superblock" else F.Trailer(4, 1000, 10, 4 << 20, 99).pack()
    parse = F.Superblock.unpack if record == "superblock" else F.Trailer.unpack
    parse(data)
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x5A
        with pytest.raises(FormatError):
            parse(bytes(damaged))


def test_unknown_version_is_refused_with_a_clear_message():
    data = bytearray(_sample_superblock().pack())
    struct.pack_into("<H", data, 8, F.FORMAT_VERSION + 1)
    with pytest.raises(FormatError, match="version 2 is not supported"):
        F.Superblock.unpack(bytes(data))


def test_unknown_incompatible_flag_is_refused():
    header = F.ChunkHeader(0, 0, 8, 4096, 10, 1, 2, b"\x00", 0)
    data = bytearray(header.pack())
    struct.pack_into("<H", data, 6, 0x80)
    with pytest.raises(FormatError, match="unknown incompatible flags"):
        F.ChunkHeader.unpack(bytes(data))


def test_truncated_handoff_is_refused():
    handoff = F.Handoff(F.Identity(), "resume", F.Compression.LZ4, 0, 0, 0, 0, MemoryMap([Extent(1, 5)]))
    data = handoff.pack()
    for cut in (0, 10, len(data) - 1):
        with pytest.raises(FormatError):
            F.Handoff.unpack(data[:cut])


def test_unknown_restart_point_and_compression_names():
    with pytest.raises(FormatError, match="restart point"):
        _sample_superblock().evolve(restart_point="hover").pack()
    with pytest.raises(FormatError, match="lz4, zstd or none"):
        F.Compression.parse("gzip")
