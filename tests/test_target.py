"""The image target is kjumpd's alone: initialisation, the ownership check at open, safe creation,
and a clean error path. Files here; real block devices (loop devices) in test_target_devices.py.

Every refusal must leave the target byte for byte untouched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from kjumpd import image
from kjumpd.errors import ImageError
from kjumpd.format import DATA_OFFSET, SUPERBLOCK_SIZE, State, Superblock
from kjumpd.target import MIN_CAPACITY, ImageTarget, TargetExistsError, probe_signatures

SIZE = 8 << 20


def kjumpctl(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kjumpd.ctl", *map(str, args)], capture_output=True, text=True)


def blank(path: Path, size: int = SIZE) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def assert_refused(path: Path, match: str, **open_args: object) -> None:
    """ImageTarget.open refuses ``path`` with ``match`` in the message and changes nothing."""
    before = path.read_bytes()
    with pytest.raises(ImageError, match=match):
        with ImageTarget.open(str(path), **open_args) as target:
            image.write_superblock(target, Superblock())
    assert path.read_bytes() == before, "a refused target was changed"


def with_magic(path: Path, offset: int, magic: bytes) -> Path:
    blank(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(magic)
    return path


def test_a_blank_file_is_not_initialised(tmp_path: Path) -> None:
    assert_refused(blank(tmp_path / "t"), r"is not initialised: run `kjumpctl target init .*/t` first")


def test_unknown_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(os.urandom(SIZE))
    assert_refused(path, "holds data that is not kjumpd's")


@pytest.mark.parametrize("offset,magic,kind", [
    (1080, b"\x53\xef", "ext2/ext3/ext4 file system"),
    (4086, b"SWAPSPACE2", "swap space"),
    (0, b"LUKS\xba\xbe", "LUKS encrypted volume"),
    (4096, struct.pack("<I", 0xA92B4EFC), "Linux RAID member"),
    (65600, b"_BHRfS_M", "btrfs file system"),
    (512, b"EFI PART", "GPT partition table"),
    (SIZE - 8192, struct.pack("<I", 0xA92B4EFC), r"Linux RAID member \(md 1.0\)"),
])
def test_other_signatures_are_named(tmp_path: Path, offset: int, magic: bytes, kind: str) -> None:
    assert_refused(with_magic(tmp_path / "t", offset, magic), f"is not kjumpd's: it carries {kind}")


def test_a_dos_partition_table_is_named(tmp_path: Path) -> None:
    path = blank(tmp_path / "t")
    with open(path, "r+b") as handle:
        handle.seek(446)
        handle.write(bytes([0x80, 0, 0, 0, 0x83]) + bytes(11))
        handle.seek(510)
        handle.write(b"\x55\xaa")
    assert_refused(path, "DOS partition table")


def test_probe_finds_nothing_on_an_initialised_target(tmp_path: Path) -> None:
    path = blank(tmp_path / "t")
    with ImageTarget.open_unclaimed(str(path)) as target:
        target.initialise()
        assert probe_signatures(target.read, target.capacity) == []


def test_initialise_then_open(tmp_path: Path) -> None:
    path = blank(tmp_path / "t")
    with ImageTarget.open_unclaimed(str(path)) as target:
        uuid = target.initialise()
    with ImageTarget.open(str(path), writable=False) as target:
        assert target.uuid == uuid != bytes(16)
        superblock = image.read_superblock(target)
    assert superblock.state == State.EMPTY and superblock.target_uuid == uuid


def test_initialise_wipes_signatures(tmp_path: Path) -> None:
    path = with_magic(tmp_path / "t", 1080, b"\x53\xef")
    with open(path, "r+b") as handle:       # and an md 1.0 superblock at the end, outside the header area
        handle.seek(SIZE - 8192)
        handle.write(struct.pack("<I", 0xA92B4EFC))
    with ImageTarget.open_unclaimed(str(path)) as target:
        assert {s.kind for s in target.signatures()} >= {"ext2/ext3/ext4 file system", "Linux RAID member (md 1.0)"}
        target.initialise()
        assert target.signatures() == []
    ImageTarget.open(str(path)).close()


def test_a_target_too_small_is_not_initialised(tmp_path: Path) -> None:
    path = blank(tmp_path / "t", MIN_CAPACITY - 4096)
    with ImageTarget.open_unclaimed(str(path)) as target:
        with pytest.raises(ImageError, match="too small"):
            target.initialise()
    assert path.read_bytes() == bytes(MIN_CAPACITY - 4096)


def test_an_older_kjumpd_superblock_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = blank(tmp_path / "t")
    with ImageTarget.open_unclaimed(str(path)) as target:
        target.initialise()
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 8, 1)                   # format version 1, checksum recomputed
    length = struct.unpack_from("<I", data, 12)[0]
    data[length - 8:length] = bytes(8)
    data[length - 8:length] = struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(data[:length])))
    path.write_bytes(bytes(data))
    assert_refused(path, r"version 1 is not supported.*`kjumpctl target init .* --force`")


def test_an_offset_is_named_in_the_hint(tmp_path: Path) -> None:
    assert_refused(blank(tmp_path / "t"), "kjumpctl target init --offset 1048576 ", offset=1 << 20)


def test_create_is_exclusive_and_does_not_follow_links(tmp_path: Path) -> None:
    """Issue 16.13: no exists()-then-O_CREAT window; a link (dangling or not) is never followed."""
    existing = blank(tmp_path / "existing")
    with pytest.raises(TargetExistsError):
        ImageTarget.create(str(existing), SIZE)
    assert existing.read_bytes() == bytes(SIZE)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TargetExistsError):
        ImageTarget.create(str(link), SIZE)
    assert not (tmp_path / "elsewhere").exists()
    with ImageTarget.create(str(tmp_path / "new"), SIZE) as target:
        assert target.uuid != bytes(16)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600


def test_write_failure_on_a_direct_target_is_an_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.12: a write refused by the kernel (ETXTBSY: active swap) on the O_DIRECT path is a clean
    ImageError; the old error path closed the mmap buffer while a view was exported (BufferError)."""
    path = blank(tmp_path / "t")
    with ImageTarget.open_unclaimed(str(path)) as target:
        target.initialise()
    with ImageTarget.open(str(path)) as target:
        try:
            fcntl.fcntl(target._fd, fcntl.F_SETFL, fcntl.fcntl(target._fd, fcntl.F_GETFL) | os.O_DIRECT)
        except OSError:
            pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
        target.direct = True                     # what a block device gets

        def busy(fd: int, data: object, offset: int) -> int:
            raise OSError(errno.ETXTBSY, os.strerror(errno.ETXTBSY))

        monkeypatch.setattr(os, "pwrite", busy)
        with pytest.raises(ImageError, match="write to image target .* failed: Text file busy"):
            image.write_superblock(target, Superblock())


