"""``kjumpctl key init`` and ``key show``: the files they write and their refusals."""

import stat
import subprocess
import sys

import pytest

from kjumpd import seal


def kjumpctl(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kjumpd.ctl", *args], input=stdin, capture_output=True,
                          text=True, check=False)


@pytest.fixture
def paths(tmp_path):
    return ["--public", str(tmp_path / "etc" / "image-key.pub"), "--secret", str(tmp_path / "etc" / "image-key.secret")]


def test_init_writes_a_public_key_and_a_private_key_only_the_passphrase_opens(tmp_path, paths):
    done = kjumpctl("key", "init", *paths, "--passphrase-file", "-", "--cost", "10", stdin="long enough pass\n")
    assert done.returncode == 0, done.stderr
    public = seal.load_public_key(paths[1])
    secret_path = tmp_path / "etc" / "image-key.secret"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    secret = seal.SecretKeyFile.load(str(secret_path))
    assert secret.public == public
    secret.unlock(b"long enough pass")
    with pytest.raises(seal.WrongPassphrase):
        secret.unlock(b"long enough pass\n")
    assert seal.key_id(public).hex() in done.stdout and "update-initramfs" in done.stdout
    shown = kjumpctl("key", "show", *paths)
    assert shown.returncode == 0 and seal.key_id(public).hex() in shown.stdout


def test_init_refuses_to_replace_a_key_without_force(paths):
    assert kjumpctl("key", "init", *paths, "--passphrase-file", "-", "--cost", "10", stdin="passphrase1\n").returncode == 0
    before = open(paths[3], "rb").read()
    again = kjumpctl("key", "init", *paths, "--passphrase-file", "-", "--cost", "10", stdin="passphrase2\n")
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert open(paths[3], "rb").read() == before
    forced = kjumpctl("key", "init", *paths, "--force", "--passphrase-file", "-", "--cost", "10", stdin="passphrase2\n")
    assert forced.returncode == 0 and open(paths[3], "rb").read() != before


def test_short_or_missing_passphrase_is_refused_and_nothing_written(tmp_path, paths):
    short = kjumpctl("key", "init", *paths, "--passphrase-file", "-", "--cost", "10", stdin="short\n")
    assert short.returncode == 1 and "at least 8" in short.stderr
    missing = kjumpctl("key", "init", *paths, "--passphrase-file", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "etc").exists()


def test_show_without_a_key_fails_with_one_line(paths):
    shown = kjumpctl("key", "show", *paths)
    assert shown.returncode == 1 and shown.stderr.count("\n") == 1 and "no image key" in shown.stderr


def _hook_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "packaging" / "initramfs-tools" / "kjumpd-initramfs-files.py"
    spec = importlib.util.spec_from_file_location("kjumpd_initramfs_files", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_initramfs_hook_copies_the_secret_key_or_warns_when_images_cannot_be_opened(tmp_path, monkeypatch,
                                                                                      capsys):
    hook = _hook_script()
    secret, public = tmp_path / "image-key.secret", tmp_path / "image-key.pub"
    monkeypatch.setattr(seal, "SECRET_KEY_PATH", str(secret))
    public.write_text("kjumpd-x25519 AAAA\n")
    assert hook.image_key("auto", str(public)) == []
    assert "cannot resume them" in capsys.readouterr().err
    assert hook.image_key("off", str(public)) == [] and capsys.readouterr().err == ""
    secret.write_bytes(b"sealed")
    assert hook.image_key("auto", str(public)) == [("file", str(secret), str(secret))]
