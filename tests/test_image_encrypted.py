"""Encrypted images: round trips, and every tampering a forger without the key can do.

The forger knows the format and recomputes every xxh3 checksum (they are not
keyed), so what refuses each case here is the authentication: the stream tag
over the records before anything is written, each chunk's tag before its
pages are written. A refusal in the records leaves the destination and the
target byte-for-byte untouched; a chunk refused while restoring (the forger
would need an xxh3 collision to get that far) discards the image and leaves
only pages B wrote in the destination (and ``verify(deep)`` refuses it first,
with nothing touched).
"""

import dataclasses
import hashlib
import os
import random
import struct

import pytest

from kjumpd import image, seal
from kjumpd.errors import ImageError
from kjumpd.format import (ALIGN, CHUNK_FLAG_ENCRYPTED, DATA_OFFSET, HANDOFF_OFFSET, SUPERBLOCK_SIZE,
                           ChunkHeader, Compression, Handoff, Identity, State, Superblock, Trailer, checksum)
from kjumpd.memmap import PAGE_SIZE, MemoryMap, Range
from kjumpd.physmem import FileMemory
from kjumpd.target import ImageTarget

IDENT = Identity(b"B" * 16, b"M" * 16, "6.12.117", b"L" * 32, b"F" * 32)
CHEAP = seal.ScryptCost(log_n=10)
PAGES, CHUNK = 96, 16
FILL = b"\xee"


@pytest.fixture(scope="module")
def keys():
    public, secret = seal.generate_key_pair(b"passphrase", CHEAP)
    return public, seal.SecretKeyFile.parse(secret)


def make_memory(path, pages: int, seed: int) -> bytes:
    """Zero, random, repetitive and text pages; every page non-zero holds the marker SECRET-<page>."""
    rnd = random.Random(seed)
    out = bytearray()
    for i in range(pages):
        kind = rnd.random()
        if kind < 0.3:
            out += bytes(PAGE_SIZE)
        elif kind < 0.5:
            out += rnd.randbytes(PAGE_SIZE)
        else:
            out += (b"SECRET-%04d " % i * PAGE_SIZE)[:PAGE_SIZE]
    path.write_bytes(bytes(out))
    return bytes(out)


def handoff_for(memmap: MemoryMap, recipient: bytes, compression=Compression.LZ4, sequence=3) -> Handoff:
    return Handoff(IDENT, "shutdown", compression, 1 << 30, 1 << 28, 0x10000, 0x40000, memmap, sequence, 123,
                   "test-disk", recipient)


def save_image(img, mem, public, compression=Compression.LZ4, sequence=3, capacity=None) -> Superblock:
    memmap = MemoryMap.from_ranges([Range(0, PAGES * PAGE_SIZE)])
    if not img.exists():
        ImageTarget.create(str(img), capacity or image.required_capacity(memmap, CHUNK)).close()
    with ImageTarget.open(str(img)) as target, FileMemory(str(mem)) as source:
        return image.save(source, target, handoff_for(memmap, public, compression, sequence),
                          jump_back_entry=0xABC0F2, chunk_pages=CHUNK)


def data_key(img, secret) -> bytearray:
    with ImageTarget.open(str(img), writable=False) as target:
        sb = image.read_superblock(target)
    return seal.unseal_key(seal.Envelope.unpack(sb.seal), secret.unlock(b"passphrase"))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def saved(tmp_path, keys):
    public, secret = keys
    mem, img, dest = tmp_path / "ram", tmp_path / "image", tmp_path / "dest"
    original = make_memory(mem, PAGES, seed=7)
    sb = save_image(img, mem, public)
    dest.write_bytes(FILL * PAGES * PAGE_SIZE)
    return img, sb, original, dest, data_key(img, secret)


def restore_into(img, dest, key, **kwargs):
    with ImageTarget.open(str(img)) as target, FileMemory(str(dest), writable=True) as memory:
        return image.restore(target, memory, key=key, **kwargs)


def assert_refused_untouched(img, dest, key, match):
    """Refused from the records: neither the destination nor the target changed."""
    before_dest, before_img = digest(dest), digest(img)
    with pytest.raises(ImageError, match=match):
        restore_into(img, dest, key)
    assert digest(dest) == before_dest, "a refused restore changed the destination"
    assert digest(img) == before_img, "a refused restore changed the target"


