"""kjumpd.host.initramfs: the hibernate kernel's initramfs (B and R).

The archive is built into a temporary directory, listed with ``cpio``,
unpacked, and its Python is run inside the unpacked tree with ``chroot``, so
what is tested is exactly what B and R get. Building needs the system Python
(/usr/bin/python3), busybox-static and kexec-tools (packaging/deps).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kjumpd import kexec
from kjumpd.host import initramfs
from kjumpd.host.initramfs import InitramfsError

REAL_PKG = Path(initramfs.__file__).resolve().parent.parent
NEEDS = [initramfs.DEFAULT_PYTHON, initramfs.DEFAULT_BUSYBOX, initramfs.DEFAULT_KEXEC]
pytestmark = pytest.mark.skipif(
    not all(os.access(p, os.X_OK) for p in NEEDS) or shutil.which("cpio") is None,
    reason=f"needs {', '.join(NEEDS)} and cpio (packaging/deps/runtime.txt, test.txt)")

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="unpacking device nodes and chroot need root")

STUB = '''"""stand-in program for the initramfs builder's own tests"""
import mmap, struct
from .. import errors


def main():
    print("KJUMP-STUB", __name__)


if __name__ == "__main__":
    main()
'''


def _stub_package(tmp: Path) -> Path:
    """A copy of kjumpd with stub save/restore programs (the builder's mechanics
    do not depend on what the programs do)."""
    pkg = tmp / "pkgsrc" / "kjumpd"
    shutil.copytree(REAL_PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("save.py", "restore.py"):
        (pkg / "boot" / name).write_text(STUB)
    return pkg


def _list(archive: Path) -> dict[str, str]:
    """path → `ls -l`-style mode string, from cpio's verbose listing."""
    out = subprocess.run(f"zcat {archive} | cpio -itv --quiet", shell=True, check=True,
                         capture_output=True, text=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split()
        name = fields[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1]
        entries[name] = fields[0]
    return entries


def _unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(f"zcat {archive} | cpio -idm --quiet", shell=True, check=True, cwd=dest)
    return dest


def _chroot_python(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
           "PYTHONPATH": initramfs.SITE_DIR, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["chroot", str(root), "/usr/bin/python3", "-S", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def stub_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("initramfs")
    pkg = _stub_package(tmp)
    out = tmp / "out" / "initramfs.img"
    result = initramfs.build(str(out), package_dir=str(pkg))
    return tmp, pkg, out, result


def test_archive_is_gzip_newc_with_init(stub_build):
    _, _, out, result = stub_build
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    entries = _list(out)
    assert entries["init"].startswith("-rwxr-xr-x")
    assert entries["dev/console"].startswith("c")
    for path in ("usr/bin/busybox", "usr/sbin/kexec", "usr/bin/python3.11",
                 "usr/lib/kjumpd/jumpback.py", "usr/lib/python3/dist-packages/kjumpd/__init__.py",
                 "usr/lib/python3/dist-packages/kjumpd/boot/save.py",
                 "usr/lib/python3/dist-packages/kjumpd/boot/restore.py"):
        assert path in entries, path
    # merged /usr like the host, so ELF interpreters and #! lines resolve
    assert entries["bin"].startswith("l") and entries["lib64"].startswith("l")
    assert entries["usr/bin/sh"].startswith("l")  # a busybox applet
    assert result.files == len(entries)
    assert result.size == out.stat().st_size


def test_size_is_reported_and_small(stub_build):
    _, _, out, result = stub_build
    # measured: about 6.6 MiB compressed / 16 MiB unpacked; a jump in size
    # means the module finder pulled in far more of the stdlib than needed
    assert result.size < 12 << 20, result.summary()
    assert result.uncompressed_size < 32 << 20, result.summary()
    assert "MiB compressed" in result.summary()


def test_only_needed_stdlib_modules(stub_build):
    _, _, _, result = stub_build
    mods = set(result.python_modules)
    for needed in ("runpy", "mmap", "ctypes", "lz4.frame", "zstandard", "xxhash", "kjumpd.errors",
                   "kjumpd.boot.save", "kjumpd.boot.restore"):
        assert needed in mods, needed
    for unwanted in ("tkinter", "unittest", "pydoc", "asyncio", "email", "http", "gi", "pydbus"):
        assert unwanted not in mods, unwanted
    assert any(lib.endswith("liblz4.so.1") for lib in result.libraries)
    assert any(lib.endswith("libzstd.so.1") for lib in result.libraries)
    assert any(lib.endswith("libxxhash.so.0") for lib in result.libraries)


def test_init_script_syntax_and_dispatch(stub_build, tmp_path):
    _, _, out, _ = stub_build
    root = _unpack(out, tmp_path / "root")
    init = (root / "init").read_text()
    assert init.startswith("#!/bin/busybox sh\n") and os.access(root / "init", os.X_OK)
    assert "@SITE_DIR@" not in init and f"PYTHONPATH={initramfs.SITE_DIR}" in init
    subprocess.run([initramfs.DEFAULT_BUSYBOX, "sh", "-n", "-c", init], check=True)
    assert "kjump.role=*" in init
    assert 'python3 -S -m "$prog"' in init
    # every role's program is the boot module of that name
    assert "save|restore) prog=kjumpd.boot.$role" in init
    assert set(kexec.ROLES) == {"save", "restore"} and initramfs.ROLE_PROGRAMS == {
        "save": "kjumpd.boot.save", "restore": "kjumpd.boot.restore"}
    # failure paths: save jumps back, restore reboots, unless the program said otherwise
    assert "save) next=jump-back" in init and "*) next=reboot" in init
    compile((root / "usr/lib/kjumpd/jumpback.py").read_text(), "jumpback.py", "exec")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing (packaging/deps/test.txt)")
def test_init_script_passes_shellcheck():
    subprocess.run(["shellcheck", str(REAL_PKG / "boot" / "init.sh")], check=True)


def test_jumpback_constants_are_kexecs():
    """The fallback cannot import kjumpd (it runs when kjumpd could not start): its numbers must match."""
    namespace: dict = {"__name__": "jumpback"}
    exec(compile((REAL_PKG / "boot" / "jumpback.py").read_text(), "jumpback.py", "exec"), namespace)
    assert namespace["KEXEC_PRESERVE_CONTEXT"] == kexec.KEXEC_PRESERVE_CONTEXT
    assert namespace["KEXEC_ARCH_X86_64"] == kexec.KEXEC_ARCH_X86_64
    assert (namespace["MAGIC1"], namespace["MAGIC2"], namespace["CMD_KEXEC"]) == (
        kexec.LINUX_REBOOT_MAGIC1, kexec.LINUX_REBOOT_MAGIC2, kexec.LINUX_REBOOT_CMD_KEXEC)
    assert namespace["SYS_kexec_load"] == kexec.SYS_KEXEC_LOAD_X86_64
    assert namespace["SYS_reboot"] == kexec.SYS_REBOOT_X86_64


def test_deterministic(stub_build, tmp_path):
    _, pkg, out, _ = stub_build
    again = tmp_path / "again.img"
    initramfs.build(str(again), package_dir=str(pkg))
    assert again.read_bytes() == out.read_bytes()


def test_temporary_archive_is_never_written_through_a_link(stub_build, tmp_path, monkeypatch):
    """Issue 16.13: the archive is written to a fresh temporary file (O_EXCL, random name) and
    renamed; a link planted where a predictable temporary name would be is not followed."""
    _, pkg, out, _ = stub_build
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    (tmp_path / ".initrd.img.tmp4242").symlink_to(victim)
    initramfs.build(str(tmp_path / "initrd.img"), package_dir=str(pkg))
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "initrd.img").read_bytes() == out.read_bytes()
    assert stat.S_IMODE((tmp_path / "initrd.img").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [".initrd.img.tmp4242", "initrd.img", "victim"]


@needs_root
def test_python_runs_in_unpacked_tree(stub_build, tmp_path):
    _, _, out, _ = stub_build
    root = _unpack(out, tmp_path / "root")
    assert stat.S_ISCHR((root / "dev/console").stat().st_mode)
    proc = _chroot_python(root, "-c", (
        "import sys, kjumpd.boot.save, kjumpd.boot.restore, lz4.frame, zstandard, xxhash\n"
        "data = bytes(range(256)) * 64\n"
        "assert lz4.frame.decompress(lz4.frame.compress(data)) == data\n"
        "assert zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(data)) == data\n"
        "print(xxhash.xxh3_64(data).hexdigest(), sys.prefix)"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "/usr"
    proc = _chroot_python(root, "-m", "kjumpd.boot.save")
    assert proc.returncode == 0, proc.stderr
    assert "KJUMP-STUB __main__" in proc.stdout
    proc = subprocess.run(["chroot", str(root), "/usr/sbin/kexec", "--version"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "kexec-tools" in proc.stdout + proc.stderr
    proc = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo ok; poweroff --help 2>&1 | head -1"],
                          capture_output=True, text=True)
    assert proc.stdout.startswith("ok")
    # bytecode is precompiled (unchecked hash): nothing to compile at boot
    assert (root / "usr/lib/python3/dist-packages/kjumpd/__pycache__").is_dir()


def test_missing_program_is_an_error(tmp_path):
    pkg = tmp_path / "kjumpd"
    shutil.copytree(REAL_PKG, pkg, ignore=shutil.ignore_patterns("__pycache__", "save.py", "restore.py"))
    with pytest.raises(InitramfsError, match="kjumpd.boot.save"):
        initramfs.build(str(tmp_path / "x.img"), package_dir=str(pkg), roles=("save",))
    assert not (tmp_path / "x.img").exists()


def test_unknown_role_and_missing_tools(tmp_path):
    with pytest.raises(InitramfsError, match="unknown role"):
        initramfs.build(str(tmp_path / "x.img"), roles=("suspend",))
    with pytest.raises(InitramfsError, match="kexec-tools not found"):
        initramfs.build(str(tmp_path / "x.img"), kexec="/nonexistent/kexec")


@needs_root
def test_real_programs_import_in_unpacked_tree(tmp_path):
    out = tmp_path / "real.img"
    result = initramfs.build(str(out))
    root = _unpack(out, tmp_path / "root")
    proc = _chroot_python(root, "-c", (
        "import kjumpd.boot.save, kjumpd.boot.restore, kjumpd.machine.real, hashlib\n"
        "from kjumpd import seal\n"
        "public, secret = seal.generate_key_pair(b'pw', seal.ScryptCost(log_n=10))\n"
        "key, envelope = seal.seal_new_key(public)\n"
        "assert seal.unseal_key(envelope, seal.SecretKeyFile.parse(secret).unlock(b'pw')) == key\n"
        "print(hashlib.sha256(b'kjump').hexdigest())"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == hashlib.sha256(b"kjump").hexdigest()
    assert "_hashlib" not in result.python_modules  # hashlib: the built-in _sha256, not OpenSSL's
    # image encryption (kjumpd/seal.py): python3-cryptography needs OpenSSL's libcrypto, 3.6 MiB more
    assert any("libcrypto" in lib for lib in result.libraries)
    assert result.size < 12 << 20, result.summary()
