"""Every record of docs/format.md: round trips, and refusal of anything damaged."""

import struct

import pytest
import xxhash
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
    st.integers(0, 2), st.sampled_from(list(F.Compression)), st.integers(0, F.MAX_CHUNK_PAGES), u64, u64, u64, u64,
    u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, names, names, st.binary(min_size=16, max_size=16), u64)


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


def zero_bitmap(pages: int, seed: bytes) -> bytes:
    """A zero-page bitmap for ``pages`` pages with the padding bits clear."""
    value = int.from_bytes((seed + bytes(F.MAX_CHUNK_PAGES // 8))[:(pages + 7) // 8], "little")
    return (value & ((1 << pages) - 1)).to_bytes((pages + 7) // 8, "little")


@DETERMINISTIC
@given(st.integers(0, 1 << 20), u64, st.integers(1, F.MAX_CHUNK_PAGES), st.booleans(), u64, u64,
       st.binary(max_size=64), st.integers(0, 1 << 32))
def test_chunk_header_round_trip(index, first, pages, raw, rsum, ssum, seed, shrink):
    bitmap = zero_bitmap(pages, seed)
    raw_len = (pages - int.from_bytes(bitmap, "little").bit_count()) * F.PAGE_SIZE
    stored_len = raw_len if raw else raw_len - shrink % (raw_len + 1)
    header = F.ChunkHeader(index, first, pages, raw_len, stored_len, rsum, ssum, bitmap,
                           F.CHUNK_FLAG_STORED_RAW if raw else 0)
    assert F.ChunkHeader.unpack(header.pack() + b"payload") == header


@DETERMINISTIC
@given(st.builds(F.Trailer, u64, u64, u64, u64, u64))
def test_trailer_round_trip(trailer):
    assert F.Trailer.unpack(trailer.pack()) == trailer


def test_blank_block_is_not_a_superblock():
    with pytest.raises(FormatError, match="blank .*not initialised"):
        F.Superblock.unpack(bytes(F.SUPERBLOCK_SIZE))


def _sample_superblock() -> F.Superblock:
    return F.Superblock(F.State.SAVED, F.Identity(b"b" * 16, b"m" * 16, "6.12.0", b"l" * 32, b"f" * 32), 7,
                        "shutdown", F.RESULT_OK, F.Compression.LZ4, 256, 1 << 30, 1 << 28, 0x10000, 0x40000,
                        0x1234, 1000, 10, 4, 4 << 20, 99, 98, 1, 2, 0, 3, 0, "disk", "", b"u" * 16, 5)


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
    with pytest.raises(FormatError, match=f"version {F.FORMAT_VERSION + 1} is not supported .*newer kjumpd"):
        F.Superblock.unpack(bytes(resealed(data, F.SuperblockRecord)))


@pytest.mark.parametrize("record", [F.SuperblockRecord, F.TrailerRecord, F.ChunkRecord, F.HandoffRecord])
def test_older_format_version_is_refused(record):
    """Version 1 lacked the checksum over the zero-page bitmaps: a reader of version 2 refuses it."""
    data = {F.SuperblockRecord: _sample_superblock().pack(), F.TrailerRecord: F.Trailer(1, 2, 3, 4, 5).pack(),
            F.ChunkRecord: F.ChunkHeader(0, 0, 8, 8 * 4096, 100, 1, 2, bytes(1)).pack(),
            F.HandoffRecord: F.Handoff(F.Identity(), "resume", F.Compression.LZ4, 0, 0, 0, 0,
                                       MemoryMap([Extent(1, 5)])).pack()}[record]
    old = bytearray(data)
    struct.pack_into("<H", old, len(record.MAGIC), 1)
    with pytest.raises(FormatError, match=f"version 1 is not supported .*reads version {F.FORMAT_VERSION}.*older"):
        record.unpack(bytes(resealed(old, record)))


def resealed(data: bytes | bytearray, record: type, length: int | None = None) -> bytes:
    """``data`` with the record's checksum recomputed, as a deliberate forgery would have it."""
    data = bytearray(data)
    end = record.STRUCT.size
    length = length if length is not None else struct.unpack_from("<I", data, len(record.MAGIC) + 4)[0]
    data[end - 8:end] = bytes(8)
    data[end - 8:end] = struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(data[:length])))
    return bytes(data)


def test_chunk_bitmap_padding_bit_is_refused():
    """Issue 16.5: a set padding bit in a zero-page bitmap is an error, even with a valid checksum."""
    header = F.ChunkHeader(0, 0, 3, 2 * 4096, 2 * 4096, 1, 2, bytes([0b001]), 0)
    data = bytearray(header.pack())
    data[60] |= 0b1000                 # page 3 of a 3-page chunk
    with pytest.raises(FormatError, match="bits set past its end"):
        F.ChunkHeader.unpack(resealed(data, F.ChunkRecord))


@pytest.mark.parametrize("pages,raw_len,stored_len,flags,match", [
    (8, 8 * 4096, 0xFFFFFFFF, 0, "stored length 4294967295 is impossible"),
    (8, 8 * 4096, 8 * 4096 - 1, F.CHUNK_FLAG_STORED_RAW, "impossible"),
    (8, 7 * 4096, 7 * 4096, 0, "does not match its zero-page bitmap"),
    (F.MAX_CHUNK_PAGES + 8, 0, 0, 0, "length 4097 is out of bounds"),
])
def test_chunk_header_lengths_are_bounded(pages, raw_len, stored_len, flags, match):
    """Issue 16.6/16.7: a header's lengths are checked against each other and the format's bounds."""
    header = F.ChunkHeader(0, 0, pages, raw_len, stored_len, 1, 2, bytes((pages + 7) // 8), flags)
    data = header.pack()
    with pytest.raises(FormatError, match=match):
        F.ChunkHeader.unpack(data + bytes(F.ALIGN))


def test_fixed_size_records_refuse_another_length():
    """A superblock or trailer whose length field is not its fixed size is refused, checksum or not."""
    for data, record in ((_sample_superblock().pack(), F.SuperblockRecord),
                         (F.Trailer(1, 2, 3, 4, 5).pack(), F.TrailerRecord)):
        longer = bytearray(data)
        struct.pack_into("<I", longer, len(record.MAGIC) + 4, record.STRUCT.size + 8)
        with pytest.raises(FormatError, match="out of bounds"):
            record.unpack(resealed(longer, record, record.STRUCT.size + 8))


def test_strings_must_be_padded_utf8():
    """A kernel release that is not UTF-8 would re-encode longer than its field: refused when read."""
    raw = bytearray(F.Identity(kernel_release="6.1").pack())
    raw[32:32 + 40] = b"\xff" * 40
    with pytest.raises(FormatError, match="kernel release is not valid UTF-8"):
        F.Identity.unpack(bytes(raw))
    raw = bytearray(F.Identity(kernel_release="6.1").pack())
    raw[40] = ord("x")                  # after the NUL that ends "6.1"
    with pytest.raises(FormatError, match="kernel release has bytes after its end"):
        F.Identity.unpack(bytes(raw))


def test_memory_map_bounds():
    """Issue 16.6: at most MAX_MAP_EXTENTS runs, in either encoding, refused while decoding."""
    many = MemoryMap(Extent(2 * i, 1) for i in range(F.MAX_MAP_EXTENTS + 1))
    with pytest.raises(FormatError, match="more than the format's"):
        F.MemoryMapRecord.encode(many)
    limit = MemoryMap(Extent(2 * i, 1) for i in range(F.MAX_MAP_EXTENTS))
    for encoding in (F.ENC_BITMAP, F.ENC_EXTENTS):
        assert F.MemoryMapRecord.decode(F.MemoryMapRecord.encode(limit, encoding))[0] == limit
    # the largest bitmap the handoff area allows, alternating: 16 million runs
    bits = 8 * (F.MemoryMapRecord.MAX_LENGTH - F.MemoryMapRecord.STRUCT.size)
    tail = b"\x55" * (bits // 8)
    record = F.MemoryMapRecord._seal((F.MemoryMapRecord.MAGIC, F.FORMAT_VERSION, 0,
                                      F.MemoryMapRecord.STRUCT.size + len(tail), F.ENC_BITMAP, F.PAGE_SIZE,
                                      bits, 0, bits // 2), tail)
    with pytest.raises(FormatError, match=f"more than {F.MAX_MAP_EXTENTS} runs"):
        F.MemoryMapRecord.decode(record)


@DETERMINISTIC
@given(st.binary(max_size=300), st.integers(0, 2400))
def test_set_bit_runs_match_the_bits(bitmap, count):
    """The linear-time run decoder agrees with a bit-by-bit reading."""
    count = min(count, 8 * len(bitmap))
    bitmap = (int.from_bytes(bitmap, "little") & ((1 << count) - 1)).to_bytes(len(bitmap), "little")
    bits = [bitmap[i >> 3] >> (i & 7) & 1 for i in range(count)]
    expect = []
    for i, bit in enumerate(bits):
        if bit and (i == 0 or not bits[i - 1]):
            expect.append([i, 0])
        if bit:
            expect[-1][1] += 1
    assert F.set_bit_runs(bitmap, count, "test", count + 1) == [tuple(r) for r in expect]


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
