"""kjumpctl image …: the documented exit codes, messages and output, run as a user would."""

import json
import os
import stat
import subprocess
import sys

import pytest

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


def test_blank_file_is_not_a_target_until_initialised(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(bytes(5 << 20))
    result = kjumpctl("image", "inspect", img)
    assert result.returncode == 1 and "is not initialised: run `kjumpctl target init" in result.stderr
    assert img.read_bytes() == bytes(5 << 20)
    init = kjumpctl("target", "init", img)
    assert init.returncode == 0 and "kjumpd image target, UUID" in init.stdout, init.stderr
    result = kjumpctl("image", "inspect", img)
    assert result.returncode == 0 and "State: EMPTY" in result.stdout
    assert "holds no image" in kjumpctl("image", "verify", img).stderr


def one_line_error(result, code=1):
    """The documented shape of bad input: the exit code, one line on stderr, no traceback."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("content,match", [
    (b"00010000-00000fff : System RAM\n", "iomem line 1 ends before it starts"),
    (b"\xff\xfe System RAM\n", "is not text in /proc/iomem format"),
    (b"00001000-0000ffff System RAM\n", "iomem line 1 is not 'START-END : NAME'"),
    (b"00001000-0000ffff : Reserved\n", "the memory map is empty"),
])
def test_a_bad_map_file_is_one_line_and_exit_1(tmp_path, content, match):
    """Issue 16.8: a bad --map file ends in one clear line, exit 1, and no image file."""
    src, img, bad = tmp_path / "ram", tmp_path / "img", tmp_path / "map"
    memory(src)
    bad.write_bytes(content)
    assert match in one_line_error(kjumpctl("image", "write", src, img, "--map", bad))
    assert not img.exists()


def test_bad_arguments_are_one_line_each(tmp_path):
    """Issue 16.8: every image command reports bad input in one line, without a traceback."""
    src, img, dest = tmp_path / "ram", tmp_path / "img", tmp_path / "dest"
    memory(src)
    assert "is not a regular file" in one_line_error(kjumpctl("image", "write", tmp_path, img))
    assert not img.exists()
    assert "cannot read the memory map" in one_line_error(kjumpctl("image", "write", src, img, "--map", tmp_path))
    assert "bad range" in one_line_error(kjumpctl("image", "write", src, img, "--map", "5-3"))
    assert "bad range" in one_line_error(kjumpctl("image", "write", src, img, "--map", "it's"))
    for offset in ("-4096", "100", "x"):
        usage = kjumpctl("image", "write", src, img, "--offset", offset)
        assert usage.returncode == 2 and "argument --offset" in usage.stderr and "Traceback" not in usage.stderr
    assert not img.exists()
    assert kjumpctl("image", "write", src, img).returncode == 0
    assert "Is a directory" in one_line_error(kjumpctl("image", "restore", img, tmp_path))
    for action in ("verify", "inspect", "restore", "wipe"):
        args = (tmp_path,) if action != "restore" else (tmp_path, dest)
        assert "image target" in one_line_error(kjumpctl("image", action, *args))
    assert not dest.exists()


def test_restore_creates_dest_0600_and_removes_it_when_refused(tmp_path):
    """Issue 16.13: DEST holds RAM: created 0600, and gone again when the restore is refused."""
    src, img, dest = tmp_path / "ram", tmp_path / "img", tmp_path / "dest"
    original = memory(src)
    assert kjumpctl("image", "write", src, img).returncode == 0
    refused = kjumpctl("image", "restore", img, dest, "--map", "0-0x1fffff")
    assert "RAM layout differs" in one_line_error(refused)
    assert not dest.exists(), "a refused restore left its destination behind"
    os.umask(0o022)
    assert kjumpctl("image", "restore", img, dest).returncode == 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600 and dest.read_bytes() == original


def test_restore_does_not_follow_a_symbolic_link(tmp_path):
    """Issue 16.13: DEST as a symbolic link (dangling or not) is refused; nothing is written through it."""
    src, img = tmp_path / "ram", tmp_path / "img"
    memory(src)
    assert kjumpctl("image", "write", src, img).returncode == 0
    victim, link, dangling = tmp_path / "victim", tmp_path / "link", tmp_path / "dangling"
    victim.write_bytes(bytes(300 * PAGE_SIZE))
    link.symlink_to(victim)
    dangling.symlink_to(tmp_path / "created-through-link")
    assert "symbolic link" in one_line_error(kjumpctl("image", "restore", img, link))
    assert victim.read_bytes() == bytes(300 * PAGE_SIZE)
    assert "symbolic link" in one_line_error(kjumpctl("image", "restore", img, dangling))
    assert not (tmp_path / "created-through-link").exists()


def test_write_refuses_an_existing_file_that_is_not_a_target(tmp_path):
    """Issue 16.12: an existing file without kjumpd's signature is not overwritten."""
    src, img = tmp_path / "ram", tmp_path / "img"
    memory(src)
    img.write_bytes(b"precious" * 1000000)
    assert "not kjumpd's" in one_line_error(kjumpctl("image", "write", src, img))
    assert img.read_bytes() == b"precious" * 1000000


def test_wipe_after_restore(tmp_path):
    src, img, dest = tmp_path / "ram", tmp_path / "img", tmp_path / "dest"
    memory(src)
    assert kjumpctl("image", "write", src, img, "--compress", "none").returncode == 0
    assert b"000002" in img.read_bytes()
    assert "discard it before wiping" in one_line_error(kjumpctl("image", "wipe", img))
    assert kjumpctl("image", "restore", img, dest).returncode == 0
    wiped = kjumpctl("image", "wipe", img)
    assert wiped.returncode == 0, wiped.stderr
    assert b"000002" not in img.read_bytes()
    assert "Wiped: 2" in kjumpctl("image", "inspect", img).stdout