def assert_refused_twice(img, dest, key, original, match, monkeypatch):
    """A forged stream: refused from the records by the stream tag, untouched; and, should the forger
    also find an xxh3 collision that keeps the stream checksum (xxh3 is not a cryptographic hash),
    each chunk's own tag refuses it: verify(deep) first with nothing touched, and restore too,
    the destination holding nothing but pages B saved (or its old contents)."""
    assert_refused_untouched(img, dest, key, "does not authenticate")
    monkeypatch.setattr(seal.ImageCipher, "check_stream_tag", lambda self, trailer, tag: None)
    before_dest, before_img = digest(dest), digest(img)
    with ImageTarget.open(str(img), writable=False) as target, pytest.raises(ImageError, match=match):
        image.verify(target, deep=True, key=key)
    assert (digest(dest), digest(img)) == (before_dest, before_img)
    with pytest.raises(ImageError, match=match):
        restore_into(img, dest, key)
    with ImageTarget.open(str(img), writable=False) as target:
        # SAVED when restore verifies everything before writing, DISCARDED when it checks each
        # chunk just before writing it (the engine's choice); never RESTORED
        assert image.read_superblock(target).state in (State.SAVED, State.DISCARDED)
    got = dest.read_bytes()
    for page in range(PAGES):
        part = slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)
        assert got[part] in (original[part], FILL * PAGE_SIZE), f"page {page} holds bytes B never saved"


# --- a forger who knows the format but not the key ------------------------------------------------

@dataclasses.dataclass
class Parsed:
    data: bytearray
    superblock: Superblock
    chunks: list[tuple[ChunkHeader, bytes]]


def parse(img) -> Parsed:
    data = bytearray(img.read_bytes())
    sb = Superblock.unpack(bytes(data[:SUPERBLOCK_SIZE]))
    chunks, position = [], DATA_OFFSET
    for _ in range(sb.chunk_count):
        header = ChunkHeader.unpack(bytes(data[position:position + ALIGN]))
        chunks.append((header, bytes(data[position + header.size:position + header.total])))
        position += header.total
    return Parsed(data, sb, chunks)