def test_kjumpctl_target_init(tmp_path: Path) -> None:
    """`kjumpctl target init`: says what it would destroy, needs --force, then writes the signature."""
    path = with_magic(tmp_path / "t", 1080, b"\x53\xef")
    before = path.read_bytes()
    refused = kjumpctl("target", "init", path)
    assert refused.returncode == 1 and "holds ext2/ext3/ext4 file system (magic at byte 1080)" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert path.read_bytes() == before
    done = kjumpctl("target", "init", path, "--force")
    assert done.returncode == 0 and "destroying ext2/ext3/ext4 file system" in done.stderr
    assert "kjumpd image target, UUID" in done.stdout
    again = kjumpctl("target", "init", path)
    assert again.returncode == 0 and "already a kjumpd image target" in again.stdout
    blank_one = blank(tmp_path / "blank")
    assert kjumpctl("target", "init", blank_one).returncode == 0         # nothing there: no --force needed
    missing = kjumpctl("target", "init", tmp_path / "missing")
    assert missing.returncode == 1 and "No such file" in missing.stderr and "Traceback" not in missing.stderr


def test_kjumpctl_target_init_asks_before_destroying_a_saved_image(tmp_path: Path) -> None:
    path = blank(tmp_path / "t")
    with ImageTarget.open_unclaimed(str(path)) as target:
        target.initialise()
    with ImageTarget.open(str(path)) as target:
        image.write_superblock(target, Superblock(state=State.SAVED))
    before = path.read_bytes()
    refused = kjumpctl("target", "init", path)
    assert refused.returncode == 1 and "a kjumpd hibernation image in state SAVED" in refused.stderr
    assert path.read_bytes() == before


def test_superblock_block_is_all_there_is_to_a_fresh_target(tmp_path: Path) -> None:
    """Initialising writes the superblock and zeroes the rest of the header area, nothing else."""
    path = tmp_path / "t"
    path.write_bytes(b"\x77" * SIZE)
    with ImageTarget.open_unclaimed(str(path)) as target:
        target.initialise()
    data = path.read_bytes()
    assert data[:8] == b"KJSUPERB" and not any(data[SUPERBLOCK_SIZE:DATA_OFFSET])
    assert data[DATA_OFFSET:] == b"\x77" * (SIZE - DATA_OFFSET)


def test_libblkid_names_what_the_table_does_not_know(tmp_path: Path) -> None:
    """A minix file system is not in the built-in table: where util-linux's blkid is installed (A, and
    the tests) libblkid names it; the target is refused either way."""
    path = blank(tmp_path / "t")
    made = subprocess.run(["mkfs.minix", str(path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert_refused(path, r"is not kjumpd's: it carries minix \(filesystem\); refusing to touch it")
    refused = kjumpctl("target", "init", path)
    assert refused.returncode == 1 and "holds minix (filesystem)" in refused.stderr
