"""Physical memory as a byte source and sink for the image engine.

Two kinds: a plain file that stands for RAM from a base physical address (the
simulated machine, tests, ``kjumpctl image``), and ``/dev/mem`` on the real
machine. ``/dev/mem`` is reached through ``mmap``: in the hibernate kernel
``read()``/``write()`` stop at its own top of RAM, ``mmap`` does not, and A's
RAM lies above it (docs/machine.md; seen on a real kernel in QEMU).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from abc import ABC, abstractmethod

from .errors import ImageError


class PhysicalMemory(ABC):
    """Read and write physical memory by address."""

    @abstractmethod
    def read(self, address: int, length: int) -> bytes:
        """Return ``length`` bytes from physical ``address``."""

    @abstractmethod
    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at physical ``address``."""

    def check_range(self, address: int, length: int) -> str | None:
        """Why ``[address, address+length)`` cannot be written here; None when it can."""
        return None

    def flush(self) -> None:
        """Make written data durable where that means anything (files)."""

    def close(self) -> None:
        """Release the underlying file."""

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileMemory(PhysicalMemory):
    """A file standing for RAM: file offset = physical address - ``base``.

    A writable one is never opened through a symbolic link: what is written
    there is RAM, and a link could point anywhere.
    """

    def __init__(self, path: str, *, base: int = 0, writable: bool = False) -> None:
        self.path = path
        self.base = base
        flags = (os.O_RDWR | os.O_NOFOLLOW if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageError(f"memory file {path} is a symbolic link: refusing to write through it") from None
            raise ImageError(f"cannot open memory file {path}: {exc.strerror}") from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            raise ImageError(f"memory file {path} is not a regular file")
        self.size = info.st_size

    def check_range(self, address: int, length: int) -> str | None:
        """Why the range lies outside the file; None when it is inside."""
        offset = address - self.base
        if offset < 0 or offset + length > self.size:
            return (f"physical range {address:#x}-{address + length - 1:#x} lies outside "
                    f"{self.path}, which holds {self.base:#x}-{self.base + self.size - 1:#x}")
        return None

    def _offset(self, address: int, length: int) -> int:
        problem = self.check_range(address, length)
        if problem:
            raise ImageError(problem)
        return address - self.base

    def read(self, address: int, length: int) -> bytes:
        """Read with ``pread`` (the page cache copy is the fastest route for a file)."""
        try:
            data = os.pread(self._fd, length, self._offset(address, length))
        except OSError as exc:
            raise ImageError(f"reading memory file {self.path} at {address:#x} failed: {exc.strerror}") from None
        if len(data) != length:
            raise ImageError(f"short read from memory file {self.path} at {address:#x}")
        return data

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Write with ``pwrite``."""
        offset = self._offset(address, len(data))
        view = memoryview(data)
        try:
            while view:
                done = os.pwrite(self._fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise ImageError(f"writing memory file {self.path} at {address:#x} failed: {exc.strerror}") from None

    def flush(self) -> None:
        """fsync the file."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise ImageError(f"flushing memory file {self.path} failed: {exc.strerror}") from None

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DevMem(PhysicalMemory):
    """``/dev/mem`` through ``mmap`` (reaches RAM above the running kernel's own).

    Each access maps just the pages it touches and unmaps them after, so the
    image engine's worker threads can read and write concurrently without
    sharing a mapping.
    """

    def __init__(self, path: str = "/dev/mem", *, writable: bool = False) -> None:
        self.path = path
        self.writable = writable
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_SYNC
        try:
            self._fd = os.open(path, flags)
        except OSError as exc:
            raise ImageError(f"cannot open {path}: {exc.strerror} (needs CONFIG_DEVMEM and root)") from exc

    def _mapped(self, address: int, length: int) -> tuple[mmap.mmap, int]:
        start = address - address % mmap.PAGESIZE
        size = address + length - start
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
        try:
            return mmap.mmap(self._fd, size, mmap.MAP_SHARED, prot, offset=start), address - start
        except OSError as exc:
            raise ImageError(f"cannot map physical memory {address:#x}+{length:#x}: {exc.strerror}") from exc

    def read(self, address: int, length: int) -> bytes:
        """Copy ``length`` bytes out of a fresh mapping."""
        area, offset = self._mapped(address, length)
        try:
            return area[offset:offset + length]
        finally:
            area.close()

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into a fresh mapping."""
        area, offset = self._mapped(address, len(data))
        try:
            area[offset:offset + len(data)] = data
        finally:
            area.close()

    def close(self) -> None:
        """Close ``/dev/mem``."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
