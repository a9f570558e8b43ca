"""The image engine: save physical memory to an image target, verify it, restore it.

An image is a superblock, the handoff A wrote before the jump (which holds the
memory map), a stream of independently checksummed chunks and a trailer; the
bytes are specified in docs/format.md and packed by :mod:`kjumpd.format`.
Every target is opened through :meth:`ImageTarget.open`, which accepts only
a target kjumpd initialised and holds; every superblock written here carries
that target's UUID.

Saving runs the chunk encoder on a thread pool (the compressors and ``pread``
release the GIL, so both CPU cores work) while the calling thread writes the
chunks in order. Restoring reads every byte once: it checks the records that
decide whether the image may be used at all (superblock, handoff, trailer,
identity, layout) and writes nothing if they are wrong; then it marks the
image ``RESTORING`` and checks each chunk just before writing its pages. A
chunk found damaged after writing began discards the image (the destination
is then partly written: in R, A's memory was lost anyway and the machine
boots normally). Each state change is durable before the next step.

A consumed image (``RESTORED`` or ``DISCARDED``) loses its handoff and trailer
at once (:func:`set_state`); :func:`wipe` overwrites the chunk stream, which
holds A's RAM (docs/format.md, "What a consumed image leaves behind").
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import lz4.block
import xxhash
import zstandard

from . import seal as sealing
from .errors import FormatError, ImageError
from .format import (AEAD_TAG_SIZE, ALIGN, CHUNK_FLAG_ENCRYPTED, CHUNK_FLAG_STORED_RAW, CHUNK_HEADER_SIZE,
                     DATA_OFFSET, HANDOFF_MAX, HANDOFF_OFFSET, MAX_CHUNK_PAGES, RESULT_OK, SUPERBLOCK_OFFSET,
                     SUPERBLOCK_SIZE, ChunkHeader, Compression, Handoff, Identity, State, Superblock, Trailer,
                     checksum, stream_checksum_update)
from .memmap import PAGE_SIZE, MemoryMap
from .physmem import PhysicalMemory
from .target import ImageTarget

CHUNK_PAGES = 256                      # 1 MiB of memory per chunk
WORKERS = max(2, min(4, os.cpu_count() or 2))
_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_CHUNK = bytes(CHUNK_PAGES * PAGE_SIZE)
_ZERO_VIEW = memoryview(_ZERO_CHUNK)        # slicing a view does not copy
_READ_WINDOW = 16 << 20

Progress = Callable[[int, int, str], None]
T = TypeVar("T")
R = TypeVar("R")


def required_capacity(memmap: MemoryMap, chunk_pages: int = CHUNK_PAGES) -> int:
    """Worst-case bytes an image of ``memmap`` needs: every page stored raw, plus headers."""
    chunks = -(-memmap.total_pages // chunk_pages)
    return DATA_OFFSET + memmap.total_bytes + chunks * (ALIGN + AEAD_TAG_SIZE) + ALIGN


def expected_capacity(memmap: MemoryMap, ratio: float, chunk_pages: int = CHUNK_PAGES) -> int:
    """Bytes an image of ``memmap`` needs when its pages take ``ratio`` of their size on disk.

    The header area, every chunk's header, zero bitmap and authentication
    tag, the padding and the trailer are counted exactly; ``ratio`` (0 to 1)
    scales only the pages. With ratio 0 it is the least any image of the map
    needs (every page zero).
    """
    chunks = -(-memmap.total_pages // chunk_pages)
    header = CHUNK_HEADER_SIZE + (chunk_pages + 7) // 8 + AEAD_TAG_SIZE
    pages = math.ceil(memmap.total_bytes * min(1.0, max(0.0, ratio)))
    return DATA_OFFSET + pages + chunks * header + 2 * ALIGN


# --- records ------------------------------------------------------------------

def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % ALIGN)


def read_superblock(target: ImageTarget) -> Superblock:
    """Read the superblock; FormatError if it is not a valid one."""
    raw = target.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
    if len(raw) < SUPERBLOCK_SIZE:
        raise FormatError(f"image target {target.path} is too small to hold a superblock")
    return Superblock.unpack(raw)


def write_superblock(target: ImageTarget, superblock: Superblock) -> None:
    """Write the superblock, stamped with the target's UUID, and make it durable."""
    target.write(SUPERBLOCK_OFFSET, superblock.evolve(target_uuid=target.uuid).pack())
    target.sync()


CONSUMED = (State.RESTORED, State.DISCARDED)
# What restore() and verify() accept: a saved image, also once C claimed it
# for its one resume attempt (RESUMING), which R then restores.
RESUMABLE = (State.SAVED, State.RESUMING)


