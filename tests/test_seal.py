"""kjumpd.seal: key files, the envelope of an image's data key, chunk AEAD, the key handed to R."""

import dataclasses
import os
import struct

import pytest

from kjumpd import seal
from kjumpd.errors import ImageError
from kjumpd.format import SEAL_SIZE, ChunkHeader, Trailer

CHEAP = seal.ScryptCost(log_n=10, r=8, p=1)       # tests only: the default costs half a second per try


@pytest.fixture(scope="module")
def pair():
    public, secret = seal.generate_key_pair(b"correct horse", CHEAP)
    return public, seal.SecretKeyFile.parse(secret)


def test_the_passphrase_unlocks_the_private_key_of_the_public_key(pair):
    public, secret = pair
    assert secret.public == public
    private = secret.unlock(bytearray(b"correct horse"))
    data_key, envelope = seal.seal_new_key(public)
    assert seal.unseal_key(envelope, private) == data_key
    assert len(envelope.pack()) == SEAL_SIZE


def test_a_wrong_passphrase_is_refused(pair):
    _, secret = pair
    with pytest.raises(seal.WrongPassphrase):
        secret.unlock(b"correct horse ")


@pytest.mark.parametrize("offset", [0, 9, 12, 24, 40, 72, 84, seal.SECRET_FILE_SIZE - 1])
def test_any_change_to_the_secret_key_file_is_refused(pair, offset):
    """Header (costs, salt, public key), nonce and sealed key are all authenticated or checked."""
    _, secret = pair
    data = bytearray(secret.raw)
    data[offset] ^= 0x01
    with pytest.raises((seal.KeyFileError, seal.WrongPassphrase)):
        seal.SecretKeyFile.parse(bytes(data)).unlock(b"correct horse")


def test_scrypt_costs_out_of_bounds_are_refused_before_deriving(pair):
    _, secret = pair
    data = bytearray(secret.raw)
    struct.pack_into("<I", data, 12, 30)            # 2**30 iterations: would exhaust C's memory
    with pytest.raises(seal.KeyFileError, match="out of bounds"):
        seal.SecretKeyFile.parse(bytes(data))


def test_public_key_file_round_trip_and_refusal(pair, tmp_path):
    public, _ = pair
    path = tmp_path / "image-key.pub"
    path.write_text(seal.format_public_key(public))
    assert seal.load_public_key(str(path)) == public
    path.write_text("ssh-ed25519 AAAA\n")
    with pytest.raises(seal.KeyFileError, match="not a kjumpd public key"):
        seal.load_public_key(str(path))
    with pytest.raises(seal.KeyFileError, match="cannot read"):
        seal.load_public_key(str(tmp_path / "missing"))


def test_an_image_sealed_to_another_key_says_so(pair):
    _, secret = pair
    other, _ = seal.generate_key_pair(b"x", CHEAP)
    _, envelope = seal.seal_new_key(other)
    with pytest.raises(ImageError, match="sealed to another key"):
        seal.unseal_key(envelope, secret.unlock(b"correct horse"))


@pytest.mark.parametrize("field", ["image_uuid", "ephemeral", "sealed_key"])
def test_a_changed_envelope_does_not_open(pair, field):
    public, secret = pair
    _, envelope = seal.seal_new_key(public)
    value = bytearray(getattr(envelope, field))
    value[0] ^= 1
    changed = dataclasses.replace(envelope, **{field: bytes(value)})
    with pytest.raises(ImageError, match="does not open"):
        seal.unseal_key(changed, secret.unlock(b"correct horse"))


def test_a_destroyed_envelope_cannot_be_opened(pair):
    public, secret = pair
    _, envelope = seal.seal_new_key(public)
    destroyed = seal.Envelope.unpack(seal.destroyed_seal(envelope.pack()))
    assert destroyed.destroyed and destroyed.key_id == envelope.key_id
    with pytest.raises(ImageError, match="destroyed"):
        seal.unseal_key(destroyed, secret.unlock(b"correct horse"))


def _header(index: int, stored_len: int = 100) -> ChunkHeader:
    return ChunkHeader(index, index * 8, 8, 8 * 4096, stored_len, 0, 0, b"\x00", 0x2)


def test_chunk_aead_binds_index_header_and_image():
    key = os.urandom(32)
    cipher = seal.ImageCipher(key, b"B" * 32)
    stored = cipher.encrypt_chunk(_header(3), b"pages" * 10)
    assert cipher.decrypt_chunk(_header(3), stored) == b"pages" * 10
    assert b"pages" not in stored
    for header, other in ((_header(4), cipher),                                  # moved
                          (ChunkHeader(3, 24, 8, 8 * 4096, 100, 0, 0, b"\x01", 2), cipher),   # bitmap
                          (_header(3), seal.ImageCipher(key, b"C" * 32)),         # other image
                          (_header(3), seal.ImageCipher(os.urandom(32), b"B" * 32))):   # other key
        with pytest.raises(ImageError, match="fails authentication"):
            other.decrypt_chunk(header, stored)


def test_stream_tag_covers_every_count():
    cipher = seal.ImageCipher(os.urandom(32), b"B" * 32)
    trailer = Trailer(6, 96, 40, 300000, 1234)
    tag = cipher.stream_tag(trailer)
    cipher.check_stream_tag(trailer, tag)
    for i in range(5):
        fields = list(trailer.__dict__.values())
        fields[i] += 1
        with pytest.raises(ImageError, match="does not authenticate"):
            cipher.check_stream_tag(Trailer(*fields), tag)


