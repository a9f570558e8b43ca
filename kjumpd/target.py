"""The image target: a block device or a file, at an offset, with a capacity.

Records that must be durable (superblock state changes, the handoff) are
written and flushed before the next step. On a block device the target is
opened with ``O_DIRECT``: after a jump back A's page cache still holds what the
device contained before the jump, so reads must bypass it. File systems that
refuse ``O_DIRECT`` (tmpfs) get buffered I/O with ``fdatasync``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct

from .errors import ImageError

_BLKGETSIZE64 = 0x80081272
_ALIGN = 4096


class ImageTarget:
    """Positioned, aligned, durable I/O on an image target."""

    def __init__(self, path: str, fd: int, offset: int, capacity: int, *, direct: bool,
                 writable: bool) -> None:
        self.path = path
        self.offset = offset
        self.capacity = capacity
        self.direct = direct
        self.writable = writable
        self._fd = fd

    @classmethod
    def open(cls, path: str, *, offset: int = 0, capacity: int | None = None,
             writable: bool = True, create_size: int | None = None) -> "ImageTarget":
        """Open ``path``; ``create_size`` creates a missing regular file of that size.

        Raises ImageError with the reason when the target is missing, not a file
        or block device, misaligned, or smaller than ``offset``.
        """
        if offset % _ALIGN:
            raise ImageError(f"image offset {offset} is not a multiple of {_ALIGN}")
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create_size is not None and not os.path.exists(path):
            flags |= os.O_CREAT
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ImageError(f"cannot open image target {path}: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            block = stat.S_ISBLK(info.st_mode)
            if not block and not stat.S_ISREG(info.st_mode):
                raise ImageError(f"image target {path} is neither a block device nor a regular file")
            if block:
                size = struct.unpack("<Q", fcntl.ioctl(fd, _BLKGETSIZE64, bytes(8)))[0]
            else:
                if create_size is not None and info.st_size < create_size:
                    os.ftruncate(fd, create_size)
                size = os.fstat(fd).st_size
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
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, offset, cap, direct=direct, writable=writable)

    def read(self, position: int, length: int) -> bytes:
        """Read ``length`` bytes at ``position`` (relative to the offset); short at the end."""
        if position < 0 or position > self.capacity:
            raise ImageError(f"read at {position} outside the image target ({self.capacity} bytes)")
        length = min(length, self.capacity - position)
        if not self.direct:
            return os.pread(self._fd, length, self.offset + position)
        start = position - position % _ALIGN
        size = -(-(position + length - start) // _ALIGN) * _ALIGN
        buf = mmap.mmap(-1, size)
        try:
            got = os.preadv(self._fd, [buf], self.offset + start)
            return bytes(buf[position - start: min(got, position - start + length)])
        finally:
            buf.close()

    def write(self, position: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``position``; it must fit inside the capacity."""
        if not self.writable:
            raise ImageError(f"image target {self.path} is open read-only")
        if position < 0 or position + len(data) > self.capacity:
            raise ImageError(
                f"write of {len(data)} bytes at {position} exceeds the image target's capacity "
                f"({self.capacity} bytes)")
        if self.direct:
            if position % _ALIGN or len(data) % _ALIGN:
                raise ValueError("O_DIRECT writes must be aligned")
            buf = mmap.mmap(-1, len(data))
            try:
                buf[:] = data
                self._pwrite_all(memoryview(buf), position)
            finally:
                buf.close()
        else:
            self._pwrite_all(memoryview(data), position)

    def _pwrite_all(self, view: memoryview, position: int) -> None:
        offset = self.offset + position
        while view:
            try:
                done = os.pwrite(self._fd, view, offset)
            except OSError as exc:
                raise ImageError(f"write to image target {self.path} failed: {exc.strerror}") from exc
            view, offset = view[done:], offset + done

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

    def __enter__(self) -> "ImageTarget":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