def set_state(target: ImageTarget, state: State, **fields: object) -> Superblock:
    """Change the superblock's state (and other fields), durably; returns the new superblock.

    Entering a consumed state (RESTORED, DISCARDED) also overwrites the
    handoff area and the trailer, once the new state is durable: the image
    can no longer be reassembled, and the memory map and identity are gone.
    """
    superblock = read_superblock(target).evolve(state=state, **fields)
    if state in CONSUMED and superblock.seal:
        superblock = superblock.evolve(seal=sealing.destroyed_seal(superblock.seal))
    write_superblock(target, superblock)
    if state in CONSUMED:
        _scrub_headers(target, superblock)
    return superblock


def _scrub_headers(target: ImageTarget, superblock: Superblock) -> None:
    """Zero the handoff area and, where the superblock says, the trailer; durably."""
    target.zero(HANDOFF_OFFSET, DATA_OFFSET - HANDOFF_OFFSET)
    trailer_at = DATA_OFFSET + superblock.stream_bytes
    if superblock.stream_bytes and trailer_at + ALIGN <= target.capacity:
        target.zero(trailer_at, ALIGN)
    target.sync()


def discard(target: ImageTarget, reason: str) -> Superblock:
    """Mark an image DISCARDED so that no boot resumes from it."""
    return set_state(target, State.DISCARDED, reason=reason)


def write_handoff(target: ImageTarget, handoff: Handoff) -> int:
    """Write the handoff into the header area, durably; returns its checksum."""
    data = handoff.pack()
    target.write(HANDOFF_OFFSET, _padded(data))
    target.sync()
    return checksum(data)


def read_handoff(target: ImageTarget) -> tuple[Handoff, int]:
    """Read and check the handoff; returns it with the checksum of its bytes."""
    head = target.read(HANDOFF_OFFSET, ALIGN)
    if len(head) < 16:
        raise FormatError(f"image target {target.path} is too small to hold a handoff")
    length = int.from_bytes(head[12:16], "little")
    if length > HANDOFF_MAX:
        raise FormatError(f"handoff length {length} exceeds the header area: the record is corrupt")
    data = head if length <= len(head) else target.read(HANDOFF_OFFSET, length)
    handoff = Handoff.unpack(data)
    return handoff, checksum(data[:length])


# --- helpers --------------------------------------------------------------------

