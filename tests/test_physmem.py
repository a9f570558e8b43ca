"""Physical memory sources: /dev/mem access (exercised on a plain file, same mmap code path) and memory files."""

import random
import threading

import pytest

from kjumpd.errors import ImageError
from kjumpd.physmem import DevMem, FileMemory


def test_devmem_reads_and_writes_from_several_threads(tmp_path):
    """The save engine reads with two worker threads; each access must see its own mapping."""
    path = tmp_path / "mem"
    reference = random.Random(1).randbytes(8 << 20)
    path.write_bytes(reference)
    memory = DevMem(str(path), writable=True)
    wrong = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(200):
            address, length = rnd.randrange(0, 7 << 20), rnd.randrange(1, 1 << 20)
            if memory.read(address, length) != reference[address:address + length]:
                wrong.append((address, length))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    memory.write(4095, b"across a page boundary")
    memory.close()
    assert path.read_bytes()[4095:4095 + 22] == b"across a page boundary"


def test_devmem_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="needs CONFIG_DEVMEM and root"):
        DevMem(str(tmp_path / "nope"))


def test_file_memory_refuses_addresses_outside_it(tmp_path):
    path = tmp_path / "ram"
    path.write_bytes(bytes(8192))
    with FileMemory(str(path), base=0x100000, writable=True) as memory:
        assert memory.check_range(0x100000, 8192) is None
        assert "lies outside" in memory.check_range(0xFF000, 4096)
        with pytest.raises(ImageError, match="lies outside"):
            memory.write(0x101000, bytes(8192))
