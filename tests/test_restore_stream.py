"""Each byte of an image is read once at resume (issue 13, point 3).

C (the resume check) reads only the records that decide "resume or not";
R checks each chunk just before writing it, and a damaged chunk, even the
last one, found after pages were written, sends R to a normal boot with the
image discarded. ``kjumpctl image restore`` never leaves a half-written
destination behind.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from sim_testing import machine_with_token

from kjumpd import image
from kjumpd.boot import resume
from kjumpd.daemon.hibernator import HibernateSettings, Hibernator
from kjumpd.errors import ImageError
from kjumpd.format import ALIGN, DATA_OFFSET, ChunkHeader, Compression, Handoff, Identity, State
from kjumpd.machine import MachineLostError
from kjumpd.machine.simulated import SimulatedMachine
from kjumpd.memmap import PAGE_SIZE, MemoryMap, Range
from kjumpd.physmem import FileMemory
from kjumpd.target import ImageTarget

from test_cycle_sim import TOKEN, Background, events, token, wait_until

IDENT = Identity(b"B" * 16, b"M" * 16, "6.12.0", b"L" * 32, b"F" * 32)
PAGES = 512
CHUNK = 16


def chunk_positions(path: str) -> list[tuple[int, ChunkHeader]]:
    """Every chunk's position and header, in order."""
    with ImageTarget.open(path, writable=False) as target:
        sb = image.read_superblock(target)
        found = []
        position = DATA_OFFSET
        for _ in range(sb.chunk_count):
            header = ChunkHeader.unpack(target.read(position, ALIGN))
            found.append((position, header))
            position += header.total
    return found