def _ordered_map(pool: ThreadPoolExecutor, func: Callable[[T], R], items: Iterable[T],
                 depth: int) -> Iterator[R]:
    """Like ``pool.map`` but with at most ``depth`` items in flight (bounded memory)."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class _Codec:
    """Per-thread compressor and decompressor objects (zstd's are not thread-safe)."""

    def __init__(self, compression: Compression, cipher: sealing.ImageCipher | None = None) -> None:
        self.compression = compression
        self.cipher = cipher            # set for an encrypted image: every payload is sealed with it
        self._local = threading.local()

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
            self._local.zstd = pair
        return pair

    def compress(self, raw: bytes) -> bytes:
        """Compress a payload (may return something no smaller; the caller decides)."""
        if self.compression == Compression.LZ4:
            return lz4.block.compress(raw, store_size=False)
        if self.compression == Compression.ZSTD:
            return self._zstd()[0].compress(raw)
        return raw

    def decompress(self, stored: bytes | memoryview, raw_len: int) -> bytes:
        """Decompress a payload of known raw length; FormatError if it does not decode."""
        try:
            if self.compression == Compression.LZ4:
                raw = lz4.block.decompress(stored, uncompressed_size=raw_len)
            elif self.compression == Compression.ZSTD:
                raw = self._zstd()[1].decompress(stored, max_output_size=raw_len)
            else:
                raw = stored
        except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
            raise FormatError(f"payload does not decompress: {exc}") from exc
        if len(raw) != raw_len:
            raise FormatError(f"payload decompresses to {len(raw)} bytes, expected {raw_len}")
        return raw


# --- save ---------------------------------------------------------------------------

@dataclass
class _Encoded:
    header: ChunkHeader
    packed: bytes                       # the header as written (folded into the stream checksum)
    stored: bytes                       # the payload as written
    zero_pages: int


def _nonzero_runs(raw: bytes, pages: int) -> tuple[bytearray, list[tuple[int, int]], int]:
    """Zero-page bitmap, runs of non-zero pages as (first, end) page numbers, and the zero count.

    Comparing a ``bytes`` slice with a zero page is a memcmp; a memoryview
    comparison would go byte by byte.
    """
    bitmap = bytearray((pages + 7) // 8)
    runs: list[tuple[int, int]] = []
    zeros = 0
    start = None
    for i in range(pages):
        if raw[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] == _ZERO_PAGE:
            bitmap[i >> 3] |= 1 << (i & 7)
            zeros += 1
            if start is not None:
                runs.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        runs.append((start, pages))
    return bitmap, runs, zeros


def _encode_chunk(source: PhysicalMemory, memmap: MemoryMap, codec: _Codec, chunk_pages: int,
                  index: int) -> _Encoded:
    first = index * chunk_pages
    pages = min(chunk_pages, memmap.total_pages - first)
    parts = [source.read(addr, count * PAGE_SIZE) for addr, _, count in memmap.runs(first, pages)]
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(raw) == len(_ZERO_CHUNK) and raw == _ZERO_CHUNK:
        bitmap, runs, zeros = bytearray(b"\xff" * (pages // 8)), [], pages
    else:
        bitmap, runs, zeros = _nonzero_runs(raw, pages)
    if not zeros:
        payload: bytes = raw
    else:
        view = memoryview(raw)
        payload = b"".join(view[a * PAGE_SIZE:b * PAGE_SIZE] for a, b in runs)
    stored, flags = payload, 0
    if payload and codec.compression != Compression.NONE:
        compressed = codec.compress(payload)
        if len(compressed) < len(payload):
            stored = compressed
        else:
            flags = CHUNK_FLAG_STORED_RAW
    if codec.cipher is not None:        # no checksum of the plain pages: it would leak them
        header = ChunkHeader(index, first, pages, len(payload), len(stored) + AEAD_TAG_SIZE, 0, 0,
                             bytes(bitmap), flags | CHUNK_FLAG_ENCRYPTED)
        stored = codec.cipher.encrypt_chunk(header, stored)
        header = replace(header, stored_checksum=checksum(stored))
    else:
        header = ChunkHeader(index, first, pages, len(payload), len(stored), checksum(payload),
                             checksum(stored), bytes(bitmap), flags)
    return _Encoded(header, header.pack(), stored, zeros)


class _StreamWriter:
    """Packs chunks back to back and writes them in large aligned blocks.

    Block devices are written with ``O_DIRECT``, which needs aligned positions
    and lengths; the unaligned tail waits in the buffer for the next chunk.
    Data is flushed every ``SYNC_EVERY`` bytes so the final flush is short
    and overlaps with the encoders still working.
    """

    BLOCK = 8 << 20
    SYNC_EVERY = 64 << 20

    def __init__(self, target: ImageTarget, position: int) -> None:
        self.target = target
        self.position = position        # where the buffer's first byte goes
        self.buffer = bytearray()
        self._unsynced = 0

    @property
    def end(self) -> int:
        """Stream position after everything added so far."""
        return self.position + len(self.buffer)

    def add(self, parts: list[bytes | memoryview]) -> None:
        """Append a chunk's pieces; write out whole blocks."""
        for part in parts:
            self.buffer += part
        if len(self.buffer) >= self.BLOCK:
            self._write(len(self.buffer) - len(self.buffer) % ALIGN)

    def _write(self, length: int) -> None:
        self.target.write(self.position, memoryview(self.buffer)[:length])
        del self.buffer[:length]
        self.position += length
        self._unsynced += length
        if self._unsynced >= self.SYNC_EVERY:
            self.target.sync()
            self._unsynced = 0

    def finish(self) -> int:
        """Pad the last block with zeros, write it; returns the aligned end of the stream."""
        self.buffer += bytes(-len(self.buffer) % ALIGN)
        if self.buffer:
            self._write(len(self.buffer))
        return self.position


def save(source: PhysicalMemory, target: ImageTarget, handoff: Handoff, *, jump_back_entry: int = 0,
         progress: Progress | None = None, chunk_pages: int = CHUNK_PAGES,
         workers: int = WORKERS) -> Superblock:
    """Save the pages of ``handoff.memmap`` from ``source`` into ``target``.

    The handoff must already be on the target (A wrote it) or is written here.
    Refuses before writing anything when the target cannot hold even an
    image of zero pages; a target that fills up during the save (the memory
    compressed less than its owner expected) discards the image with the
    reason and raises ImageError, nothing written past its end. Returns the
    final (SAVED) superblock.
    """
    started = time.monotonic()
    memmap = handoff.memmap
    if not memmap.total_pages:
        raise ImageError("the memory map is empty: there is nothing to save; nothing was written")
    if not 0 < chunk_pages <= MAX_CHUNK_PAGES:
        raise ValueError(f"chunk size {chunk_pages} out of range (1 to {MAX_CHUNK_PAGES} pages)")
    need = expected_capacity(memmap, 0.0, chunk_pages)
    if target.capacity < need:
        raise ImageError(
            f"image target {target.path} is too small: it holds {target.capacity} bytes but even an image "
            f"of {memmap.total_bytes >> 20} MiB of zero pages needs {need} bytes; nothing was written")
    try:
        on_disk, handoff_sum = read_handoff(target)
    except FormatError:
        on_disk, handoff_sum = None, 0
    if on_disk != handoff:
        handoff_sum = write_handoff(target, handoff)
    superblock = Superblock(
        state=State.SAVING, identity=handoff.identity, sequence=handoff.sequence,
        restart_point=handoff.restart_point, compression=handoff.compression, chunk_pages=chunk_pages,
        region_base=handoff.region_base, region_size=handoff.region_size, low_base=handoff.low_base,
        low_size=handoff.low_size, jump_back_entry=jump_back_entry, pages_total=memmap.total_pages,
        handoff_checksum=handoff_sum, created_ns=handoff.created_ns, target_id=handoff.target_id)
    data_key, envelope, cipher = None, None, None
    if handoff.recipient:
        data_key, envelope = sealing.seal_new_key(handoff.recipient)
        superblock = superblock.evolve(seal=envelope.pack())
        cipher = sealing.ImageCipher(data_key, sealing.binding(superblock, handoff, target.uuid, envelope))
        data_key[:] = bytes(len(data_key))
    write_superblock(target, superblock)

    codec = _Codec(handoff.compression, cipher)
    chunks = -(-memmap.total_pages // chunk_pages)
    stream = xxhash.xxh3_64()
    zero_pages = 0
    total = memmap.total_bytes
    writer = _StreamWriter(target, DATA_OFFSET)
    with ThreadPoolExecutor(workers, thread_name_prefix="kjump-save") as pool:
        encoded = _ordered_map(pool, lambda i: _encode_chunk(source, memmap, codec, chunk_pages, i),
                               range(chunks), workers * 4)
        for item in encoded:
            end = writer.end + len(item.packed) + len(item.stored)
            if end + -end % ALIGN + ALIGN > target.capacity:       # the chunk, padding, trailer
                reason = (f"image target {target.path} is full: its {target.capacity} bytes hold the image of "
                          f"{item.header.first_page * PAGE_SIZE / (1 << 20):.1f} of {total / (1 << 20):.1f} MiB "
                          "of memory (it compressed less than expected); the save was abandoned")
                discard(target, reason)
                raise ImageError(reason)
            writer.add([item.packed, item.stored])
            zero_pages += item.zero_pages
            stream_checksum_update(stream, item.packed)
            if progress:
                progress(min(total, (item.header.first_page + item.header.pages) * PAGE_SIZE), total, "save")
    position = writer.finish()
    stream_bytes = position - DATA_OFFSET
    trailer = Trailer(chunks, memmap.total_pages, zero_pages, stream_bytes, stream.intdigest())
    target.write(position, trailer.pack())
    target.sync()
    if cipher is not None and envelope is not None:
        superblock = superblock.evolve(seal=replace(envelope, stream_tag=cipher.stream_tag(trailer)).pack())
    superblock = superblock.evolve(
        state=State.SAVED, result=RESULT_OK, pages_zero=zero_pages, chunk_count=chunks,
        stream_bytes=stream_bytes, stream_checksum=trailer.stream_checksum, saved_ns=time.time_ns(),
        save_duration_ns=int((time.monotonic() - started) * 1e9))
    write_superblock(target, superblock)
    return superblock


# --- read side ------------------------------------------------------------------------

class _Window:
    """Sequential reads of the stream through large buffered windows."""

    def __init__(self, target: ImageTarget) -> None:
        self.target = target
        self._start = 0
        self._data = b""

    def take(self, position: int, length: int) -> memoryview:
        if not (self._start <= position and position + length <= self._start + len(self._data)):
            self._start = position
            self._data = self.target.read(position, max(length, _READ_WINDOW))
        offset = position - self._start
        view = memoryview(self._data)[offset:offset + length]
        if len(view) < length:
            raise FormatError(f"image is truncated at byte {position + len(view)}")
        return view


def _chunks(target: ImageTarget, superblock: Superblock) -> Iterator[tuple[ChunkHeader, memoryview]]:
    """Yield each chunk's checked header and stored payload, then check the trailer.

    Each header is read from one block (a header and its bitmap fit in
    ALIGN bytes) and checked before its payload is read, so no length read
    from the disk sizes a read beyond the format's maximum chunk.
    """
    window = _Window(target)
    stream = xxhash.xxh3_64()
    position = DATA_OFFSET
    zero_pages = 0
    for index in range(superblock.chunk_count):
        where = f"chunk {index} (byte {position})"
        try:
            raw_header = window.take(position, min(ALIGN, target.capacity - position))
            header = ChunkHeader.unpack(raw_header)
        except FormatError as exc:
            raise ImageError(f"{where}: {exc}") from exc
        expected_pages = min(superblock.chunk_pages, superblock.pages_total - index * superblock.chunk_pages)
        if (header.index, header.first_page, header.pages) != (
                index, index * superblock.chunk_pages, expected_pages):
            raise ImageError(f"{where}: header describes chunk {header.index} — the stream is out of order")
        encrypted = bool(header.flags & CHUNK_FLAG_ENCRYPTED)
        if encrypted != bool(superblock.seal):
            raise ImageError(f"{where}: a{' n encrypted' if encrypted else ' plain'} chunk in a"
                             f"{'n encrypted' if superblock.seal else ' plain'} image — the image is corrupt or forged")
        if superblock.compression == Compression.NONE and \
                header.stored_len != header.raw_len + (AEAD_TAG_SIZE if encrypted else 0):
            raise ImageError(f"{where}: stored length differs from the pages' in an uncompressed image")
        if position + header.total > target.capacity:
            raise ImageError(f"{where}: the chunk runs past the end of the image target — the image is truncated")
        try:
            stored = window.take(position + header.size, header.stored_len)
        except FormatError as exc:
            raise ImageError(f"{where}: {exc}") from exc
        if checksum(stored) != header.stored_checksum:
            raise ImageError(f"{where}: data checksum mismatch — the image is corrupt")
        zero_pages += header.zero_pages
        stream_checksum_update(stream, raw_header[:header.size])
        yield header, stored
        position += header.total
    padding = -position % ALIGN
    try:
        if padding and any(window.take(position, padding)):
            raise ImageError(f"the padding after the last chunk (byte {position}) is not zero — the image is corrupt")
        position += padding
        trailer = Trailer.unpack(window.take(position, ALIGN))
    except FormatError as exc:
        raise ImageError(f"trailer (byte {position}): {exc}") from exc
    expect = Trailer(superblock.chunk_count, superblock.pages_total, zero_pages,
                     position - DATA_OFFSET, stream.intdigest())
    if trailer != expect or trailer.stream_checksum != superblock.stream_checksum:
        raise ImageError("trailer does not match the chunk stream and superblock — the image is corrupt")


_NOT_RESTORABLE = {
    State.EMPTY: "holds no image",
    State.SAVING: "holds an incomplete image (the save was interrupted)",
    State.RESTORING: "holds an image whose restore was interrupted; it is not used again",
    State.RESTORED: "holds an image that was already restored (consumed)",
    State.DISCARDED: "holds a discarded image",
    State.RESUMING: "holds an image a boot already tried to resume (the attempt did not complete)",
}


def state_description(state: State) -> str:
    """Why an image in ``state`` is not resumed ("holds no image", …), for messages."""
    return _NOT_RESTORABLE.get(state, "holds a saved image")


def _usable(target: ImageTarget) -> tuple[Superblock, Handoff]:
    """The superblock and handoff of an image that may be restored, or ImageError why not."""
    try:
        superblock = read_superblock(target)
    except FormatError as exc:
        raise ImageError(f"superblock: {exc}") from exc
    if superblock.state not in RESUMABLE:
        detail = f": {superblock.reason}" if superblock.reason else ""
        raise ImageError(f"{target.path} {_NOT_RESTORABLE[superblock.state]}{detail}")
    try:
        handoff, handoff_sum = read_handoff(target)
    except FormatError as exc:
        raise ImageError(f"handoff: {exc}") from exc
    if handoff_sum != superblock.handoff_checksum:
        raise ImageError("the handoff on the target is not the one this image was saved from")
    if handoff.memmap.total_pages != superblock.pages_total:
        raise ImageError("the memory map does not match the superblock's page count")
    if not 0 < superblock.chunk_pages <= MAX_CHUNK_PAGES or \
            superblock.chunk_count != -(-superblock.pages_total // superblock.chunk_pages):
        raise ImageError("superblock chunk count does not match its page count")
    if superblock.stream_bytes % ALIGN or DATA_OFFSET + superblock.stream_bytes + ALIGN > target.capacity:
        raise ImageError(f"superblock says the stream holds {superblock.stream_bytes} bytes, which do not fit "
                         f"the image target ({target.capacity} bytes) — the image is truncated or corrupt")
    return superblock, handoff


def _check_trailer(target: ImageTarget, superblock: Superblock) -> None:
    """The trailer must be where the superblock says the stream ends and agree with it."""
    position = DATA_OFFSET + superblock.stream_bytes
    try:
        trailer = Trailer.unpack(target.read(position, ALIGN))
    except FormatError as exc:
        raise ImageError(f"trailer (byte {position}): {exc}") from exc
    if trailer != Trailer(superblock.chunk_count, superblock.pages_total, superblock.pages_zero,
                          superblock.stream_bytes, superblock.stream_checksum):
        raise ImageError("the trailer does not match the superblock — the image is incomplete or corrupt")


def check_headers(target: ImageTarget) -> Superblock:
    """Check what decides whether an image may be resumed, reading only its records.

    Superblock (state SAVED), handoff (the one the image was saved from) and
    trailer (where the superblock says, agreeing with it): one read of the
    header area and one block, whatever the image's size. The chunks are
    checked by :func:`restore` as it writes them, or by :func:`verify`.
    ImageError says why the image may not be used.
    """
    superblock, _ = _usable(target)
    _check_trailer(target, superblock)
    return superblock


def _decode(codec: _Codec, header: ChunkHeader, stored: bytes | memoryview) -> bytes | memoryview:
    encrypted = bool(header.flags & CHUNK_FLAG_ENCRYPTED)
    if encrypted != (codec.cipher is not None):
        raise FormatError("the chunk is encrypted but no key was given" if encrypted
                          else "a plain chunk in an encrypted image")
    if codec.cipher is not None:
        stored = codec.cipher.decrypt_chunk(header, stored)     # authenticated: no raw checksum to check
    if header.raw_len == 0 or header.flags & CHUNK_FLAG_STORED_RAW:
        raw = stored                # all-zero chunks store nothing
    else:
        raw = codec.decompress(stored, header.raw_len)
    if len(raw) != header.raw_len or (not encrypted and checksum(raw) != header.raw_checksum):
        raise FormatError("decoded pages do not match their checksum")
    return raw


def _decoded(target: ImageTarget, superblock: Superblock, workers: int, progress: Progress | None,
             phase: str, cipher: sealing.ImageCipher | None = None) -> Iterator[tuple[ChunkHeader, bytes | memoryview]]:
    """Every chunk decoded (decrypted with ``cipher``) and checked, in order, decoding on a thread pool."""
    codec = _Codec(superblock.compression, cipher)
    total = superblock.pages_total * PAGE_SIZE

    def work(item: tuple[ChunkHeader, memoryview]) -> tuple[ChunkHeader, bytes | memoryview]:
        header, stored = item
        try:
            return header, _decode(codec, header, stored)
        except FormatError as exc:
            raise ImageError(f"chunk {header.index}: {exc}") from exc

    with ThreadPoolExecutor(workers, thread_name_prefix=f"kjump-{phase}") as pool:
        for header, raw in _ordered_map(pool, work, _chunks(target, superblock), workers * 3):
            if progress:
                progress(min(total, (header.first_page + header.pages) * PAGE_SIZE), total, phase)
            yield header, raw


def _image_cipher(target: ImageTarget, superblock: Superblock, handoff: Handoff,
                  key: bytes | bytearray | None) -> sealing.ImageCipher | None:
    """The cipher of an encrypted image, its summary authenticated with ``key``; None for a plain image.

    ImageError when a key is given for a plain image (it may be a forgery:
    whoever configured a key accepts only sealed images), when the image is
    encrypted and its data key was destroyed, or when ``key`` does not
    authenticate the superblock, handoff and trailer (wrong key, or altered
    or mixed from another image). Reads only the records: run before
    anything is written.
    """
    if not superblock.seal:
        if key is not None:
            raise ImageError("the image is not encrypted, but encrypted images are required here: "
                             "it was not written by this machine's kjumpd with its key, or encryption was "
                             "turned off")
        return None
    envelope = sealing.Envelope.unpack(superblock.seal)
    if envelope.destroyed:
        raise ImageError("the image's data key was destroyed")
    if key is None:
        return None
    cipher = sealing.ImageCipher(key, sealing.binding(superblock, handoff, target.uuid, envelope))
    cipher.check_stream_tag(Trailer(superblock.chunk_count, superblock.pages_total, superblock.pages_zero,
                                    superblock.stream_bytes, superblock.stream_checksum), envelope.stream_tag)
    return cipher


def authenticate(target: ImageTarget, key: bytes | bytearray) -> Superblock:
    """Check that ``key`` opens this encrypted image and that its records are B's (C, before R).

    Reads only the records; ImageError why not (see :func:`_image_cipher`).
    """
    superblock, handoff = _usable(target)
    if not superblock.seal:
        raise ImageError("the image is not encrypted")
    _image_cipher(target, superblock, handoff, key)
    return superblock


def verify(target: ImageTarget, *, deep: bool = False, progress: Progress | None = None,
           workers: int = WORKERS, key: bytes | bytearray | None = None) -> Superblock:
    """Check every record and every chunk's checksums of a restorable image; ImageError why not.

    That proves every stored byte is what B wrote. ``deep`` also decodes
    every chunk and checks the decoded pages (what restore checks of each
    chunk before writing it; an admin's check of the whole image, which C
    and R do not need); for an encrypted image it needs the data ``key``, with
    which every chunk is authenticated.
    """
    superblock, handoff = _usable(target)
    cipher = _image_cipher(target, superblock, handoff, key)
    if deep:
        if superblock.seal and cipher is None:
            raise ImageError("the image is encrypted: a deep verification needs its key")
        for _ in _decoded(target, superblock, workers, progress, "verify", cipher):
            pass
        return superblock
    total = superblock.pages_total * PAGE_SIZE
    for header, _ in _chunks(target, superblock):
        if progress:
            progress(min(total, (header.first_page + header.pages) * PAGE_SIZE), total, "verify")
    return superblock


def _scatter(dest: PhysicalMemory, memmap: MemoryMap, header: ChunkHeader, raw: bytes | memoryview) -> None:
    """Write one chunk's pages to their physical addresses, zero pages as zeros.

    The zero bitmap is decoded into runs once (linear time); each run of
    zero or stored pages is split where the map's extents break it.
    """
    source = memoryview(raw)
    taken = 0
    page = 0
    spans: list[tuple[int, int, bool]] = []        # (first page in chunk, pages, zero)
    for first, count in header.zero_runs():
        if first > page:
            spans.append((page, first - page, False))
        spans.append((first, count, True))
        page = first + count
    if page < header.pages:
        spans.append((page, header.pages - page, False))
    for first, count, zero in spans:
        for address, _, pages in memmap.runs(header.first_page + first, count):
            length = pages * PAGE_SIZE
            if zero:
                dest.write(address, _ZERO_VIEW[:length] if length <= len(_ZERO_CHUNK) else bytes(length))
            else:
                dest.write(address, source[taken:taken + length])
                taken += length


def restore(target: ImageTarget, dest: PhysicalMemory, *, progress: Progress | None = None,
            expect: Identity | None = None, workers: int = WORKERS,
            key: bytes | bytearray | None = None) -> Superblock:
    """Write the image's pages to ``dest``, checking each chunk just before it is written.

    Every byte of the image is read once. Nothing is written to ``dest`` or
    the target unless the records (:func:`check_headers`), the identity
    (with ``expect``) and the layout are right. Then the image is marked
    RESTORING and each chunk's header, payload and decoded pages are checked
    before its pages are written; the stream checksum and trailer are checked
    after the last chunk. A failure from then on marks the image DISCARDED
    with the reason (it is never used again) and raises ImageError: ``dest``
    is left partly written, which a caller that must not allow it avoids by
    running ``verify(deep=True)`` first or by restoring into a new file.

    An encrypted image needs its data ``key``, which must authenticate the
    records before anything is written; then every chunk is authenticated
    before its pages are written, so only bytes B wrote ever reach ``dest``.
    With a key, a plain image is refused.
    """
    started = time.monotonic()
    superblock, handoff = _usable(target)
    _check_trailer(target, superblock)
    if expect is not None:
        reason = superblock.identity.mismatch(expect)
        if reason:
            raise ImageError(f"refusing to restore: {reason}")
    for r in handoff.memmap.ranges():
        problem = dest.check_range(r.start, r.size)
        if problem:
            raise ImageError(f"refusing to restore: the image was written for another layout ({problem})")
    cipher = _image_cipher(target, superblock, handoff, key)
    if superblock.seal and cipher is None:
        raise ImageError("refusing to restore: the image is encrypted and no key was given")
    set_state(target, State.RESTORING)
    try:
        for header, raw in _decoded(target, superblock, workers, progress, "restore", cipher):
            _scatter(dest, handoff.memmap, header, raw)
        dest.flush()
    except ImageError as exc:
        discard(target, f"restore failed: {exc}")
        raise
    return set_state(target, State.RESTORED, restored_ns=time.time_ns(),
                     restore_duration_ns=int((time.monotonic() - started) * 1e9))


def describe(target: ImageTarget) -> dict[str, object]:
    """What the target holds, for people and for ``--json``: never raises for a corrupt image."""
    info: dict[str, object] = {"target": target.path, "offset": target.offset, "capacity": target.capacity,
                               "target_uuid": str(uuidlib.UUID(bytes=target.uuid))}
    try:
        sb = read_superblock(target)
    except FormatError as exc:
        info.update(state="INVALID", problem=str(exc))
        return info
    info.update(
        state=sb.state.name, restart_point=sb.restart_point, compression=sb.compression.label,
        sequence=sb.sequence, kernel_release=sb.identity.kernel_release,
        boot_id=sb.identity.boot_id.hex(), machine_id=sb.identity.machine_id.hex(),
        layout_fingerprint=sb.identity.layout_fingerprint.hex(),
        region=[sb.region_base, sb.region_size], jump_back_entry=sb.jump_back_entry,
        pages_total=sb.pages_total, pages_zero=sb.pages_zero, memory_bytes=sb.pages_total * PAGE_SIZE,
        chunks=sb.chunk_count, image_bytes=sb.image_bytes, created_ns=sb.created_ns, saved_ns=sb.saved_ns,
        restored_ns=sb.restored_ns, save_seconds=sb.save_duration_ns / 1e9,
        restore_seconds=sb.restore_duration_ns / 1e9, target_id=sb.target_id, reason=sb.reason,
        wiped_ns=sb.wiped_ns, encrypted=bool(sb.seal))
    if sb.seal:
        info["key_id"] = sb.seal[4:12].hex()
    if sb.state in (State.SAVING, *RESUMABLE, State.RESTORING):     # a consumed image has no handoff
        try:
            handoff, _ = read_handoff(target)
            info["memory_map"] = [[r.start, r.end] for r in handoff.memmap.ranges()]
        except FormatError as exc:
            info["problem"] = f"handoff: {exc}"
    return info


# --- what a consumed image leaves behind ------------------------------------------------

def _stream_end(target: ImageTarget, superblock: Superblock) -> int:
    """Where the bytes the last save wrote end: after the trailer, or after the last chunk found.

    A save that did not finish (state SAVING, or DISCARDED by B) recorded no
    stream length: its chunks are found by walking their headers from the
    start of the stream, as long as each one checks out and is the next.
    """
    if superblock.stream_bytes:
        return min(target.capacity, DATA_OFFSET + superblock.stream_bytes + ALIGN)
    window = _Window(target)
    position = DATA_OFFSET
    index = 0
    while position + ALIGN <= target.capacity:
        try:
            header = ChunkHeader.unpack(window.take(position, ALIGN))
        except FormatError:
            break
        if header.index != index:
            break
        position += header.total
        index += 1
    return min(target.capacity, position + -position % ALIGN + ALIGN)


def wipe(target: ImageTarget, *, progress: Progress | None = None) -> Superblock:
    """Overwrite with zeros everything the last image wrote: handoff area, chunk stream, trailer.

    The chunk stream holds A's RAM (keys, passwords); a consumed image keeps
    it until this runs. It costs one sequential write of the image's size.
    Refused (ImageError) for an image that may still be resumed (SAVED) or
    whose save or restore is under way or was interrupted (SAVING, RESTORING):
    discard it first. Records the time of the wipe in the superblock.
    """
    superblock = read_superblock(target)
    if superblock.state not in (State.EMPTY, *CONSUMED):
        raise ImageError(f"{target.path} {_NOT_RESTORABLE.get(superblock.state, 'holds a saved image')}; "
                         "discard it before wiping it")
    end = _stream_end(target, superblock)
    total = end - HANDOFF_OFFSET
    position = HANDOFF_OFFSET
    while position < end:
        step = min(_StreamWriter.BLOCK, end - position)
        target.zero(position, step)
        position += step
        if progress:
            progress(position - HANDOFF_OFFSET, total, "wipe")
    target.sync()
    superblock = superblock.evolve(wiped_ns=time.time_ns())
    write_superblock(target, superblock)
    return superblock
