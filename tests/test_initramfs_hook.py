"""The initramfs-tools hook's file list (packaging/initramfs-tools/kjumpd-initramfs-files.py):
what the boot-time resume check (C) needs in A's initramfs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "packaging/initramfs-tools/kjumpd-initramfs-files.py"


def _files_module():
    spec = importlib.util.spec_from_file_location("kjumpd_initramfs_files", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """/etc/kjumpd with a hibernate kernel and initrd that exist and an image target."""
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "initrd.img").write_bytes(b"i")
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "kjumpd.conf").write_text(
        "[Image]\nTarget=/dev/disk/by-partlabel/kjump-image\n"
        f"[HibernateKernel]\nKernel={tmp_path / 'vmlinuz'}\nInitrd={tmp_path / 'initrd.img'}\n")
    return conf


def test_machine_id_goes_into_the_initramfs(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """C refuses an image that is not this installation's by /etc/machine-id; without
    the file in the initramfs every resume ended "cannot read /etc/machine-id; normal
    boot" and the hibernated root file system was booted over."""
    if shutil.which("kexec", path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
        pytest.skip("kexec-tools not installed: the hook lists nothing without it")
    assert _files_module().main(["kjumpd-initramfs-files.py", str(config_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "file /etc/machine-id" in lines
    assert any(line.startswith("env KJUMPD_TARGET ") for line in lines)


def test_listed_files_are_enough_to_run_the_resume_check(config_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Python restricted to the files the hook lists (as in the initramfs) finds
    ``kjumpctl resume-check``. Imports made by compiled extension modules are
    invisible to modulefinder: cryptography's bindings import _cffi_backend,
    the image group did not import, kjumpctl skipped it and every boot said
    "invalid choice: 'resume-check'". And OpenSSL loads its providers with
    dlopen: without them cryptography fails with "Unknown OpenSSL error"."""
    if shutil.which("kexec", path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
        pytest.skip("kexec-tools not installed: the hook lists nothing without it")
    assert _files_module().main(["kjumpd-initramfs-files.py", str(config_dir)]) == 0
    tree = tmp_path / "initramfs"
    for line in capsys.readouterr().out.splitlines():
        kind, src, *dest = line.split(" ", 2)
        if kind in ("file", "exec") and os.path.exists(src):     # /usr/bin/kjumpctl only where installed
            target = tree / (dest[0] if dest else src).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    host_path = subprocess.run([sys.executable, "-c", "import sys; print('\\n'.join(sys.path))"],
                               capture_output=True, text=True, check=True).stdout.split()
    import kjumpd

    roots = [str(tree) + p for p in host_path if p.startswith("/")]
    roots.append(str(tree) + str(Path(kjumpd.__file__).resolve().parent.parent))
    probe = ("import sys; sys.path[:] = sys.argv[1:]; from kjumpd.ctl import build_parser; "
             "choices = build_parser()._subparsers._group_actions[0].choices; print(sorted(choices))")
    # OpenSSL finds its provider modules (cryptography loads "legacy") where the initramfs has them
    modules = str(tree) + os.path.join(sysconfig.get_config_var("LIBDIR"), "ossl-modules")
    proc = subprocess.run([sys.executable, "-S", "-c", probe, *roots], capture_output=True, text=True, check=False,
                          env=os.environ | {"OPENSSL_MODULES": modules})
    assert proc.returncode == 0, proc.stderr
    assert "resume-check" in proc.stdout, proc.stdout