def damage_payload(path: str, position: int, header: ChunkHeader) -> None:
    """Flip one byte in the middle of a chunk's stored payload."""
    at = position + header.size + header.stored_len // 2
    with open(path, "r+b") as disk:
        disk.seek(at)
        byte = disk.read(1)
        disk.seek(at)
        disk.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    """An lz4 image of 512 non-zero pages in 32 chunks, and the memory it came from."""
    memory = b"".join((b"page %06d " % i) * (PAGE_SIZE // 12) + bytes(PAGE_SIZE % 12) for i in range(PAGES))
    (tmp_path / "ram").write_bytes(memory)
    memmap = MemoryMap.from_ranges([Range(0, PAGES * PAGE_SIZE)])
    img = tmp_path / "image"
    handoff = Handoff(IDENT, "shutdown", Compression.LZ4, 1 << 30, 1 << 28, 0x10000, 0x40000, memmap, 3, 1, "d")
    with ImageTarget.create(str(img), image.required_capacity(memmap, CHUNK)) as target, \
            FileMemory(str(tmp_path / "ram")) as source:
        image.save(source, target, handoff, jump_back_entry=0x1000, chunk_pages=CHUNK)
    return img, memory


class CountingReads:
    """Records the position and the length returned of every ImageTarget.read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[int, int]] = []
        real = ImageTarget.read

        def read(target: ImageTarget, position: int, length: int) -> bytes:
            data = real(target, position, length)
            self.reads.append((position, len(data)))
            return data

        monkeypatch.setattr(ImageTarget, "read", read)


def test_restore_reads_the_chunk_stream_once(saved, tmp_path, monkeypatch):
    img, memory = saved
    with ImageTarget.open(str(img), writable=False) as target:
        trailer_at = DATA_OFFSET + image.read_superblock(target).stream_bytes
    dest = tmp_path / "dest"
    dest.write_bytes(b"\xee" * len(memory))
    reads = CountingReads(monkeypatch)
    phases = set()
    with ImageTarget.open(str(img)) as target, FileMemory(str(dest), writable=True) as out:
        image.restore(target, out, progress=lambda done, total, phase: phases.add(phase))
    assert dest.read_bytes() == memory
    assert phases == {"restore"}
    # besides the records (header area, the trailer's block), the stream is read front to back, once
    stream = [(p, n) for p, n in reads.reads if p >= DATA_OFFSET and (p, n) != (trailer_at, ALIGN)]
    assert stream and stream[0][0] == DATA_OFFSET
    assert all(a + n <= b for (a, n), (b, _) in zip(stream, stream[1:], strict=False)), f"the stream was read again: {stream}"
    assert stream[-1][0] + stream[-1][1] >= trailer_at


@pytest.mark.parametrize("which", [0, -1], ids=["first", "last"])
def test_damaged_chunk_discards_the_image(saved, tmp_path, which):
    img, memory = saved
    position, header = chunk_positions(str(img))[which]
    damage_payload(str(img), position, header)
    dest = tmp_path / "dest"
    dest.write_bytes(b"\xee" * len(memory))
    with ImageTarget.open(str(img)) as target, FileMemory(str(dest), writable=True) as out:
        with pytest.raises(ImageError, match=f"chunk {header.index}.*corrupt"):
            image.restore(target, out)
    with ImageTarget.open(str(img), writable=False) as target:
        sb = image.read_superblock(target)
        assert sb.state == State.DISCARDED and sb.reason.startswith(f"restore failed: chunk {header.index}")
        with pytest.raises(ImageError, match="discarded"):
            image.check_headers(target)


def test_check_headers_refuses_a_missing_or_foreign_trailer(saved):
    img, _ = saved
    with ImageTarget.open(str(img), writable=False) as target:
        sb = image.check_headers(target)
    trailer_at = DATA_OFFSET + sb.stream_bytes
    data = img.read_bytes()
    img.write_bytes(data[:trailer_at] + bytes(ALIGN) + data[trailer_at + ALIGN:])
    with ImageTarget.open(str(img), writable=False) as target:
        with pytest.raises(ImageError, match="trailer"):
            image.check_headers(target)


def test_cli_restore_never_leaves_a_half_written_destination(saved, tmp_path):
    img, memory = saved
    position, header = chunk_positions(str(img))[-1]
    damage_payload(str(img), position, header)
    original = img.read_bytes()
    existing = tmp_path / "existing"
    existing.write_bytes(b"\xee" * len(memory))

    def kjumpctl(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kjumpd.ctl", *map(str, args)], capture_output=True, text=True)

    done = kjumpctl("image", "restore", img, existing)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "corrupt" in done.stderr
    assert existing.read_bytes() == b"\xee" * len(memory), "an existing destination is written only after a full check"
    assert img.read_bytes() == original, "a refusal before writing leaves the image alone"
    new = tmp_path / "new"
    done = kjumpctl("image", "restore", img, new)
    assert done.returncode == 1 and "corrupt" in done.stderr and "Traceback" not in done.stderr
    assert not new.exists(), "a destination created for the restore is removed when a chunk is damaged"


# --- on the simulated machine: C and R -------------------------------------------------------

@pytest.fixture
def machine(tmp_path: Path) -> SimulatedMachine:
    return machine_with_token(str(tmp_path / "machine"), TOKEN)


def power_off_with_image(m: SimulatedMachine) -> Background:
    settings = HibernateSettings(image_target=m.target_path, kernel=m.kernel_path, initrd=m.initrd_path,
                                 region_size=4 << 20, compression="lz4")
    job = Background(Hibernator(m, settings), "shutdown")
    wait_until(lambda: m.running == "off" or not job.thread.is_alive(), "B to power off")
    with ImageTarget.open(m.target_path, writable=False) as target:
        assert image.read_superblock(target).state == State.SAVED
    return job


class CountingC(SimulatedMachine):
    """C on the simulated machine, counting what it reads from the image target after opening it."""

    reads: list[tuple[int, int]] = []

    def open_target(self, name: str, *, offset: int = 0, writable: bool = True) -> ImageTarget:
        target = super().open_target(name, offset=offset, writable=writable)
        real = target.read

        def read(position: int, length: int) -> bytes:
            self.reads.append((position, length))
            return real(position, length)

        target.read = read        # type: ignore[method-assign]
        return target


def test_c_reads_only_the_records(machine: SimulatedMachine, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with machine.physical_memory(writable=True) as ram:      # 16 MiB that do not compress
        ram.write(8 << 20, random.Random(13).randbytes(16 << 20))
    job = power_off_with_image(machine)
    with ImageTarget.open(machine.target_path, writable=False) as target:
        sb = image.read_superblock(target)
    trailer_at = DATA_OFFSET + sb.stream_bytes
    assert sb.stream_bytes > 4 * DATA_OFFSET, "the image is larger than what C may read"
    c = CountingC(machine.path, kernel="C")
    c.reads = []
    monkeypatch.setattr(resume, "machine_from_command_line", lambda params, kernel: c)
    try:
        assert resume.main(["--cmdline", machine.kernel_command_line(), "--dry-run"]) == resume.EXIT_CONTINUE
    finally:
        machine.power_cut()
        job.join()
    assert "is valid" in capsys.readouterr().out, "C found the image good to resume"
    assert c.reads, "C read nothing through the machine's target"
    for position, length in c.reads:
        assert position + length <= DATA_OFFSET or (position, length) == (trailer_at, ALIGN), \
            f"C read {length} bytes at {position}: beyond the records"
    assert sum(length for _, length in c.reads) <= DATA_OFFSET + ALIGN


@pytest.mark.parametrize("which", [0, -1], ids=["first", "last"])
def test_damaged_chunk_sends_r_to_a_normal_boot(machine: SimulatedMachine, which: int) -> None:
    job = power_off_with_image(machine)
    chunks = [(p, h) for p, h in chunk_positions(machine.target_path) if h.stored_len]
    position, header = chunks[which]
    damage_payload(machine.target_path, position, header)
    boot = SimulatedMachine(machine.path).power_on()
    job.join()
    assert not boot.resumed
    assert "jump:R" in events(machine), "C let R check the chunks"
    assert f"chunk {header.index}" in boot.output and "normal boot" in boot.output
    assert isinstance(job.error, MachineLostError)
    with ImageTarget.open(machine.target_path, writable=False) as target:
        sb = image.read_superblock(target)
    assert sb.state == State.DISCARDED and sb.reason.startswith(f"restore failed: chunk {header.index}")
    assert token(machine) == bytes(len(TOKEN)), "the normal boot starts with fresh memory"


def test_c_refuses_a_damaged_trailer_without_starting_r(machine: SimulatedMachine) -> None:
    job = power_off_with_image(machine)
    with ImageTarget.open(machine.target_path, writable=False) as target:
        trailer_at = DATA_OFFSET + image.read_superblock(target).stream_bytes
    with open(machine.target_path, "r+b") as disk:
        disk.seek(trailer_at + 20)
        disk.write(b"\xff")
    boot = SimulatedMachine(machine.path).power_on()
    job.join()
    assert not boot.resumed and "trailer" in boot.output and "normal boot" in boot.output
    assert "jump:R" not in events(machine)