def test_the_key_archive_is_a_newc_cpio_the_kernel_unpacks(tmp_path):
    """cpio(1) reads the archive C puts before R's initramfs: one file, mode 0400, the key."""
    cpio = pytest.importorskip("shutil").which("cpio")
    if not cpio:
        pytest.skip("cpio is not installed")
    key = os.urandom(32)
    archive = tmp_path / "key.cpio"
    archive.write_bytes(seal.key_archive(key) + b"rest of R's initramfs")
    out = tmp_path / "root"
    out.mkdir()
    import subprocess
    subprocess.run([cpio, "-id", "--quiet", "-F", str(archive)], cwd=out, check=True)
    unpacked = out / seal.HANDED_KEY_NAME
    assert unpacked.read_bytes() == key
    assert unpacked.stat().st_mode & 0o777 == 0o400
    assert seal.key_from_archive(archive.read_bytes()) == key


def test_the_handed_key_is_read_once_and_removed(tmp_path):
    key = os.urandom(32)
    (tmp_path / seal.HANDED_KEY_NAME).write_bytes(key)
    assert seal.take_handed_key(str(tmp_path)) == key
    assert not (tmp_path / seal.HANDED_KEY_NAME).exists()
    assert seal.take_handed_key(str(tmp_path)) is None


def test_the_keyed_initrd_lives_in_memory_and_starts_with_the_key(tmp_path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x1f\x8b compressed R initramfs")
    key = os.urandom(32)
    keyed = seal.KeyedInitrd(str(initrd), key)
    try:
        assert keyed.path.startswith(f"/proc/{os.getpid()}/fd/")
        assert os.readlink(keyed.path).startswith("/memfd:kjumpd-r-initrd")
        with open(keyed.path, "rb") as handle:
            data = handle.read()
        assert data.endswith(initrd.read_bytes()) and seal.key_from_archive(data) == key
    finally:
        keyed.close()


def test_unlock_interactively_allows_retries_then_gives_up(pair):
    _, secret = pair
    answers = [bytearray(b"wrong"), bytearray(b"also wrong"), bytearray(b"correct horse")]
    said = []
    given = list(answers)
    private = seal.unlock_interactively(secret, lambda prompt: given.pop(0), tries=3, say=said.append)
    assert private is not None and len(said) == 2
    assert all(not any(a) for a in answers), "every passphrase is wiped after use"
    wrong = [bytearray(b"a"), bytearray(b"b")]
    assert seal.unlock_interactively(secret, lambda prompt: wrong.pop(0), tries=2, say=said.append) is None
    assert seal.unlock_interactively(secret, lambda prompt: None, say=said.append) is None


def test_a_forged_low_order_ephemeral_key_is_refused_as_corrupt(pair):
    """X25519 with an all-zero point has no shared secret: one clear refusal, not a ValueError."""
    public, secret = pair
    _, envelope = seal.seal_new_key(public)
    forged = dataclasses.replace(envelope, ephemeral=bytes(32), sealed_key=b"\x01" * 48)
    with pytest.raises(ImageError, match="invalid ephemeral key"):
        seal.unseal_key(forged, secret.unlock(b"correct horse"))


def test_secret_memory_holders_finds_open_and_mapped_secretmem(tmp_path):
    """A fake /proc: one process with a memfd_secret descriptor, one with only a mapping, one without."""
    proc = tmp_path / "proc"
    for pid, name, fd_target, maps in ((10, "keeper", seal.SECRETMEM_NAME, ""),
                                       (20, "mapper", "/dev/null",
                                        f"7f00-7f01 rw-s 00000000 00:0e 1234     {seal.SECRETMEM_NAME}\n"),
                                       (30, "plain", "/etc/passwd", "7f00-7f01 r--p 00000000 08:01 5 /usr/bin/sh\n")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "fd" / "3").symlink_to(fd_target)
        (proc / str(pid) / "maps").write_text(maps)
        (proc / str(pid) / "comm").write_text(name + "\n")
    (proc / "self").mkdir()
    assert seal.secret_memory_holders(str(proc)) == [(10, "keeper"), (20, "mapper")]


def test_secret_memory_holders_sees_a_real_memfd_secret():
    """The real kernel: this process's memfd_secret shows, by the name the kernel gives it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(447, 0)                   # memfd_secret (x86_64)
    if fd < 0:
        pytest.skip(f"memfd_secret is not available here: {os.strerror(ctypes.get_errno())}")
    try:
        assert (os.getpid(), open("/proc/self/comm").read().strip()) in seal.secret_memory_holders()
    finally:
        os.close(fd)
    assert os.getpid() not in [pid for pid, _ in seal.secret_memory_holders()]


def test_the_console_prompt_reads_with_echo_off(monkeypatch):
    """No plymouth, no systemd: the passphrase is read from the console with echo off, then echo is back."""
    import pty
    import termios
    monkeypatch.setattr(seal.shutil, "which", lambda name: None)
    import threading
    master, slave = pty.openpty()
    shown = bytearray()

    def person() -> None:           # types once the prompt is on the screen
        while b"Passphrase:" not in shown:
            shown.extend(os.read(master, 4096))
        os.write(master, b"s3cret words\n")
        while not shown.endswith(b"\n"):
            shown.extend(os.read(master, 4096))

    typing = threading.Thread(target=person)
    typing.start()
    try:
        answer = seal.ask_passphrase("Passphrase:", console=os.ttyname(slave))
        typing.join(10)
        assert answer == bytearray(b"s3cret words")
        assert termios.tcgetattr(slave)[3] & termios.ECHO, "echo is restored"
        assert b"s3cret" not in shown, "the passphrase was echoed"
    finally:
        os.close(master)
        os.close(slave)
