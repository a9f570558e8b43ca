"""kjumpd.conf and its drop-ins: defaults, merging order, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kjumpd.daemon.config import Config, ConfigError, load, parse_size


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_directory_gives_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path / "absent")
    assert config == Config()
    assert config.sources == ()


def test_every_key_is_read(tmp_path: Path) -> None:
    write(tmp_path, "kjumpd.conf", """\
# comment
; another comment
[Machine]
Type=simulated
Path=/srv/sim

[Image]
Target=/dev/disk/by-partlabel/kjump
Offset=1M
Compression=zstd

[HibernateKernel]
Kernel=/boot/vmlinuz-kjump
Initrd=/boot/initrd-kjump
RegionSize=512M
KernelArguments=console=ttyS0 loglevel=4

[Sleep]
HibernateRestartPoint=platform
HybridSleepRestartPoint=suspend
""")
    config = load(tmp_path)
    assert config == Config(
        machine_type="simulated", machine_path="/srv/sim", image_target="/dev/disk/by-partlabel/kjump",
        image_offset=1 << 20, compression="zstd", kernel="/boot/vmlinuz-kjump", initrd="/boot/initrd-kjump",
        region_size=512 << 20, kernel_arguments="console=ttyS0 loglevel=4", hibernate_restart_point="platform",
        hybrid_sleep_restart_point="suspend", sources=(str(tmp_path / "kjumpd.conf"),))
    assert config.restart_point_for("hibernate") == "platform"
    assert config.restart_point_for("hybrid-sleep") == "suspend"


def test_dropins_override_in_name_order_and_empty_resets(tmp_path: Path) -> None:
    write(tmp_path, "kjumpd.conf", "[Image]\nTarget=/dev/vdb\nCompression=zstd\n")
    write(tmp_path, "kjumpd.conf.d/20-b.conf", "[Image]\nTarget=/dev/vdd\n")
    write(tmp_path, "kjumpd.conf.d/10-a.conf", "[Image]\nTarget=/dev/vdc\nCompression=\n")
    write(tmp_path, "kjumpd.conf.d/30-ignored.conf.disabled", "[Image]\nTarget=/dev/vde\n")
    config = load(tmp_path)
    assert config.image_target == "/dev/vdd"
    assert config.compression == Config.compression  # reset by the empty assignment
    assert [Path(p).name for p in config.sources] == ["kjumpd.conf", "10-a.conf", "20-b.conf"]


@pytest.mark.parametrize("text,line,words", [
    ("[Image]\nCompression=gzip\n", 2, "'gzip' is not one of: none, lz4, zstd"),
    ("[Image]\nTarget=relative/path\n", 2, "not an absolute path"),
    ("[Image]\nOffset=lots\n", 2, "is not a size"),
    ("\n[HibernateKernel]\nRegionSize=1M\n", 3, "at least 16M"),
    ("[Sleep]\nHibernateRestartPoint=nap\n", 2, "'nap' is not one of"),
    ("[Machine]\nType=virtual\n", 2, "'virtual' is not one of: real, simulated"),
    ("[Image]\nTarget\n", 2, "expected Key=Value"),
    ("Target=/dev/vdb\n", 1, "outside of any section"),
    ("[Image]\nTargets=/dev/vdb\n", 2, "unknown key Targets="),
    ("[Imag]\n", 1, "unknown section [Imag]"),
    ("[Image\n", 1, "malformed section header"),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, "kjumpd.conf.d/50-local.conf", text)
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path)
    assert str(excinfo.value).startswith(f"{path}:{line}: ")
    assert words in str(excinfo.value)


def test_settings_that_only_make_sense_together(tmp_path: Path) -> None:
    write(tmp_path, "kjumpd.conf", "[Machine]\nType=simulated\n")
    with pytest.raises(ConfigError, match="Type=simulated needs Path="):
        load(tmp_path)
    write(tmp_path, "kjumpd.conf", "[Image]\nOffset=512\n")
    with pytest.raises(ConfigError, match="not a multiple of 4096"):
        load(tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    write(tmp_path, "kjumpd.conf", "").write_bytes(b"[Image]\nTarget=/dev/\xff\n")
    with pytest.raises(ConfigError, match="kjumpd.conf: cannot read"):
        load(tmp_path)


@pytest.mark.parametrize("text,value", [("0", 0), ("4096", 4096), ("16M", 16 << 20), ("2G", 2 << 30),
                                        ("1k", 1024), ("8MiB", 8 << 20), (" 3 T ", 3 << 40)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5G", "12Q", "M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_unknown_sleep_operation() -> None:
    with pytest.raises(ConfigError, match="unknown sleep operation"):
        Config().restart_point_for("nap")
