"""The image target is kjumpd's alone, on real block devices (loop devices, issue 10 §2, issue 16.12).

A real ext4, real swap (also active), a real LUKS header (also opened), a
real partition table: each is refused by ImageTarget.open (which every
program uses), by ``kjumpctl image write`` and by ``kjumpctl target init``
without ``--force``, and the device is byte for byte untouched afterwards.

These need root and loop devices; where the machine has none they are
skipped, saying why (marker ``loopdev``). The programs run in processes of
their own without umockdev's preload library (``make check`` runs under
umockdev-wrapper, whose ``open`` reports the kernel's EBUSY as ENOENT).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kjumpd import image
from kjumpd.format import Compression, Handoff, Identity, State
from kjumpd.memmap import PAGE_SIZE, MemoryMap, Range
from kjumpd.physmem import FileMemory
from kjumpd.target import ImageTarget

pytestmark = pytest.mark.loopdev

DEVICE_SIZE = 64 << 20


CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("UMOCKDEV")}
# ImageTarget.open, as every kjumpd program calls it, and a superblock write through it.
OPEN_AND_WRITE = """
import sys
from kjumpd import image
from kjumpd.errors import ImageError
from kjumpd.format import Superblock
from kjumpd.target import ImageTarget
try:
    with ImageTarget.open(sys.argv[1], writable=sys.argv[2] == "rw") as target:
        image.write_superblock(target, Superblock())
except ImageError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def run(*argv: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=CLEAN_ENV,
                          **kwargs)  # type: ignore[call-overload]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: install what packaging/deps/test.txt lists", pytrace=False)
    return path


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device over a sparse file; skipped only where loop devices cannot be attached."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "backing"
    with open(backing, "wb") as handle:
        handle.truncate(DEVICE_SIZE)
    attached = run(need("losetup"), "--find", "--show", backing)
    if attached.returncode != 0:
        pytest.skip(f"this machine cannot attach a loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        yield device
    finally:
        run("umount", device)
        run("swapoff", device)
        run("losetup", "--detach", device)


def digest(device: str) -> str:
    with open(device, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def kjumpctl(*args: object) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "kjumpd.ctl", *args)


def memory_file(tmp_path: Path, pages: int = 256) -> Path:
    path = tmp_path / "ram"
    path.write_bytes(b"".join(bytes([i % 200 + 1]) * PAGE_SIZE if i % 3 else bytes(PAGE_SIZE) for i in range(pages)))
    return path


def assert_refused_everywhere(device: str, tmp_path: Path, match: str, *, init_lists: str | None,
                              unchanged: bool = True) -> None:
    """Every way in refuses ``device`` with ``match``; the device is untouched.

    ``init_lists``: what ``kjumpctl target init`` (no --force) says the device
    holds; None when it is busy (then init is refused even with --force).
    ``unchanged``: compare the whole device before and after (not for a file
    system mounted read-write, which writes to itself).
    """
    before = digest(device)
    for mode in ("rw", "ro"):
        opened = run(sys.executable, "-c", OPEN_AND_WRITE, device, mode)
        assert opened.returncode == 1 and re.search(match, opened.stderr), opened.stderr
        assert "Traceback" not in opened.stderr
    written = kjumpctl("image", "write", memory_file(tmp_path), device)
    assert written.returncode == 1 and "Traceback" not in written.stderr, written.stderr
    assert len(written.stderr.strip().splitlines()) == 1
    init = kjumpctl("target", "init", device)
    assert init.returncode == 1 and "Traceback" not in init.stderr
    if init_lists is not None:
        assert f"holds {init_lists}" in init.stderr and "--force" in init.stderr, init.stderr
    else:
        assert "in use" in init.stderr
        forced = kjumpctl("target", "init", "--force", device)
        assert forced.returncode == 1 and "in use" in forced.stderr
    if unchanged:
        assert digest(device) == before, "a refused target was changed"


def test_unmounted_ext4_is_refused(loop: str, tmp_path: Path) -> None:
    assert run(need("mkfs.ext4"), "-q", "-F", loop).returncode == 0
    assert_refused_everywhere(loop, tmp_path, "not kjumpd's: it carries .*ext", init_lists="ext")


def mount(device: str, mountpoint: Path, *options: str) -> None:
    mountpoint.mkdir(exist_ok=True)
    mounted = run("mount", *options, device, mountpoint)
    if mounted.returncode != 0:
        pytest.skip(f"this machine cannot mount an ext4 loop device: {mounted.stderr.strip()}")


def test_mounted_ext4_is_refused(loop: str, tmp_path: Path) -> None:
    """Issue 16.12: `kjumpctl image write` onto a mounted file system used to destroy its superblock."""
    assert run(need("mkfs.ext4"), "-q", "-F", loop).returncode == 0
    mountpoint = tmp_path / "mnt"
    mount(loop, mountpoint, "-o", "ro,noload")          # writes nothing itself: the bytes must stay equal
    assert_refused_everywhere(loop, tmp_path, "is in use", init_lists=None)
    assert run("umount", mountpoint).returncode == 0
    mount(loop, mountpoint)
    (mountpoint / "precious").write_bytes(b"data" * 1000)
    assert_refused_everywhere(loop, tmp_path, "is in use", init_lists=None, unchanged=False)
    assert run("umount", mountpoint).returncode == 0
    checked = run(need("e2fsck"), "-f", "-n", loop)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    mount(loop, mountpoint, "-o", "ro")
    assert (mountpoint / "precious").read_bytes() == b"data" * 1000


def test_swap_is_refused_and_active_swap_without_a_traceback(loop: str, tmp_path: Path) -> None:
    """Issue 16.12: active swap made the old error path end in a BufferError traceback."""
    assert run(need("mkswap"), loop).returncode == 0
    assert_refused_everywhere(loop, tmp_path, "not kjumpd's: it carries .*swap", init_lists="swap")
    active = run(need("swapon"), loop)
    if active.returncode != 0:
        pytest.skip(f"this machine cannot swap on a loop device: {active.stderr.strip()}")
    assert_refused_everywhere(loop, tmp_path, "is in use", init_lists=None)


def luks_format(device: str, tmp_path: Path) -> Path:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(64))
    formatted = run(need("cryptsetup"), "luksFormat", "--batch-mode", "--key-file", key, "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", device)
    assert formatted.returncode == 0, formatted.stderr
    return key


