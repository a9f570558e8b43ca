"""The image target: a block device or a file, at an offset, with a capacity — and kjumpd's alone.

Every program that uses a target (the daemon A, the save program B, the
resume check C, the restore program R, ``kjumpctl image``) opens it with
:meth:`ImageTarget.open`, which is where the ownership rules live:

* a block device is opened with ``O_EXCL``: the kernel refuses while it is
  mounted, used as swap, or held by device-mapper, md or LVM (or by another
  kjumpd program), and nobody can claim it while kjumpd holds it;
* the block at the target's offset must hold a valid kjumpd superblock, which
  ``kjumpctl target init`` writes (:meth:`ImageTarget.initialise`). A blank
  device, or one with another signature (file system, swap, LUKS, RAID,
  partition table), is refused before a byte is written, and the error names
  what is there (:func:`probe_signatures`).

Records that must be durable (superblock state changes, the handoff) are
written and flushed before the next step. On a block device the target is
opened with ``O_DIRECT``: after a jump back A's page cache still holds what the
device contained before the jump, so reads must bypass it. File systems that
refuse ``O_DIRECT`` (tmpfs) get buffered I/O with ``fdatasync``.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import stat
import struct
import subprocess
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .errors import FormatError, ImageError
from .format import DATA_OFFSET, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, State, Superblock, SuperblockRecord

_BLKGETSIZE64 = 0x80081272
_BLKRRPART = 0x125F
_ALIGN = 4096
_ZERO_BLOCK = 1 << 20
# The smallest target: the header area and one block of stream.
MIN_CAPACITY = DATA_OFFSET + 2 * _ALIGN


@dataclass(frozen=True)
class Signature:
    """Something other than kjumpd found on a target: what it is and where its magic lies."""

    kind: str
    offset: int       # bytes from the target's offset; -1 when the prober did not say
    prober: str       # "kjumpd" (the built-in table) or "libblkid"

    def __str__(self) -> str:
        where = f" (magic at byte {self.offset})" if self.offset >= 0 else ""
        return f"{self.kind}{where}"


# --- probing for other signatures ---------------------------------------------------

_MD_MAGIC = struct.pack("<I", 0xA92B4EFC)
_BCACHE_MAGIC = bytes.fromhex("c68573f64e1a45ca8265f57f48ba6d81")
_SWAP_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
_LUKS2_SECONDARY = tuple(16384 << i for i in range(9))          # 16 KiB … 4 MiB


def _fixed_signatures(size: int) -> list[tuple[str, int, bytes]]:
    """(kind, offset, magic) of the signatures found by their magic at a fixed place."""
    table = [
        ("LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
        ("XFS file system", 0, b"XFSB"),
        ("ext2/ext3/ext4 file system", 1080, b"\x53\xef"),
        ("F2FS file system", 1024, b"\x10\x20\xf5\xf2"),
        ("btrfs file system", 65600, b"_BHRfS_M"),
        ("squashfs", 0, b"hsqs"),
        ("ISO 9660 file system", 32769, b"CD001"),
        ("NTFS file system", 3, b"NTFS    "),
        ("exFAT file system", 3, b"EXFAT   "),
        ("FAT file system", 54, b"FAT12   "),
        ("FAT file system", 54, b"FAT16   "),
        ("FAT file system", 82, b"FAT32   "),
        ("Linux RAID member (md 1.1)", 0, _MD_MAGIC),
        ("Linux RAID member (md 1.2)", 4096, _MD_MAGIC),
        ("Linux RAID member (md 1.0)", (size - 8192) & ~4095, _MD_MAGIC),
        ("Linux RAID member (md 0.90)", (size & ~65535) - 65536, _MD_MAGIC),
        ("bcache device", 4096 + 24, _BCACHE_MAGIC),
        ("dm-integrity device", 0, b"integrt"),
        ("dm-verity device", 0, b"verity\0\0"),
        ("GPT partition table", 512, b"EFI PART"),
        ("GPT partition table", 4096, b"EFI PART"),
        ("GPT partition table (backup header)", size - 512, b"EFI PART"),
        ("GPT partition table (backup header)", size - 4096, b"EFI PART"),
    ]
    table += [("LUKS2 encrypted volume (secondary header)", at, b"SKUL\xba\xbe") for at in _LUKS2_SECONDARY]
    for page in _SWAP_PAGE_SIZES:
        table += [("swap space", page - 10, b"SWAPSPACE2"), ("swap space", page - 10, b"SWAP-SPACE"),
                  ("swap space holding a hibernation image", page - 10, b"S1SUSPEND"),
                  ("swap space holding a hibernation image", page - 10, b"ULSUSPEND")]
    table += [("LVM2 physical volume", sector * 512, b"LABELONE") for sector in range(4)]
    return table


def probe_signatures(read: Callable[[int, int], bytes], size: int) -> list[Signature]:
    """Other signatures on a target of ``size`` bytes, read through ``read(position, length)``.

    A table of well-known magic numbers at their fixed offsets (what
    libblkid looks for first), so that every stage can use it: B's initramfs
    has neither libblkid nor a ``blkid`` (Debian's static busybox lacks the
    applet). :func:`blkid_signatures` is asked where the table finds nothing.
    """
    blocks: dict[int, bytes] = {}

    def at(offset: int, magic: bytes) -> bool:
        if offset < 0 or offset + len(magic) > size:
            return False
        first = offset - offset % _ALIGN
        data = b""
        for block in range(first, offset + len(magic), _ALIGN):
            if block not in blocks:
                blocks[block] = read(block, _ALIGN)
            data += blocks[block]
        return data[offset - first:offset - first + len(magic)] == magic

    found: list[Signature] = []
    for kind, offset, magic in _fixed_signatures(size):
        if kind == "LVM2 physical volume":
            if at(offset, magic) and at(offset + 24, b"LVM2 001"):
                found.append(Signature(kind, offset, "kjumpd"))
        elif at(offset, magic) and all(kind != s.kind for s in found):
            found.append(Signature(kind, offset, "kjumpd"))
    if at(510, b"\x55\xaa") and not any(s.offset in (3, 54, 82) for s in found):
        sector = blocks[0][:512]
        entries = [sector[446 + 16 * i:462 + 16 * i] for i in range(4)]
        if all(e[0] in (0, 0x80) for e in entries) and any(e[4] for e in entries):
            kind = "GPT protective MBR" if any(e[4] == 0xEE for e in entries) else "DOS partition table"
            found.append(Signature(kind, 510, "kjumpd"))
    return found


@lru_cache(maxsize=1)
def _util_linux_blkid() -> str | None:
    """util-linux's ``blkid`` (the one with libblkid's low-level probe ``-p``), or None."""
    path = shutil.which("blkid")
    if path is None:
        return None
    try:
        version = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "util-linux" in version.stdout else None


def blkid_signatures(path: str, offset: int) -> list[Signature]:
    """What libblkid's low-level probe (``blkid -p``) finds at ``offset`` of ``path``; [] without it."""
    blkid = _util_linux_blkid()
    if blkid is None:
        return []
    try:
        result = subprocess.run([blkid, "-p", "-o", "export", "-O", str(offset), path],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode == 8:       # "ambivalent": more than one signature
        return [Signature(f"several signatures (blkid: {result.stderr.strip()})", -1, "libblkid")]
    if result.returncode != 0:
        return []
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    found = []          # blkid -p does not say where the magic lies (offset -1)
    if "TYPE" in values:
        usage = f" ({values['USAGE']})" if values.get("USAGE") else ""
        label = f" labelled {values['LABEL']!r}" if values.get("LABEL") else ""
        found.append(Signature(f"{values['TYPE']}{usage}{label}", -1, "libblkid"))
    if "PTTYPE" in values:
        found.append(Signature(f"{values['PTTYPE']} partition table", -1, "libblkid"))
    return found


# --- the target ---------------------------------------------------------------------

class TargetExistsError(ImageError):
    """:meth:`ImageTarget.create` found something at the path (a file, a link, a device)."""


def _open_error(path: str, exc: OSError) -> ImageError:
    """The refusal for a failed open, worded for what the kernel said."""
    if exc.errno == errno.EBUSY:
        return ImageError(f"image target {path} is in use (mounted, active swap, or held by device-mapper, "
                          "RAID, LVM or another program): kjumpd uses only a device nothing else holds")
    if exc.errno == errno.ETXTBSY:
        return ImageError(f"image target {path} is an active swap file: kjumpd will not write to it")
    return ImageError(f"cannot open image target {path}: {exc.strerror}")


class ImageTarget:
    """Positioned, aligned, durable I/O on an image target that kjumpd holds."""

    def __init__(self, path: str, fd: int, offset: int, capacity: int, *, direct: bool,
                 writable: bool, block: bool) -> None:
        self.path = path
        self.offset = offset
        self.capacity = capacity
        self.direct = direct
        self.writable = writable
        self.block = block
        self.uuid = bytes(16)       # from the superblock, once claimed (see open)
        self._fd = fd

    @classmethod
    def open(cls, path: str, *, offset: int = 0, capacity: int | None = None,
             writable: bool = True) -> ImageTarget:
        """Open an initialised target, exclusively when it is a block device.

        Raises ImageError with the reason when the target is missing, busy,
        not a file or block device, misaligned, smaller than ``offset``, not
        initialised, or carrying someone else's signature; nothing is written
        then.
        """
        target = cls.open_unclaimed(path, offset=offset, capacity=capacity, writable=writable)
        try:
            target.uuid = target._claim()
        except BaseException:
            target.close()
            raise
        return target

    @classmethod
    def open_unclaimed(cls, path: str, *, offset: int = 0, capacity: int | None = None,
                       writable: bool = True) -> ImageTarget:
        """Open without checking what the target holds (``kjumpctl target init`` only).

        A block device is still opened exclusively (Linux: ``O_EXCL`` without
        ``O_CREAT`` claims a block device and means nothing for other files).
        """
        if offset < 0 or offset % _ALIGN:
            raise ImageError(f"image offset {offset} is not a non-negative multiple of {_ALIGN}")
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _open_error(path, exc) from None
        return cls._from_fd(path, fd, offset, capacity, writable)

    @classmethod
    def create(cls, path: str, size: int) -> ImageTarget:
        """Create a new regular file of ``size`` bytes (mode 0600) and initialise it as a target.

        ``O_CREAT|O_EXCL|O_NOFOLLOW``: refuses an existing file or a symbolic
        link (TargetExistsError; nothing is followed or replaced); the file is
        removed again if anything fails.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise TargetExistsError(f"cannot create image file {path}: it exists") from None
        except OSError as exc:
            raise ImageError(f"cannot create image file {path}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, max(size, MIN_CAPACITY))
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            raise ImageError(f"cannot make image file {path} {size} bytes long: {exc.strerror}") from None
        try:
            target = cls._from_fd(path, fd, 0, None, True)      # closes fd if it fails
        except BaseException:
            os.unlink(path)
            raise
        try:
            target.initialise()
        except BaseException:
            target.close()
            os.unlink(path)
            raise
        return target

    @classmethod
    def _from_fd(cls, path: str, fd: int, offset: int, capacity: int | None, writable: bool) -> ImageTarget:
        try:
            info = os.fstat(fd)
            block = stat.S_ISBLK(info.st_mode)
            if not block and not stat.S_ISREG(info.st_mode):
                raise ImageError(f"image target {path} is neither a block device nor a regular file")
            if block:
                size = struct.unpack("<Q", fcntl.ioctl(fd, _BLKGETSIZE64, bytes(8)))[0]
            else:
                size = info.st_size
            if offset >= size and not (size == 0 and offset == 0):
                raise ImageError(f"image offset {offset} lies beyond the end of {path} ({size} bytes)")
            available = size - offset
            cap = available if capacity is None else min(capacity, available)
            direct = False
            if block:
                try:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
                    direct = True
                except OSError:
                    direct = False
        except OSError as exc:
            os.close(fd)
            raise ImageError(f"cannot use image target {path}: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, offset, cap, direct=direct, writable=writable, block=block)

    # --- ownership ------------------------------------------------------------------

    def _init_hint(self) -> str:
        offset = f" --offset {self.offset}" if self.offset else ""
        return f"kjumpctl target init{offset} {self.path}"

    def _claim(self) -> bytes:
        """The target's UUID if its superblock is kjumpd's; ImageError saying what is there otherwise."""
        block = self.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
        if len(block) < SUPERBLOCK_SIZE:
            raise ImageError(f"image target {self.path} is too small to hold a superblock")
        try:
            return Superblock.unpack(block).target_uuid
        except FormatError as exc:
            problem = exc
        if block.startswith(SuperblockRecord.MAGIC):
            raise ImageError(f"image target {self.path} has a kjumpd superblock this kjumpd cannot use "
                             f"({problem}); `{self._init_hint()} --force` makes it a fresh target "
                             "(what it holds is lost)")
        found = self.signatures()
        if found:
            raise ImageError(f"image target {self.path} is not kjumpd's: it carries "
                             f"{'; '.join(map(str, found))}; refusing to touch it")
        if not any(block):
            raise ImageError(f"image target {self.path} is not initialised: run `{self._init_hint()}` first")
        raise ImageError(f"image target {self.path} holds data that is not kjumpd's (no kjumpd superblock); "
                         f"`{self._init_hint()}` would make it a target")

    def signatures(self) -> list[Signature]:
        """Other signatures on the target: the built-in table's; libblkid's (where installed) when the
        table knows none of them, so that every stage names a known kind the same way."""
        return probe_signatures(self.read, self.capacity) or blkid_signatures(self.path, self.offset)

    def survey(self) -> tuple[Superblock | None, list[str]]:
        """What initialising would destroy: (kjumpd superblock if valid, descriptions of everything else)."""
        block = self.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
        try:
            superblock: Superblock | None = Superblock.unpack(block)
        except FormatError as exc:
            superblock = None
            problem = exc
        found: list[str] = []
        if superblock is None and block.startswith(SuperblockRecord.MAGIC):
            found.append(f"a kjumpd superblock this kjumpd cannot use ({problem})")
        elif superblock is not None and superblock.state in (State.SAVING, State.SAVED, State.RESUMING,
                                                             State.RESTORING):
            found.append(f"a kjumpd hibernation image in state {superblock.state.name}")
        found += [str(s) for s in self.signatures()]
        if superblock is None and not found and any(self.read(0, min(self.capacity, DATA_OFFSET))):
            found.append("data of unknown kind in the first 4 MiB")
        return superblock, found

    def initialise(self) -> bytes:
        """Make the target kjumpd's; returns its new UUID.

        Zeroes the header area (superblock and handoff) and the blocks where
        other signatures' magic was found, writes an EMPTY superblock with a
        new UUID, durably, asks the kernel to drop a stale partition table,
        and checks that no other signature is left (ImageError if one is).
        """
        if self.capacity < MIN_CAPACITY:
            raise ImageError(f"image target {self.path} is too small: {self.capacity} bytes, "
                             f"at least {MIN_CAPACITY} needed")
        blocks = {s.offset - s.offset % _ALIGN for s in self.signatures() if s.offset >= DATA_OFFSET}
        self.zero(0, DATA_OFFSET)
        for block in sorted(blocks):
            self.zero(block, min(_ALIGN, self.capacity - block))
        new = uuidlib.uuid4().bytes
        self.write(SUPERBLOCK_OFFSET, Superblock(target_uuid=new).pack())
        self.sync()
        if self.block and self.offset == 0:
            try:
                fcntl.ioctl(self._fd, _BLKRRPART)
            except OSError:
                pass        # not a partitioned disk (a partition, or a loop device without partscan)
        left = self.signatures()
        if left:
            raise ImageError(f"{self.path} still carries {'; '.join(map(str, left))} after initialising; "
                             "wipe it (wipefs -a) and try again")
        self.uuid = new
        return new

    # --- I/O -----------------------------------------------------------------------

    def read(self, position: int, length: int) -> bytes:
        """Read ``length`` bytes at ``position`` (relative to the offset); short at the end."""
        if position < 0 or position > self.capacity:
            raise ImageError(f"read at {position} outside the image target ({self.capacity} bytes)")
        length = max(0, min(length, self.capacity - position))
        try:
            if not self.direct:
                return os.pread(self._fd, length, self.offset + position)
            start = position - position % _ALIGN
            size = max(_ALIGN, -(-(position + length - start) // _ALIGN) * _ALIGN)
            with mmap.mmap(-1, size) as buf:
                got = os.preadv(self._fd, [buf], self.offset + start)
                return buf[position - start: min(got, position - start + length)]
        except OSError as exc:
            raise ImageError(f"read from image target {self.path} failed: {exc.strerror}") from None

    def write(self, position: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``position``; it must fit inside the capacity."""
        if not self.writable:
            raise ImageError(f"image target {self.path} is open read-only")
        if position < 0 or position + len(data) > self.capacity:
            raise ImageError(
                f"write of {len(data)} bytes at {position} exceeds the image target's capacity "
                f"({self.capacity} bytes)")
        if not self.direct:
            self._pwrite_all(data, position)
            return
        if position % _ALIGN or len(data) % _ALIGN:
            raise ValueError("O_DIRECT writes must be aligned")
        with mmap.mmap(-1, len(data)) as buf:
            buf[:] = data
            self._pwrite_all(buf, position)

    def zero(self, position: int, length: int) -> None:
        """Write zeros over ``length`` bytes at ``position`` (aligned on a block device)."""
        zeros = bytes(min(length, _ZERO_BLOCK))
        end = position + length
        while position < end:
            step = min(len(zeros), end - position)
            self.write(position, memoryview(zeros)[:step])
            position += step

    def _pwrite_all(self, data: bytes | bytearray | memoryview | mmap.mmap, position: int) -> None:
        """pwrite until everything is written; ImageError on failure.

        The error is raised after every view of ``data`` is gone (the
        traceback, which holds the frames that held them, is dropped): a
        buffer still exported when the caller closes its mmap would turn the
        error into a BufferError.
        """
        failure: OSError | None = None
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                try:
                    done += os.pwrite(self._fd, view[done:], self.offset + position + done)
                except OSError as exc:
                    failure = exc.with_traceback(None)
                    break
        if failure is not None:
            raise ImageError(f"write to image target {self.path} failed: {failure.strerror}") from None

    def sync(self) -> None:
        """Make every write so far durable."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise ImageError(f"flushing image target {self.path} failed: {exc.strerror}") from exc

    def close(self) -> None:
        """Close the target."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ImageTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
