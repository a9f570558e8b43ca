"""The initramfs-tools hook's file list (packaging/initramfs-tools/kjumpd-initramfs-files.py):
what the boot-time resume check (C) needs in A's initramfs."""

from __future__ import annotations

import importlib.util
import shutil
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
