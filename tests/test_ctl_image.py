"""kjumpctl image …: the documented exit codes, messages and output, run as a user would."""

import json
import subprocess
import sys

from kjumpd.memmap import PAGE_SIZE


def kjumpctl(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "kjumpd.ctl", *map(str, args)], capture_output=True,
                          text=True, **kwargs)


def memory(path, pages=300):
    data = b"".join((bytes(PAGE_SIZE) if i % 3 == 0 else (b"%06d" % i) * (PAGE_SIZE // 6) + b"abcd")
                    for i in range(pages))
    path.write_bytes(data)
    return data


def test_write_verify_inspect_restore(tmp_path):
    src, img, dest = tmp_path / "ram", tmp_path / "img", tmp_path / "dest"
    original = memory(src)
    done = kjumpctl("image", "write", src, img, "--compress", "zstd")
    assert done.returncode == 0, done.stderr
    assert "saved 1 MiB" in done.stdout and "zstd" in done.stdout
    assert done.stderr == ""                       # no progress bar when not on a terminal
    assert kjumpctl("image", "verify", img).returncode == 0
    info = json.loads(kjumpctl("image", "inspect", img, "--json").stdout)
    assert info["state"] == "SAVED" and info["pages_zero"] == 100 and info["memory_map"] == [[0, 300 * PAGE_SIZE]]
    human = kjumpctl("image", "inspect", img).stdout
    assert "State: SAVED" in human and "Restart point: resume" in human
    restored = kjumpctl("image", "restore", img, dest)
    assert restored.returncode == 0, restored.stderr
    assert dest.read_bytes() == original
    again = kjumpctl("image", "restore", img, dest)
    assert again.returncode == 1 and "already restored" in again.stderr


def test_corrupt_image_exit_1_and_dest_not_created(tmp_path):
    src, img, dest = tmp_path / "ram", tmp_path / "img", tmp_path / "dest"
    memory(src)
    assert kjumpctl("image", "write", src, img).returncode == 0
    data = bytearray(img.read_bytes())
    data[(4 << 20) + 200] ^= 0xFF
    img.write_bytes(bytes(data))
    for cmd in (("verify", img), ("restore", img, dest)):
        result = kjumpctl("image", *cmd)
        assert result.returncode == 1
        assert result.stderr.startswith("kjumpctl: chunk 0")
    assert not dest.exists()


def test_restore_with_another_map_is_refused(tmp_path):
    src, img, dest = tmp_path / "ram", tmp_path / "img", tmp_path / "dest"
    memory(src)
    assert kjumpctl("image", "write", src, img).returncode == 0
    dest.write_bytes(bytes(300 * PAGE_SIZE))
    result = kjumpctl("image", "restore", img, dest, "--map", "0-0x1fffff")
    assert result.returncode == 1 and "RAM layout differs" in result.stderr
    assert dest.read_bytes() == bytes(300 * PAGE_SIZE)


def test_usage_errors_exit_2(tmp_path):
    assert kjumpctl("image").returncode == 2
    assert kjumpctl("image", "write", tmp_path / "x").returncode == 2
    bad = kjumpctl("image", "write", tmp_path / "ram", tmp_path / "img", "--compress", "gzip")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_missing_source_is_a_clear_error(tmp_path):
    result = kjumpctl("image", "write", tmp_path / "nope", tmp_path / "img")
    assert result.returncode == 1 and "cannot open memory file" in result.stderr and "No such file" in result.stderr


def test_blank_target_inspects_as_empty(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(bytes(8192))
    result = kjumpctl("image", "inspect", img)
    assert result.returncode == 0 and "State: EMPTY" in result.stdout
    assert "holds no image" in kjumpctl("image", "verify", img).stderr
