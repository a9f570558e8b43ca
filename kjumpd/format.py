"""The on-disk formats that pass between the kernels. Byte-level spec: docs/format.md.

Everything is little-endian with a magic number, a format version, explicit
lengths and an xxh3-64 checksum computed with the checksum field set to zero.
A reader refuses a record whose magic, length or checksum is wrong, whose
version is not the one it knows, whose length exceeds the record's bound, or
that sets an *incompatible* flag it does not know. None of this depends on a
kernel version.

Records:
- memory map (``KJMM``): extents or bitmap encoding of the pages to save;
- handoff (``KJHANDOF``): what A tells B right before each jump;
- superblock (``KJSUPERB``): the target's signature and the image's state, identity and summary;
- chunk header (``KJCH``): one independently checksummed piece of the stream;
- trailer (``KJTRAILR``): the end of the stream and a checksum over every chunk header.

Every parser runs in time linear in its input and refuses input larger than
the record's bound before looking at it (the resume path parses what is on
the disk, and a disk may hold anything).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import ClassVar

import xxhash

from .errors import FormatError
from .memmap import PAGE_SIZE, Extent, MemoryMap

# Version 2: the stream checksum covers every chunk header byte (zero-page
# bitmaps included), the superblock carries the target's UUID, strings must be
# valid UTF-8. A reader refuses every other version: an image is only ever
# read by the kjumpd that wrote it, or refused.
FORMAT_VERSION = 2

# Layout of an image target, relative to its offset.
SUPERBLOCK_OFFSET = 0
SUPERBLOCK_SIZE = 4096
HANDOFF_OFFSET = 4096
HANDOFF_MAX = (4 << 20) - HANDOFF_OFFSET
DATA_OFFSET = 4 << 20
ALIGN = 4096

# Bounds a reader enforces before it decodes anything.
CHUNK_HEADER_SIZE = 60
MAX_CHUNK_PAGES = 8 * (ALIGN - CHUNK_HEADER_SIZE)   # header and zero bitmap fit one block
MAX_MAP_EXTENTS = 1 << 16                           # runs of pages in a memory map
MAX_PFN = 1 << 40                                   # 52-bit physical addresses

RESTART_POINTS = ("resume", "suspend", "platform", "shutdown", "reboot")

# Encrypted images (docs/format.md, "Encrypted images"; the cryptography is kjumpd/seal.py).
# Each is an incompatible flag, so a reader that does not know it refuses the record.
HANDOFF_FLAG_SEAL = 0x1        # the handoff ends with the public key B seals the image to
SUPERBLOCK_FLAG_SEALED = 0x1   # the superblock ends with the image's envelope (SEAL_SIZE bytes)
SEAL_SIZE = 128
PUBLIC_KEY_SIZE = 32
AEAD_TAG_SIZE = 16


class State(IntEnum):
    """Superblock states (docs/format.md); an image is restored at most once."""

    EMPTY = 0
    SAVING = 1
    SAVED = 2
    RESTORING = 3
    RESTORED = 4
    DISCARDED = 5
    RESUMING = 6        # C claimed the image for its one resume attempt (docs/format.md, "States")


class Compression(IntEnum):
    """Compression of chunk payloads."""

    NONE = 0
    LZ4 = 1
    ZSTD = 2

    @classmethod
    def parse(cls, name: str) -> Compression:
        """Map ``lz4``/``zstd``/``none`` to a member, with a clear error otherwise."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise FormatError(f"unknown compression {name!r}: use lz4, zstd or none") from None

    @property
    def label(self) -> str:
        """The lower-case name used in configuration and on the command line."""
        return self.name.lower()


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The checksum used everywhere: xxh3, 64 bits."""
    return xxhash.xxh3_64_intdigest(data)


def _cstr(value: str, size: int, what: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\0" in raw:
        raise FormatError(f"{what} may not contain NUL characters")
    if len(raw) > size:
        raise FormatError(f"{what} is longer than {size} bytes")
    return raw.ljust(size, b"\0")


def _uncstr(raw: bytes, what: str) -> str:
    """A NUL-padded UTF-8 field; refuses bytes after the first NUL and invalid UTF-8.

    Strict, so that whatever a reader accepts it can write back unchanged
    (a lenient decode could re-encode longer than the field).
    """
    text, _, padding = raw.partition(b"\0")
    if any(padding):
        raise FormatError(f"{what} has bytes after its end")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid UTF-8") from None


def _restart_code(name: str) -> int:
    if name not in RESTART_POINTS:
        raise FormatError(f"unknown restart point {name!r}: one of {', '.join(RESTART_POINTS)}")
    return RESTART_POINTS.index(name)


def _restart_name(code: int) -> str:
    if code >= len(RESTART_POINTS):
        raise FormatError(f"unknown restart point code {code}")
    return RESTART_POINTS[code]


def set_bit_runs(bitmap: bytes | memoryview, count: int, what: str, limit: int) -> list[tuple[int, int]]:
    """The runs of set bits of an LSB-first bitmap of ``count`` bits, as (first bit, length).

    Linear in the bitmap's size: one conversion to a string of binary digits
    (linear for a power-of-two base) and one C-level search per run. Refuses
    (FormatError) a bit set at or past ``count`` (padding must be clear) and
    more than ``limit`` runs, before building them all.
    """
    value = int.from_bytes(bitmap, "little")
    if value.bit_length() > count:
        raise FormatError(f"{what} has bits set past its end")
    digits = format(value, "b")[::-1]        # digits[i] is bit i
    runs: list[tuple[int, int]] = []
    start = digits.find("1")
    while start >= 0:
        if len(runs) == limit:
            raise FormatError(f"{what} has more than {limit} runs of pages")
        end = digits.find("0", start)
        if end < 0:
            end = len(digits)
        runs.append((start, end - start))
        start = digits.find("1", end)
    return runs


class _Record:
    """Shared framing: magic, version, incompatible flags, length, checksum.

    Subclasses declare ``MAGIC``, ``STRUCT`` (whose first fields are magic,
    version, flags, length and whose last is the checksum), ``KNOWN_FLAGS``
    and ``MAX_LENGTH`` (the fixed part's size for fixed-size records).
    """

    MAGIC: ClassVar[bytes]
    STRUCT: ClassVar[struct.Struct]
    KNOWN_FLAGS: ClassVar[int] = 0
    MAX_LENGTH: ClassVar[int]
    NAME: ClassVar[str]

    @classmethod
    def _seal(cls, fields: tuple, tail: bytes = b"") -> bytes:
        body = cls.STRUCT.pack(*fields, 0) + tail
        return body[: cls.STRUCT.size - 8] + struct.pack("<Q", checksum(body)) + body[cls.STRUCT.size:]

    @classmethod
    def _open(cls, data: bytes | memoryview) -> tuple[tuple, bytes]:
        """Check framing, bounds and checksum; return the fields and the tail after the fixed part."""
        if len(data) < cls.STRUCT.size:
            raise FormatError(f"{cls.NAME} truncated: {len(data)} of {cls.STRUCT.size} bytes")
        fields = cls.STRUCT.unpack_from(data)
        magic, version, flags, length = fields[:4]
        if magic != cls.MAGIC:
            raise FormatError(f"not a kjumpd {cls.NAME} (magic {bytes(magic)!r}, expected {cls.MAGIC!r})")
        check_version(cls.NAME, version)
        if flags & ~cls.KNOWN_FLAGS:
            raise FormatError(f"{cls.NAME} uses unknown incompatible flags {flags & ~cls.KNOWN_FLAGS:#x}")
        if not cls.STRUCT.size <= length <= cls.MAX_LENGTH:
            raise FormatError(f"{cls.NAME} length {length} is out of bounds "
                              f"({cls.STRUCT.size} to {cls.MAX_LENGTH} bytes)")
        if length > len(data):
            raise FormatError(f"{cls.NAME} truncated: {len(data)} of {length} bytes")
        record = bytearray(data[:length])
        stored = struct.unpack_from("<Q", record, cls.STRUCT.size - 8)[0]
        record[cls.STRUCT.size - 8: cls.STRUCT.size] = bytes(8)
        if checksum(record) != stored:
            raise FormatError(f"{cls.NAME} checksum mismatch: the record is corrupt")
        return fields, bytes(record[cls.STRUCT.size:])


def check_version(name: str, version: int) -> None:
    """FormatError unless ``version`` is the one this kjumpd reads, naming both and what to do."""
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{name} format version {version} is not supported (this kjumpd reads version "
            f"{FORMAT_VERSION}): it was written by a newer kjumpd; upgrade kjumpd or discard the image")
    if version < FORMAT_VERSION:
        raise FormatError(
            f"{name} format version {version} is not supported (this kjumpd reads version "
            f"{FORMAT_VERSION}): it was written by an older kjumpd; discard the image")


# --- memory map -------------------------------------------------------------

ENC_EXTENTS = 1
ENC_BITMAP = 2


class MemoryMapRecord(_Record):
    """Binary encodings of a :class:`MemoryMap`; :meth:`encode` picks the smaller."""

    MAGIC = b"KJMM"
    NAME = "memory map"
    # magic, version, flags, length, encoding, page size, count, base pfn, total pages, checksum
    STRUCT = struct.Struct("<4sHHIHxxIQQQQ")
    MAX_LENGTH = HANDOFF_MAX - 304          # what the handoff area leaves after the handoff's fixed part

    @classmethod
    def encode(cls, memmap: MemoryMap, encoding: int | None = None) -> bytes:
        """Encode ``memmap``; by default as extents or bitmap, whichever is smaller.

        FormatError when the map is beyond the format's bounds (a reader would refuse it).
        """
        extents = memmap.extents
        if len(extents) > MAX_MAP_EXTENTS:
            raise FormatError(f"the memory map has {len(extents)} runs of pages, more than the "
                              f"format's {MAX_MAP_EXTENTS}")
        if extents and extents[-1].start + extents[-1].count > MAX_PFN:
            raise FormatError("the memory map reaches beyond the 52-bit physical address space")
        ext_tail = b"".join(struct.pack("<QQ", e.start, e.count) for e in extents)
        base = extents[0].start if extents else 0
        span = (extents[-1].start + extents[-1].count - base) if extents else 0
        bitmap_len = (span + 7) // 8
        if encoding is None:
            encoding = ENC_BITMAP if bitmap_len < len(ext_tail) else ENC_EXTENTS
        if encoding == ENC_EXTENTS:
            tail, count = ext_tail, len(extents)
        elif encoding == ENC_BITMAP:
            bitmap = bytearray(bitmap_len)
            for e in extents:
                _set_bits(bitmap, e.start - base, e.count)
            tail, count = bytes(bitmap), span
        else:
            raise FormatError(f"unknown memory map encoding {encoding}")
        length = cls.STRUCT.size + len(tail)
        if length > cls.MAX_LENGTH:
            raise FormatError(f"the memory map needs {length} bytes, more than the {cls.MAX_LENGTH} "
                              "the handoff area holds")
        return cls._seal((cls.MAGIC, FORMAT_VERSION, 0, length, encoding, PAGE_SIZE, count, base,
                          memmap.total_pages), tail)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> tuple[MemoryMap, int]:
        """Decode a map; returns the map and the record's length in bytes."""
        fields, tail = cls._open(data)
        _, _, _, length, encoding, page_size, count, base, total = fields[:9]
        if page_size != PAGE_SIZE:
            raise FormatError(f"memory map page size {page_size} is not {PAGE_SIZE}")
        if encoding == ENC_EXTENTS:
            if count > MAX_MAP_EXTENTS:
                raise FormatError(f"memory map has {count} extents, more than the format's {MAX_MAP_EXTENTS}")
            if len(tail) != 16 * count:
                raise FormatError("memory map extent list has the wrong length")
            pairs = list(struct.iter_unpack("<QQ", tail))
            for (start, pages), (following, _) in itertools.pairwise(pairs):
                if pages == 0 or following <= start + pages:
                    raise FormatError("memory map extents are empty, overlap, touch or are not in order")
            if pairs and pairs[-1][1] == 0:
                raise FormatError("memory map extents are empty, overlap, touch or are not in order")
            extents = [Extent(start, pages) for start, pages in pairs]
        elif encoding == ENC_BITMAP:
            if len(tail) != (count + 7) // 8:
                raise FormatError("memory map bitmap has the wrong length")
            runs = set_bit_runs(tail, count, "memory map bitmap", MAX_MAP_EXTENTS)
            extents = [Extent(base + first, pages) for first, pages in runs]
        else:
            raise FormatError(f"unknown memory map encoding {encoding}")
        if extents and extents[-1].start + extents[-1].count > MAX_PFN:
            raise FormatError("memory map reaches beyond the 52-bit physical address space")
        memmap = MemoryMap(extents)
        if memmap.total_pages != total:
            raise FormatError("memory map page count does not match its extents")
        return memmap, length


def _set_bits(bitmap: bytearray, first: int, count: int) -> None:
    """Set bits ``first`` … ``first + count - 1`` of an LSB-first bitmap (whole bytes at once)."""
    end = first + count
    while first < end and first % 8:
        bitmap[first >> 3] |= 1 << (first & 7)
        first += 1
    whole = (end - first) // 8
    bitmap[first >> 3:(first >> 3) + whole] = b"\xff" * whole
    first += 8 * whole
    while first < end:
        bitmap[first >> 3] |= 1 << (first & 7)
        first += 1


# --- identity ---------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """Who A is: the image may only be restored into this system on this machine."""

    boot_id: bytes = bytes(16)
    machine_id: bytes = bytes(16)
    kernel_release: str = ""
    layout_fingerprint: bytes = bytes(32)
    machine_fingerprint: bytes = bytes(32)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16s16s64s32s32s")

    def pack(self) -> bytes:
        """The 160-byte identity block shared by handoff and superblock."""
        return self.STRUCT.pack(self.boot_id, self.machine_id,
                                _cstr(self.kernel_release, 64, "kernel release"),
                                self.layout_fingerprint, self.machine_fingerprint)

    @classmethod
    def unpack(cls, raw: bytes) -> Identity:
        """Inverse of :meth:`pack`; FormatError for a kernel release that is not padded UTF-8."""
        boot, machine, release, layout, fp = cls.STRUCT.unpack(raw)
        return cls(boot, machine, _uncstr(release, "kernel release"), layout, fp)

    def mismatch(self, other: Identity) -> str | None:
        """Why an image of ``self`` cannot resume on a machine that is ``other``; None if it can."""
        if self.machine_id != other.machine_id:
            return "the image belongs to another installation (machine id differs)"
        if self.machine_fingerprint != other.machine_fingerprint:
            return "the machine changed since the image was written (CPUs or firmware tables differ)"
        if self.layout_fingerprint != other.layout_fingerprint:
            return "the RAM layout differs from the one the image was written for"
        return None


# --- handoff ----------------------------------------------------------------

@dataclass(frozen=True)
class Handoff:
    """What A tells B right before each jump, at HANDOFF_OFFSET of the image target."""

    identity: Identity
    restart_point: str
    compression: Compression
    region_base: int
    region_size: int
    low_base: int
    low_size: int
    memmap: MemoryMap
    sequence: int = 0
    created_ns: int = 0
    target_id: str = ""
    recipient: bytes = b""      # X25519 public key to seal the image to; empty: not encrypted

    MAGIC: ClassVar[bytes] = b"KJHANDOF"

    def pack(self) -> bytes:
        """Serialise, memory map included."""
        return HandoffRecord.pack(self)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Handoff:
        """Parse and check a handoff; FormatError when it is not valid."""
        return HandoffRecord.unpack(data)


class HandoffRecord(_Record):
    """Framing of :class:`Handoff`."""

    MAGIC = Handoff.MAGIC
    NAME = "handoff"
    # magic ver flags length | seq created | identity(160) | restart compression | region low | target_id | checksum
    STRUCT = struct.Struct("<8sHHI" "QQ" "160s" "II" "QQQQ" "64s" "Q")
    MAX_LENGTH = HANDOFF_MAX
    KNOWN_FLAGS = HANDOFF_FLAG_SEAL

    @classmethod
    def pack(cls, h: Handoff) -> bytes:
        """Serialise a handoff (see :meth:`Handoff.pack`)."""
        if h.recipient and len(h.recipient) != PUBLIC_KEY_SIZE:
            raise FormatError(f"the public key to seal to has {len(h.recipient)} bytes, not {PUBLIC_KEY_SIZE}")
        tail = MemoryMapRecord.encode(h.memmap) + h.recipient
        length = cls.STRUCT.size + len(tail)
        flags = HANDOFF_FLAG_SEAL if h.recipient else 0
        return cls._seal((cls.MAGIC, FORMAT_VERSION, flags, length, h.sequence, h.created_ns,
                          h.identity.pack(), _restart_code(h.restart_point), int(h.compression),
                          h.region_base, h.region_size, h.low_base, h.low_size,
                          _cstr(h.target_id, 64, "target id")), tail)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Handoff:
        """Parse a handoff (see :meth:`Handoff.unpack`)."""
        fields, tail = cls._open(data)
        (_, _, flags, _, seq, created, ident, restart, comp, rbase, rsize, lbase, lsize, target, _) = fields
        memmap, used = MemoryMapRecord.decode(tail)
        recipient = tail[used:]
        if len(recipient) != (PUBLIC_KEY_SIZE if flags & HANDOFF_FLAG_SEAL else 0):
            raise FormatError("handoff length does not match its memory map")
        try:
            compression = Compression(comp)
        except ValueError:
            raise FormatError(f"handoff names unknown compression {comp}") from None
        return Handoff(Identity.unpack(ident), _restart_name(restart), compression, rbase, rsize,
                       lbase, lsize, memmap, seq, created, _uncstr(target, "target id"), recipient)


# --- superblock -------------------------------------------------------------

RESULT_NONE = 0
RESULT_OK = 1
RESULT_FAILED = 2
_RESULTS = (RESULT_NONE, RESULT_OK, RESULT_FAILED)


@dataclass(frozen=True)
class Superblock:
    """The target's first 4 KiB: its signature (UUID) and the image's state, identity, summary, timings."""

    state: State = State.EMPTY
    identity: Identity = field(default_factory=Identity)
    sequence: int = 0
    restart_point: str = "resume"
    result: int = RESULT_NONE
    compression: Compression = Compression.NONE
    chunk_pages: int = 0
    region_base: int = 0
    region_size: int = 0
    low_base: int = 0
    low_size: int = 0
    jump_back_entry: int = 0
    pages_total: int = 0
    pages_zero: int = 0
    chunk_count: int = 0
    stream_bytes: int = 0
    stream_checksum: int = 0
    handoff_checksum: int = 0
    created_ns: int = 0
    saved_ns: int = 0
    restored_ns: int = 0
    save_duration_ns: int = 0
    restore_duration_ns: int = 0
    target_id: str = ""
    reason: str = ""
    target_uuid: bytes = bytes(16)
    wiped_ns: int = 0
    seal: bytes = b""           # the envelope of an encrypted image (kjumpd.seal.Envelope); empty: plain

    def evolve(self, **changes: object) -> Superblock:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def image_bytes(self) -> int:
        """Bytes of image data on the target: superblock, chunk stream and trailer.

        The handoff adds a few KiB inside the reserved header area, which is
        otherwise left unwritten (sparse in a file).
        """
        return SUPERBLOCK_SIZE + self.stream_bytes + ALIGN if self.state != State.EMPTY else 0

    def pack(self) -> bytes:
        """Serialise into exactly SUPERBLOCK_SIZE bytes."""
        return SuperblockRecord.pack(self)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Superblock:
        """Parse; FormatError unless the block holds a valid superblock (a blank block does not)."""
        return SuperblockRecord.unpack(data)


class SuperblockRecord(_Record):
    """Framing of :class:`Superblock`."""

    MAGIC = b"KJSUPERB"
    NAME = "superblock"
    STRUCT = struct.Struct(
        "<8sHHI"          # magic version flags length
        "IIII"            # state restart result compression
        "II"              # chunk_pages page_size
        "Q160s"           # sequence identity
        "QQQQQ"           # region base/size, low base/size, jump-back entry
        "QQQQQQ"          # pages total/zero, chunks, stream bytes, stream checksum, handoff checksum
        "QQQQQ"           # created saved restored, save/restore durations
        "64s256s"         # target id, reason
        "16sQ"            # target uuid, wiped
        "Q")              # checksum
    MAX_LENGTH = STRUCT.size + SEAL_SIZE
    KNOWN_FLAGS = SUPERBLOCK_FLAG_SEALED

    @classmethod
    def pack(cls, s: Superblock) -> bytes:
        """Serialise a superblock (see :meth:`Superblock.pack`)."""
        reason = s.reason.encode("utf-8")[:255].decode("utf-8", "ignore")
        if s.seal and len(s.seal) != SEAL_SIZE:
            raise FormatError(f"the image's envelope has {len(s.seal)} bytes, not {SEAL_SIZE}")
        body = cls._seal((cls.MAGIC, FORMAT_VERSION, SUPERBLOCK_FLAG_SEALED if s.seal else 0,
                          cls.STRUCT.size + len(s.seal),
                          int(s.state), _restart_code(s.restart_point), s.result, int(s.compression),
                          s.chunk_pages, PAGE_SIZE, s.sequence, s.identity.pack(),
                          s.region_base, s.region_size, s.low_base, s.low_size, s.jump_back_entry,
                          s.pages_total, s.pages_zero, s.chunk_count, s.stream_bytes,
                          s.stream_checksum, s.handoff_checksum,
                          s.created_ns, s.saved_ns, s.restored_ns, s.save_duration_ns,
                          s.restore_duration_ns, _cstr(s.target_id, 64, "target id"),
                          _cstr(reason, 256, "reason"), s.target_uuid, s.wiped_ns), s.seal)
        return body.ljust(SUPERBLOCK_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Superblock:
        """Parse a superblock (see :meth:`Superblock.unpack`)."""
        data = bytes(data[:SUPERBLOCK_SIZE])
        if not any(data):
            raise FormatError("no kjumpd superblock: the block is blank (the target is not initialised)")
        fields, seal = cls._open(data)
        if len(seal) != (SEAL_SIZE if fields[2] & SUPERBLOCK_FLAG_SEALED else 0):
            raise FormatError(f"superblock length {fields[3]} is out of bounds ({cls.STRUCT.size} bytes, "
                              f"{cls.STRUCT.size + SEAL_SIZE} for an encrypted image)")
        if any(data[cls.STRUCT.size + len(seal):]):
            raise FormatError("superblock has data after its end: the record is corrupt")
        (_, _, _, _, state, restart, result, comp, chunk_pages, page_size, seq, ident,
         rbase, rsize, lbase, lsize, entry, total, zero, chunks, sbytes, scsum, hcsum,
         created, saved, restored, sdur, rdur, target, reason, uuid, wiped, _) = fields
        if page_size != PAGE_SIZE:
            raise FormatError(f"image page size {page_size} is not {PAGE_SIZE}")
        if chunk_pages > MAX_CHUNK_PAGES:
            raise FormatError(f"superblock chunk size {chunk_pages} pages exceeds the format's {MAX_CHUNK_PAGES}")
        if result not in _RESULTS:
            raise FormatError(f"superblock has unknown result {result}")
        try:
            state_v, comp_v = State(state), Compression(comp)
        except ValueError:
            raise FormatError(f"superblock has unknown state {state} or compression {comp}") from None
        return Superblock(state_v, Identity.unpack(ident), seq, _restart_name(restart), result, comp_v,
                          chunk_pages, rbase, rsize, lbase, lsize, entry, total, zero, chunks, sbytes,
                          scsum, hcsum, created, saved, restored, sdur, rdur, _uncstr(target, "target id"),
                          _uncstr(reason, "reason"), uuid, wiped, seal)


# --- chunks and trailer -----------------------------------------------------

CHUNK_FLAG_STORED_RAW = 0x1    # payload is the raw pages, whatever the image's compression
CHUNK_FLAG_ENCRYPTED = 0x2     # payload is AES-256-GCM ciphertext and tag (AEAD_TAG_SIZE more bytes)


@dataclass(frozen=True)
class ChunkHeader:
    """Header of one chunk: which map pages it covers, which are zero, how its payload is stored.

    A header that :meth:`unpack` accepts is consistent in itself: at most
    MAX_CHUNK_PAGES pages, no padding bit set in the zero bitmap, a raw length
    that matches the bitmap and a stored length no larger than the raw one.
    """

    index: int
    first_page: int
    pages: int
    raw_len: int
    stored_len: int
    raw_checksum: int
    stored_checksum: int
    zero_bitmap: bytes
    flags: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<4sHHI" "IQIIIQQ" "Q")
    MAGIC: ClassVar[bytes] = b"KJCH"

    @property
    def size(self) -> int:
        """Header length including the zero bitmap."""
        return self.STRUCT.size + len(self.zero_bitmap)

    @property
    def total(self) -> int:
        """Bytes the chunk occupies in the stream (chunks are packed back to back)."""
        return self.size + self.stored_len

    @property
    def zero_pages(self) -> int:
        """How many of the chunk's pages are zero (not stored)."""
        return int.from_bytes(self.zero_bitmap, "little").bit_count()

    def zero_runs(self) -> list[tuple[int, int]]:
        """The runs of zero pages as (first page in the chunk, pages), in linear time."""
        return set_bit_runs(self.zero_bitmap, self.pages, f"chunk {self.index} zero bitmap", self.pages)

    def pack(self) -> bytes:
        """Serialise the header and bitmap."""
        return ChunkRecord.pack(self)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> ChunkHeader:
        """Parse and check a chunk header."""
        return ChunkRecord.unpack(data)


class ChunkRecord(_Record):
    """Framing of :class:`ChunkHeader`."""

    MAGIC = ChunkHeader.MAGIC
    NAME = "chunk header"
    STRUCT = ChunkHeader.STRUCT
    KNOWN_FLAGS = CHUNK_FLAG_STORED_RAW | CHUNK_FLAG_ENCRYPTED
    MAX_LENGTH = ALIGN

    @classmethod
    def pack(cls, c: ChunkHeader) -> bytes:
        """Serialise (see :meth:`ChunkHeader.pack`)."""
        return cls._seal((cls.MAGIC, FORMAT_VERSION, c.flags, c.size, c.index, c.first_page, c.pages,
                          c.raw_len, c.stored_len, c.raw_checksum, c.stored_checksum), c.zero_bitmap)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> ChunkHeader:
        """Parse (see :meth:`ChunkHeader.unpack`)."""
        if len(data) >= 12:
            length = struct.unpack_from("<I", data, 8)[0]
            data = data[:length] if length <= len(data) else data
        fields, tail = cls._open(data)
        _, _, flags, _, index, first, pages, raw_len, stored_len, raw_sum, stored_sum, _ = fields
        where = f"chunk {index}"
        if not 0 < pages <= MAX_CHUNK_PAGES:
            raise FormatError(f"{where} covers {pages} pages (1 to {MAX_CHUNK_PAGES} allowed)")
        if len(tail) != (pages + 7) // 8:
            raise FormatError(f"{where} zero bitmap has the wrong length")
        header = ChunkHeader(index, first, pages, raw_len, stored_len, raw_sum, stored_sum, tail, flags)
        if int.from_bytes(tail, "little").bit_length() > pages:
            raise FormatError(f"{where} zero bitmap has bits set past its end")
        if raw_len != (pages - header.zero_pages) * PAGE_SIZE:
            raise FormatError(f"{where} payload length does not match its zero-page bitmap")
        plain_len = stored_len - AEAD_TAG_SIZE if flags & CHUNK_FLAG_ENCRYPTED else stored_len
        if not 0 <= plain_len <= raw_len or (flags & CHUNK_FLAG_STORED_RAW and plain_len != raw_len):
            raise FormatError(f"{where} stored length {stored_len} is impossible for {raw_len} bytes of pages")
        return header


@dataclass(frozen=True)
class Trailer:
    """End of the chunk stream: counts and a checksum over every chunk header."""

    chunk_count: int
    pages_total: int
    pages_zero: int
    stream_bytes: int
    stream_checksum: int

    def pack(self) -> bytes:
        """Serialise into one ALIGN-sized block."""
        return TrailerRecord.pack(self)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Trailer:
        """Parse and check a trailer."""
        return TrailerRecord.unpack(data)


class TrailerRecord(_Record):
    """Framing of :class:`Trailer`."""

    MAGIC = b"KJTRAILR"
    NAME = "trailer"
    STRUCT = struct.Struct("<8sHHI" "QQQQQ" "Q")
    MAX_LENGTH = STRUCT.size

    @classmethod
    def pack(cls, t: Trailer) -> bytes:
        """Serialise (see :meth:`Trailer.pack`)."""
        return cls._seal((cls.MAGIC, FORMAT_VERSION, 0, cls.STRUCT.size, t.chunk_count, t.pages_total,
                          t.pages_zero, t.stream_bytes, t.stream_checksum)).ljust(ALIGN, b"\0")

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Trailer:
        """Parse (see :meth:`Trailer.unpack`)."""
        data = bytes(data[:ALIGN])
        fields, _ = cls._open(data)
        if any(data[cls.STRUCT.size:]):
            raise FormatError("trailer has data after its end: the record is corrupt")
        return Trailer(*fields[4:9])


def stream_checksum_update(state: xxhash.xxh3_64, header: bytes | memoryview) -> None:
    """Fold one chunk into the running stream checksum: its header and zero bitmap, as stored.

    The header holds the payload's checksums and everything that decides
    where the pages go (index, first page, page count, zero bitmap, flags), so
    the trailer's and superblock's stream checksum covers all of it.
    """
    state.update(header)