def test_luks_is_refused(loop: str, tmp_path: Path) -> None:
    luks_format(loop, tmp_path)
    assert_refused_everywhere(loop, tmp_path, "not kjumpd's: it carries .*LUKS", init_lists="LUKS")


def test_open_luks_is_refused(loop: str, tmp_path: Path) -> None:
    key = luks_format(loop, tmp_path)
    name = f"kjumpd-test-{os.getpid()}"
    opened = run("cryptsetup", "open", "--key-file", key, loop, name)
    if opened.returncode != 0:
        pytest.skip(f"this machine cannot open a LUKS volume (device-mapper): {opened.stderr.strip()}")
    try:
        assert_refused_everywhere(loop, tmp_path, "is in use", init_lists=None)
    finally:
        run("cryptsetup", "close", name)


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partition_table_is_refused(loop: str, tmp_path: Path, label: str) -> None:
    table = run(need("sfdisk"), "--quiet", "--no-reread", loop, input=f"label: {label}\n,16M\n,\n")
    assert table.returncode == 0, table.stderr
    kind = "DOS partition table" if label == "dos" else "GPT"
    assert_refused_everywhere(loop, tmp_path, f"not kjumpd's: it carries .*{kind}",
                              init_lists="DOS partition table" if label == "dos" else "GPT protective MBR")


def test_init_with_force_then_a_full_cycle_on_the_device(loop: str, tmp_path: Path) -> None:
    """After `target init --force` the ext4 is gone (blkid agrees) and an image round-trips through O_DIRECT."""
    assert run(need("mkfs.ext4"), "-q", "-F", loop).returncode == 0
    forced = kjumpctl("target", "init", "--force", loop)
    assert forced.returncode == 0 and "destroying ext" in forced.stderr, forced.stderr
    assert run(need("blkid"), "-p", loop).returncode == 2, "blkid still finds a signature"
    memory = memory_file(tmp_path)
    memmap = MemoryMap.from_ranges([Range(0, memory.stat().st_size)])
    handoff = Handoff(Identity(), "shutdown", Compression.LZ4, 0, 0, 0, 0, memmap)
    with ImageTarget.open(loop) as target, FileMemory(str(memory)) as source:
        assert target.direct
        image.save(source, target, handoff, chunk_pages=16)
    dest = tmp_path / "dest"
    dest.write_bytes(bytes(memory.stat().st_size))
    with ImageTarget.open(loop) as target, FileMemory(str(dest), writable=True) as out:
        assert image.restore(target, out).state == State.RESTORED
        second = run(sys.executable, "-c", OPEN_AND_WRITE, loop, "ro")    # kjumpd holds it: nobody else gets it
        assert second.returncode == 1 and "is in use" in second.stderr
    assert dest.read_bytes() == memory.read_bytes()