def rebuild(img, parsed: Parsed, chunks: list[tuple[ChunkHeader, bytes]], **superblock_changes) -> None:
    """Write ``chunks`` as the stream, renumbered into place, with every xxh3 checksum recomputed."""
    stream = bytearray()
    headers = bytearray()
    zero = 0
    for index, (header, stored) in enumerate(chunks):
        header = dataclasses.replace(header, index=index, first_page=index * CHUNK,
                                     stored_len=len(stored), stored_checksum=checksum(stored))
        packed = header.pack()
        headers += packed
        stream += packed + stored
        zero += header.zero_pages
    stream += bytes(-len(stream) % ALIGN)
    trailer = Trailer(len(chunks), parsed.superblock.pages_total, zero, len(stream), checksum(bytes(headers)))
    sb = parsed.superblock.evolve(chunk_count=len(chunks), pages_zero=zero, stream_bytes=len(stream),
                                  stream_checksum=trailer.stream_checksum, **superblock_changes)
    data = parsed.data
    end = DATA_OFFSET + len(stream) + ALIGN
    if len(data) < end:
        data += bytes(end - len(data))
    data[DATA_OFFSET:DATA_OFFSET + len(stream)] = stream
    data[DATA_OFFSET + len(stream):end] = trailer.pack()
    data[:SUPERBLOCK_SIZE] = sb.pack()
    img.write_bytes(bytes(data))


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", list(Compression))
def test_round_trip_every_compression_and_no_page_in_the_clear(tmp_path, keys, compression):
    public, secret = keys
    mem, img, dest = tmp_path / "ram", tmp_path / "image", tmp_path / "dest"
    original = make_memory(mem, PAGES, seed=1)
    sb = save_image(img, mem, public, compression)
    assert sb.seal and seal.Envelope.unpack(sb.seal).key_id == seal.key_id(public)
    stored = img.read_bytes()
    assert b"SECRET-" not in stored, "a page reached the image in the clear"
    for page in range(PAGES):
        part = original[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        if any(part):
            assert part[:64] not in stored
    dest.write_bytes(FILL * PAGES * PAGE_SIZE)
    key = data_key(img, secret)
    with ImageTarget.open(str(img), writable=False) as target:
        image.verify(target)                        # without the key: the structure and checksums
        image.verify(target, deep=True, key=key)
        info = image.describe(target)
    assert info["encrypted"] is True and info["key_id"] == seal.key_id(public).hex()
    done = restore_into(img, dest, key)
    assert done.state == State.RESTORED
    assert dest.read_bytes() == original


def test_each_image_has_its_own_data_key(tmp_path, keys):
    public, secret = keys
    mem = tmp_path / "ram"
    make_memory(mem, PAGES, seed=2)
    first, second = tmp_path / "one", tmp_path / "two"
    save_image(first, mem, public)
    save_image(second, mem, public)
    assert data_key(first, secret) != data_key(second, secret)
    assert parse(first).chunks[1][1] != parse(second).chunks[1][1]


def test_a_consumed_image_has_lost_its_key(saved, keys):
    """Crypto-erase: once restored, the envelope's sealed key is gone, whatever the stream still holds."""
    img, _, _, dest, key = saved
    copy = img.read_bytes()                 # what someone who read the disk before the resume kept
    restore_into(img, dest, key)
    with ImageTarget.open(str(img), writable=False) as target:
        sb = image.read_superblock(target)
    assert sb.seal and seal.Envelope.unpack(sb.seal).destroyed
    # the forger puts the handoff and stream back and the state to SAVED: nobody can unseal it
    img.write_bytes(sb.evolve(state=State.SAVED).pack() + copy[SUPERBLOCK_SIZE:])
    with ImageTarget.open(str(img), writable=False) as target:
        with pytest.raises(ImageError, match="destroyed"):
            image.verify(target)
    with pytest.raises(ImageError, match="destroyed"):
        data_key(img, keys[1])


def test_discarding_destroys_the_key_too(saved):
    img = saved[0]
    with ImageTarget.open(str(img)) as target:
        sb = image.discard(target, "test")
    assert seal.Envelope.unpack(sb.seal).destroyed


# --- refused from the records: destination and target untouched ----------------------------------

def test_wrong_key_is_refused_untouched(saved):
    img, _, _, dest, _ = saved
    assert_refused_untouched(img, dest, os.urandom(32), "does not authenticate")


def test_no_key_for_an_encrypted_image_is_refused_untouched(saved):
    img, _, _, dest, _ = saved
    assert_refused_untouched(img, dest, None, "encrypted and no key")
    with ImageTarget.open(str(img), writable=False) as target, pytest.raises(ImageError, match="needs its key"):
        image.verify(target, deep=True)


def test_wrong_passphrase_yields_no_key_and_touches_nothing(saved, keys, tmp_path):
    """C's unlocking with three wrong passphrases: refused, the image and destination as they were."""
    img, sb, _, dest, _ = saved
    secret = tmp_path / "image-key.secret"
    secret.write_bytes(keys[1].raw)
    before = digest(img), digest(dest)
    answers = [bytearray(b"Passphrase"), bytearray(b"passphrase "), bytearray(b"")]
    said = []
    with pytest.raises(ImageError, match="not unlocked"):
        seal.unlock_image_key(sb.seal, str(secret), lambda prompt: answers.pop(0), said.append)
    assert said == [f"wrong passphrase ({n} of 3)" for n in (1, 2, 3)]
    assert (digest(img), digest(dest)) == before


def test_an_image_for_another_key_pair_is_refused(saved):
    img = saved[0]
    _, other = seal.generate_key_pair(b"passphrase", CHEAP)
    with pytest.raises(ImageError, match="sealed to another key"):
        data_key(img, seal.SecretKeyFile.parse(other))


def test_a_plain_image_is_refused_where_a_key_is_required(tmp_path, keys):
    """A forger writes an unencrypted image (valid in every checksum): with a key, it is refused."""
    mem, img, dest = tmp_path / "ram", tmp_path / "image", tmp_path / "dest"
    make_memory(mem, PAGES, seed=5)
    save_image(img, mem, b"")
    dest.write_bytes(FILL * PAGES * PAGE_SIZE)
    assert_refused_untouched(img, dest, os.urandom(32), "not encrypted")


@pytest.mark.parametrize("change", ["jump_back_entry", "region_base", "chunk_pages_sequence", "target_uuid"])
def test_resealed_superblock_changes_are_refused_untouched(saved, change):
    """What decides where R writes and jumps is bound to the key: a forger's checksum does not help."""
    img, sb, _, dest, key = saved
    parsed = parse(img)
    changes = {"jump_back_entry": {"jump_back_entry": 0xBAD000},
               "region_base": {"region_base": 2 << 30},
               "chunk_pages_sequence": {"sequence": 99},
               "target_uuid": {"target_uuid": os.urandom(16)}}[change]
    if change == "target_uuid":         # as if the image were copied onto another initialised target
        data = parsed.data
        data[:SUPERBLOCK_SIZE] = sb.evolve(**changes).pack()
        img.write_bytes(bytes(data))
        with ImageTarget.open(str(img), writable=False) as target:
            assert target.uuid == changes["target_uuid"]
    else:
        rebuild(img, parsed, parsed.chunks, **changes)
    assert_refused_untouched(img, dest, key, "does not authenticate")


def test_resealed_memory_map_is_refused_untouched(saved):
    """The handoff's map decides which address each page goes to: moving it is refused."""
    img, _, _, dest, key = saved
    with ImageTarget.open(str(img), writable=False) as target:
        handoff, _ = image.read_handoff(target)
    moved = dataclasses.replace(handoff, memmap=MemoryMap.from_ranges([Range(PAGE_SIZE, (PAGES + 1) * PAGE_SIZE)]))
    dest.write_bytes(FILL * (PAGES + 1) * PAGE_SIZE)
    data = bytearray(img.read_bytes())
    packed = moved.pack()
    data[HANDOFF_OFFSET:HANDOFF_OFFSET + len(packed)] = packed
    parsed = parse(img)
    parsed.data = data
    rebuild(img, parsed, parsed.chunks, handoff_checksum=checksum(packed))
    assert_refused_untouched(img, dest, key, "does not authenticate")


def test_truncated_by_whole_chunks_is_refused_untouched(saved):
    """Dropping the last chunks and fixing every count and checksum: the stream tag refuses it."""
    img, _, _, dest, key = saved
    parsed = parse(img)
    rebuild(img, parsed, parsed.chunks[:-2], pages_total=PAGES - 2 * CHUNK)
    before = digest(dest), digest(img)
    with pytest.raises(ImageError):
        restore_into(img, dest, key)
    assert (digest(dest), digest(img)) == before


def test_truncation_at_every_chunk_boundary_is_refused_untouched(saved):
    img, sb, _, dest, key = saved
    data = img.read_bytes()
    position = DATA_OFFSET
    cuts = []
    for header, _ in parse(img).chunks:
        cuts.append(position)
        position += header.total
    for cut in cuts + [position]:
        img.write_bytes(data[:cut])
        with pytest.raises(ImageError):
            restore_into(img, dest, key)
        assert dest.read_bytes() == FILL * PAGES * PAGE_SIZE


def test_every_superblock_and_trailer_byte_change_is_refused(saved):
    img, sb, _, dest, key = saved
    data = img.read_bytes()
    trailer_at = DATA_OFFSET + sb.stream_bytes
    for position in list(range(0, 688 + 128, 7)) + list(range(trailer_at, trailer_at + 64, 3)):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        img.write_bytes(bytes(damaged))
        with pytest.raises(ImageError):
            restore_into(img, dest, key)
        assert dest.read_bytes() == FILL * PAGES * PAGE_SIZE, f"byte {position}"


def test_a_replayed_older_stream_under_the_newer_superblock_is_refused_untouched(tmp_path, keys):
    """An older image's handoff and chunks written back over a newer image of the same target."""
    public, secret = keys
    mem, img, dest = tmp_path / "ram", tmp_path / "image", tmp_path / "dest"
    make_memory(mem, PAGES, seed=8)
    save_image(img, mem, public, sequence=1)
    older = img.read_bytes()
    make_memory(mem, PAGES, seed=9)
    save_image(img, mem, public, sequence=2)
    key = data_key(img, secret)
    newer = img.read_bytes()
    img.write_bytes(newer[:SUPERBLOCK_SIZE] + older[SUPERBLOCK_SIZE:])
    dest.write_bytes(FILL * PAGES * PAGE_SIZE)
    with pytest.raises(ImageError):
        restore_into(img, dest, key)
    assert dest.read_bytes() == FILL * PAGES * PAGE_SIZE
    # and the older superblock with the newer stream: the newer key does not open it
    img.write_bytes(older[:SUPERBLOCK_SIZE] + newer[SUPERBLOCK_SIZE:])
    assert_refused_untouched(img, dest, key, "does not authenticate|not the one this image was saved from")


# --- forged streams: refused by the stream tag, and chunk by chunk ---------------------------------------------------------

def test_swapped_chunks_are_refused(saved, monkeypatch):
    img, _, original, dest, key = saved
    parsed = parse(img)
    chunks = list(parsed.chunks)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    rebuild(img, parsed, chunks)
    assert_refused_twice(img, dest, key, original, "chunk 1 fails authentication", monkeypatch)


def test_a_chunk_from_another_image_is_refused(tmp_path, saved, keys, monkeypatch):
    img, _, original, dest, key = saved
    other = tmp_path / "other"
    save_image(other, tmp_path / "ram", keys[0])         # same memory, same public key, new data key
    parsed = parse(img)
    chunks = list(parsed.chunks)
    chunks[3] = parse(other).chunks[3]
    rebuild(img, parsed, chunks)
    assert_refused_twice(img, dest, key, original, "chunk 3 fails authentication", monkeypatch)


def test_a_plain_chunk_in_an_encrypted_image_is_refused(saved, monkeypatch):
    """The forger clears the encrypted flag and stores chosen pages in the clear."""
    img, _, original, dest, key = saved
    parsed = parse(img)
    chunks = list(parsed.chunks)
    header, _ = chunks[2]
    payload = b"\xcc" * header.raw_len
    forged = dataclasses.replace(header, flags=header.flags & ~CHUNK_FLAG_ENCRYPTED | 0x1,
                                 raw_checksum=checksum(payload))
    chunks[2] = (forged, payload)
    rebuild(img, parsed, chunks)
    assert_refused_twice(img, dest, key, original, "plain chunk in an encrypted image", monkeypatch)


def test_random_byte_flips_in_chunk_data_are_refused(saved):
    img, sb, original, dest, key = saved
    data = img.read_bytes()
    rnd = random.Random(11)
    refused = 0
    for _ in range(30):
        damaged = bytearray(data)
        damaged[rnd.randrange(DATA_OFFSET, DATA_OFFSET + sb.stream_bytes)] ^= 1 << rnd.randrange(8)
        img.write_bytes(bytes(damaged))
        dest.write_bytes(FILL * PAGES * PAGE_SIZE)
        try:
            restore_into(img, dest, key)
        except ImageError:
            refused += 1
            got = dest.read_bytes()
            for page in range(PAGES):
                part = slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)
                assert got[part] in (original[part], FILL * PAGE_SIZE)
        else:
            assert dest.read_bytes() == original        # the flip hit padding
    assert refused >= 25


def test_a_forged_payload_with_every_checksum_fixed_is_refused(saved, monkeypatch):
    """A bit flipped in the ciphertext with its xxh3 recomputed: only the tag notices."""
    img, _, original, dest, key = saved
    parsed = parse(img)
    chunks = list(parsed.chunks)
    header, stored = chunks[4]
    flipped = bytearray(stored)
    flipped[0] ^= 1
    chunks[4] = (header, bytes(flipped))
    rebuild(img, parsed, chunks)
    with ImageTarget.open(str(img), writable=False) as target:
        image.verify(target)            # every checksum is right: a keyless check cannot tell
    assert_refused_twice(img, dest, key, original, "chunk 4 fails authentication", monkeypatch)


def test_capacity_counts_the_tags(tmp_path, keys):
    """Incompressible memory stored raw: each chunk grows by its tag, and the capacity allows for it."""
    mem, img = tmp_path / "ram", tmp_path / "image"
    mem.write_bytes(random.Random(4).randbytes(PAGES * PAGE_SIZE))
    memmap = MemoryMap.from_ranges([Range(0, PAGES * PAGE_SIZE)])
    sb = save_image(img, mem, keys[0], Compression.NONE,
                    capacity=image.required_capacity(memmap, CHUNK))
    assert sb.state == State.SAVED
    header = parse(img).chunks[0][0]
    assert header.stored_len == header.raw_len + 16
    assert struct.unpack_from("<H", header.pack(), 6)[0] == CHUNK_FLAG_ENCRYPTED


def test_an_image_for_another_key_is_refused_before_the_passphrase_is_asked(saved, tmp_path):
    _, sb, _, _, _ = saved
    _, other = seal.generate_key_pair(b"passphrase", CHEAP)
    secret = tmp_path / "image-key.secret"
    secret.write_bytes(other)
    asked = []
    with pytest.raises(ImageError, match="sealed to another key"):
        seal.unlock_image_key(sb.seal, str(secret), asked.append, print)
    assert asked == [], "nobody is asked for a passphrase that cannot open the image"


def test_no_secret_key_file_refuses_an_encrypted_image_and_accepts_a_plain_one(saved, tmp_path):
    _, sb, _, _, _ = saved
    with pytest.raises(ImageError, match="no secret key"):
        seal.unlock_image_key(sb.seal, str(tmp_path / "missing"), lambda prompt: None, print)
    assert seal.unlock_image_key(b"", str(tmp_path / "missing"), lambda prompt: None, print) is None
