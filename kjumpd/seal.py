"""Image encryption: key files, sealing each image's data key, and the AEAD of its chunks.

The scheme and its threat model are in docs/encryption.md; the bytes in
docs/format.md ("Encrypted images"). In short, the uswsusp way:

* ``kjumpctl key init`` makes an X25519 key pair. The public key goes to
  ``/etc/kjumpd/image-key.pub``; the private key is stored encrypted under a
  passphrase (scrypt, then AES-256-GCM) in ``/etc/kjumpd/image-key.secret``,
  which the initramfs hook copies into the boot initramfs (C).
* A puts the public key into the handoff; B draws a fresh 256-bit data key
  for every image and seals it to that public key (ephemeral X25519, HKDF-
  SHA256, AES-256-GCM: the ECIES construction also used by age), so nothing
  secret is needed in A or B.
* Every chunk's payload is encrypted with AES-256-GCM under the data key,
  with the chunk index as nonce and, as associated data, a binding digest of
  the image (superblock constants, handoff, envelope) and the chunk header;
  a last tag over the trailer's counts authenticates the whole summary.
* C asks the passphrase the way the initramfs asks for a LUKS one, unseals
  the data key and hands only that key to R inside R's initramfs (a memfd
  given to kexec as the initrd): it never touches a disk.

Only primitives of python3-cryptography (OpenSSL) are used: nothing here is
home-made cryptography, only their composition, which follows age and HPKE.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .errors import FormatError, ImageError
from .format import AEAD_TAG_SIZE, SEAL_SIZE, ChunkHeader, Handoff, Superblock, Trailer

PUBLIC_KEY_PATH = "/etc/kjumpd/image-key.pub"
SECRET_KEY_PATH = "/etc/kjumpd/image-key.secret"
# Where C puts the data key in R's initramfs: at the root, because the key's
# archive is unpacked before R's own (no /etc yet) and /run is mounted over.
HANDED_KEY_NAME = "kjumpd-resume.key"

KEY_SIZE = 32
TAG_SIZE = AEAD_TAG_SIZE
NONCE_SIZE = 12
ALGORITHM_X25519_AES256GCM = 1
_PUBLIC_PREFIX = "kjumpd-x25519"
_HKDF_INFO = b"kjumpd image data key v1"
_BINDING_LABEL = b"kjumpd image binding v1\0"


class KeyFileError(FormatError):
    """A key file is missing, unreadable or not a kjumpd key file."""


class WrongPassphrase(ImageError):
    """The passphrase does not unlock the private key file."""


def key_id(public: bytes) -> bytes:
    """8 bytes that name a public key in an image's envelope (SHA-256 prefix)."""
    return hashlib.sha256(public).digest()[:8]


# --- key files ------------------------------------------------------------------------------

def format_public_key(public: bytes) -> str:
    """The public key file's one line: ``kjumpd-x25519 BASE64``."""
    return f"{_PUBLIC_PREFIX} {base64.b64encode(public).decode()}\n"


def parse_public_key(text: str, where: str = "public key") -> bytes:
    """The 32-byte X25519 public key of a public key file; KeyFileError if it is not one."""
    parts = text.split()
    try:
        if len(parts) != 2 or parts[0] != _PUBLIC_PREFIX:
            raise ValueError
        public = base64.b64decode(parts[1], validate=True)
        if len(public) != KEY_SIZE:
            raise ValueError
    except ValueError:
        raise KeyFileError(f"{where} is not a kjumpd public key (expected one line "
                           f"'{_PUBLIC_PREFIX} BASE64')") from None
    return public


def load_public_key(path: str = PUBLIC_KEY_PATH) -> bytes:
    """Read a public key file; KeyFileError (naming the file) when it is missing or invalid."""
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read(4096)
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the public key {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_public_key(text, path)


@dataclass(frozen=True)
class ScryptCost:
    """scrypt parameters: 2**log_n iterations of r-sized blocks, p lanes (memory 128·2**log_n·r bytes)."""

    log_n: int = 17          # 128 MiB with r = 8: about half a second on a laptop
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """KeyFileError for parameters a reader would refuse (bounds keep a bad file from exhausting C)."""
        if not (10 <= self.log_n <= 20 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise KeyFileError(f"scrypt parameters out of bounds (log2 N {self.log_n}, r {self.r}, p {self.p})")


# magic, version, kdf, log2 N, r, p, salt, public key, nonce; then the sealed private key
_SECRET = struct.Struct("<8sHHIII16s32s12s")
_SECRET_MAGIC = b"KJSECKEY"
_KDF_SCRYPT = 1
SECRET_FILE_SIZE = _SECRET.size + KEY_SIZE + TAG_SIZE


def _passphrase_key(passphrase: bytes | bytearray, salt: bytes, cost: ScryptCost) -> bytes:
    return Scrypt(salt=salt, length=KEY_SIZE, n=1 << cost.log_n, r=cost.r, p=cost.p).derive(bytes(passphrase))


def generate_key_pair(passphrase: bytes | bytearray, cost: ScryptCost = ScryptCost()) -> tuple[bytes, bytes]:
    """A new key pair: (public key, secret key file bytes with the private key sealed by ``passphrase``)."""
    cost.check()
    if not passphrase:
        raise KeyFileError("the passphrase is empty")
    private = X25519PrivateKey.generate()
    public = _raw_public(private.public_key())
    salt, nonce = os.urandom(16), os.urandom(NONCE_SIZE)
    head = _SECRET.pack(_SECRET_MAGIC, 1, _KDF_SCRYPT, cost.log_n, cost.r, cost.p, salt, public, nonce)
    sealed = AESGCM(_passphrase_key(passphrase, salt, cost)).encrypt(nonce, _raw_private(private), head)
    return public, head + sealed


def _raw_public(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclass(frozen=True)
class SecretKeyFile:
    """A parsed secret key file: the public key in the clear, the private key sealed by a passphrase."""

    public: bytes
    cost: ScryptCost
    raw: bytes

    @classmethod
    def parse(cls, data: bytes, where: str = "secret key file") -> SecretKeyFile:
        """Check the framing (not the passphrase); KeyFileError if it is not a kjumpd secret key file."""
        if len(data) != SECRET_FILE_SIZE:
            raise KeyFileError(f"{where} is not a kjumpd secret key file ({len(data)} bytes, "
                               f"expected {SECRET_FILE_SIZE})")
        magic, version, kdf, log_n, r, p, _, public, _ = _SECRET.unpack_from(data)
        if magic != _SECRET_MAGIC:
            raise KeyFileError(f"{where} is not a kjumpd secret key file")
        if version != 1 or kdf != _KDF_SCRYPT:
            raise KeyFileError(f"{where} has version {version} and key derivation {kdf}; this kjumpd reads 1 and 1")
        cost = ScryptCost(log_n, r, p)
        cost.check()
        return cls(public, cost, data)

    @classmethod
    def load(cls, path: str = SECRET_KEY_PATH) -> SecretKeyFile:
        """Read and parse a secret key file; KeyFileError naming it when that fails."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(SECRET_FILE_SIZE + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read the secret key {path}: {exc.strerror}") from None
        return cls.parse(data, path)

    def unlock(self, passphrase: bytes | bytearray) -> X25519PrivateKey:
        """The private key; WrongPassphrase when the passphrase (or the file) is not right."""
        salt, nonce = self.raw[24:40], self.raw[_SECRET.size - NONCE_SIZE:_SECRET.size]
        key = _passphrase_key(passphrase, salt, self.cost)
        try:
            raw = bytearray(AESGCM(key).decrypt(nonce, self.raw[_SECRET.size:], self.raw[:_SECRET.size]))
        except InvalidTag:
            raise WrongPassphrase("the passphrase does not unlock the image key") from None
        try:
            private = X25519PrivateKey.from_private_bytes(bytes(raw))
        finally:
            raw[:] = bytes(len(raw))
        if _raw_public(private.public_key()) != self.public:
            raise KeyFileError("the secret key file's private and public keys do not match")
        return private


# --- the envelope: one image's sealed data key ------------------------------------------------

# algorithm, zero, key id, image uuid, ephemeral public key, sealed data key, stream tag, zero
_ENVELOPE = struct.Struct("<HH8s16s32s48s16s4x")
assert _ENVELOPE.size == SEAL_SIZE
_EPHEMERAL_AT = 28          # after algorithm, zero, key id and image UUID


@dataclass(frozen=True)
class Envelope:
    """The superblock's seal (docs/format.md): who can open the image and its sealed data key."""

    key_id: bytes
    image_uuid: bytes
    ephemeral: bytes
    sealed_key: bytes
    stream_tag: bytes = bytes(TAG_SIZE)
    algorithm: int = ALGORITHM_X25519_AES256GCM

    def pack(self) -> bytes:
        """The SEAL_SIZE bytes stored in the superblock."""
        return _ENVELOPE.pack(self.algorithm, 0, self.key_id, self.image_uuid, self.ephemeral,
                              self.sealed_key, self.stream_tag)

    @property
    def head(self) -> bytes:
        """The bytes fixed when the image is sealed (everything but the stream tag)."""
        return self.pack()[:_ENVELOPE.size - TAG_SIZE - 4]

    @property
    def destroyed(self) -> bool:
        """True once the sealed key was overwritten (a consumed image): nobody can decrypt it."""
        return not any(self.sealed_key)

    @classmethod
    def unpack(cls, data: bytes) -> Envelope:
        """Parse the superblock's seal; ImageError for an algorithm this kjumpd does not know."""
        algorithm, zero, kid, uuid, ephemeral, sealed, tag = _ENVELOPE.unpack(data)
        if algorithm != ALGORITHM_X25519_AES256GCM or zero:
            raise ImageError(f"the image is encrypted with algorithm {algorithm}, which this kjumpd does not know")
        return cls(kid, uuid, ephemeral, sealed, tag, algorithm)


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes, image_uuid: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=ephemeral + recipient,
                info=_HKDF_INFO + image_uuid).derive(shared)


def seal_new_key(recipient: bytes) -> tuple[bytearray, Envelope]:
    """A fresh data key and its envelope, sealed to ``recipient`` (B, once per image)."""
    if len(recipient) != KEY_SIZE:
        raise ImageError("the handoff's public key is not a 32-byte X25519 key")
    data_key = bytearray(os.urandom(KEY_SIZE))
    image_uuid = os.urandom(16)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = _raw_public(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    envelope = Envelope(key_id(recipient), image_uuid, ephemeral_public, b"")
    kek = _kek(shared, ephemeral_public, recipient, image_uuid)
    sealed = AESGCM(kek).encrypt(bytes(NONCE_SIZE), bytes(data_key), envelope.head[:28])
    return data_key, replace(envelope, sealed_key=sealed)


def unseal_key(envelope: Envelope, private: X25519PrivateKey) -> bytearray:
    """The image's data key (C); ImageError when the image was sealed to another key or destroyed."""
    public = _raw_public(private.public_key())
    if envelope.destroyed:
        raise ImageError("the image's data key was destroyed (the image was consumed)")
    if envelope.key_id != key_id(public):
        raise ImageError(f"the image was sealed to another key (key id {envelope.key_id.hex()}, "
                         f"this machine's is {key_id(public).hex()})")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(envelope.ephemeral))
    except ValueError:          # a low-order point: no shared secret (a forged envelope)
        raise ImageError("the image's envelope holds an invalid ephemeral key: the envelope is corrupt") from None
    kek = _kek(shared, envelope.ephemeral, public, envelope.image_uuid)
    try:
        return bytearray(AESGCM(kek).decrypt(bytes(NONCE_SIZE), envelope.sealed_key, envelope.head[:28]))
    except InvalidTag:
        raise ImageError("the image's sealed data key does not open with this key: the envelope is corrupt") from None


# --- the data key bound to one image ------------------------------------------------------------

def binding(superblock: Superblock, handoff: Handoff, target_uuid: bytes, envelope: Envelope) -> bytes:
    """SHA-256 of everything fixed when the save started that decides where data goes.

    The superblock's constant fields (identity, region, jump-back entry,
    chunk size, page count, compression, handoff checksum, target id and
    UUID), the handoff (memory map and public key, re-encoded canonically)
    and the envelope's head. Every chunk and the stream tag are authenticated
    with it, so changing any of them, or moving an image to another target,
    makes every tag fail.
    """
    constants = Superblock(
        identity=superblock.identity, sequence=superblock.sequence, restart_point=superblock.restart_point,
        compression=superblock.compression, chunk_pages=superblock.chunk_pages,
        region_base=superblock.region_base, region_size=superblock.region_size,
        low_base=superblock.low_base, low_size=superblock.low_size,
        jump_back_entry=superblock.jump_back_entry, pages_total=superblock.pages_total,
        handoff_checksum=superblock.handoff_checksum, created_ns=superblock.created_ns,
        target_id=superblock.target_id, target_uuid=target_uuid)
    digest = hashlib.sha256(_BINDING_LABEL)
    for part in (constants.pack(), handoff.pack(), envelope.head):
        digest.update(struct.pack("<I", len(part)))
        digest.update(part)
    return digest.digest()


_CHUNK_AAD = struct.Struct("<32sQQIIII")
_STREAM_AAD = struct.Struct("<32sQQQQQ")


class ImageCipher:
    """AES-256-GCM under one image's data key, with that image's binding.

    Nonces: the chunk index (8 bytes) and a domain word, 0 for chunks and 1
    for the stream tag. The data key is fresh for every image, so a nonce is
    never used twice under one key; the image's UUID enters through the
    key's derivation and the binding.
    """

    def __init__(self, data_key: bytes | bytearray, image_binding: bytes) -> None:
        self._key = bytes(data_key)
        self._aead = AESGCM(self._key)
        self.binding = image_binding

    @staticmethod
    def _nonce(index: int, domain: int) -> bytes:
        return struct.pack("<QI", index, domain)

    def _chunk_aad(self, header: ChunkHeader) -> bytes:
        return _CHUNK_AAD.pack(self.binding, header.index, header.first_page, header.pages,
                               header.raw_len, header.stored_len, header.flags) + header.zero_bitmap

    def encrypt_chunk(self, header: ChunkHeader, payload: bytes) -> bytes:
        """The stored payload of a chunk; ``header`` has its final stored length (payload + tag)."""
        return self._aead.encrypt(self._nonce(header.index, 0), payload, self._chunk_aad(header))

    def decrypt_chunk(self, header: ChunkHeader, stored: bytes | memoryview) -> memoryview:
        """The payload of a stored chunk; ImageError unless it is exactly what B wrote at this place.

        The same AES-256-GCM as :meth:`encrypt_chunk`, through the streaming
        interface with ``update_into``: python3-cryptography 38's
        ``AESGCM.decrypt`` copies and reallocates the payload so much that it
        ran at a quarter of the speed of encryption (0.7 against 3 GB/s per
        core on the project's test machine); this runs at encryption's speed.
        Nothing is returned before the tag is verified.
        """
        if len(stored) < TAG_SIZE:
            raise ImageError(f"chunk {header.index} is too short to hold its authentication tag")
        view = memoryview(stored)
        decryptor = Cipher(algorithms.AES(self._key),
                           modes.GCM(self._nonce(header.index, 0), bytes(view[-TAG_SIZE:]))).decryptor()
        decryptor.authenticate_additional_data(self._chunk_aad(header))
        plain = bytearray(len(view) - TAG_SIZE + 15)        # update_into wants a block of slack
        done = decryptor.update_into(view[:-TAG_SIZE], plain)
        try:
            decryptor.finalize()
        except InvalidTag:
            raise ImageError(f"chunk {header.index} fails authentication: it was altered, moved or "
                             "comes from another image") from None
        return memoryview(plain)[:done]

    def _stream_aad(self, trailer: Trailer) -> bytes:
        return _STREAM_AAD.pack(self.binding, trailer.chunk_count, trailer.pages_total, trailer.pages_zero,
                                trailer.stream_bytes, trailer.stream_checksum)

    def stream_tag(self, trailer: Trailer) -> bytes:
        """The tag over the trailer's counts and stream checksum (stored in the envelope)."""
        return self._aead.encrypt(self._nonce(0, 1), b"", self._stream_aad(trailer))

    def check_stream_tag(self, trailer: Trailer, tag: bytes) -> None:
        """ImageError unless ``tag`` authenticates ``trailer`` and the binding under this key."""
        try:
            self._aead.decrypt(self._nonce(0, 1), tag, self._stream_aad(trailer))
        except InvalidTag:
            raise ImageError("the image does not authenticate with this key: wrong key, or the superblock, "
                             "handoff or trailer were altered or come from another image") from None


# --- asking for the passphrase (C) -------------------------------------------------------------

Asker = Callable[[str], "bytearray | None"]


def _run_asker(argv: list[str]) -> bytearray | None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        return None
    return bytearray(result.stdout.rstrip(b"\n"))


def ask_passphrase(prompt: str, console: str = "/dev/console") -> bytearray | None:
    """Ask a passphrase the way the initramfs asks cryptsetup's: plymouth, systemd, or the console.

    plymouth when its daemon answers (``plymouth --ping``), else
    ``systemd-ask-password`` where systemd runs the initramfs, else the
    console with echo off. None when the user gives up (Ctrl-D, Escape).
    """
    plymouth = shutil.which("plymouth")
    if plymouth and subprocess.run([plymouth, "--ping"], check=False).returncode == 0:
        return _run_asker([plymouth, "ask-for-password", f"--prompt={prompt}"])
    asker = shutil.which("systemd-ask-password")
    if asker and os.path.isdir("/run/systemd/ask-password"):
        return _run_asker([asker, "--timeout=0", prompt])
    fd = os.open(console, os.O_RDWR | os.O_NOCTTY)
    try:
        try:
            saved = termios.tcgetattr(fd)
        except termios.error:
            saved = None
        if saved is not None:           # echo off before the prompt: nothing typed after it shows
            quiet = list(saved)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        try:
            os.write(fd, f"{prompt} ".encode())
            answer = bytearray()
            while not answer.endswith(b"\n"):
                byte = os.read(fd, 1)
                if not byte:
                    return None
                answer += byte
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            os.write(fd, b"\n")
        del answer[-1:]
        return answer
    finally:
        os.close(fd)


def unlock_interactively(secret: SecretKeyFile, ask: Asker, tries: int = 3,
                         say: Callable[[str], None] = print) -> X25519PrivateKey | None:
    """Ask up to ``tries`` times; the private key, or None when the user gave up or every try was wrong."""
    for attempt in range(1, tries + 1):
        passphrase = ask(f"Passphrase for the hibernation image ({attempt}/{tries}):")
        if passphrase is None:
            return None
        try:
            return secret.unlock(passphrase)
        except WrongPassphrase:
            say(f"wrong passphrase ({attempt} of {tries})")
        finally:
            passphrase[:] = bytes(len(passphrase))
    return None


# --- handing the data key from C to R without a disk --------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes | bytearray, ino: int) -> bytes:
    """One "newc" cpio member (the initramfs format; kernel Documentation/driver-api/early-userspace)."""
    encoded = name.encode() + b"\0"
    header = b"070701" + b"".join(b"%08X" % value for value in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
    head = header + encoded
    return head + bytes(-len(head) % 4) + bytes(data) + bytes(-len(data) % 4)


def key_archive(data_key: bytes | bytearray) -> bytes:
    """An uncompressed cpio archive holding only the data key as ``/kjumpd-resume.key`` (mode 0400).

    Placed before R's own initramfs in one buffer: the kernel unpacks
    concatenated archives in order (as it does Debian's early microcode).
    """
    return _cpio_entry(HANDED_KEY_NAME, 0o100400, data_key, 1) + _cpio_entry("TRAILER!!!", 0, b"", 0)


def key_from_archive(data: bytes) -> bytearray | None:
    """The data key of a buffer that starts with :func:`key_archive`'s archive, or None (no key)."""
    if len(data) < 110 or data[:6] != b"070701":
        return None
    try:
        size, name_size = int(data[54:62], 16), int(data[94:102], 16)
    except ValueError:
        return None
    name_end = 110 + name_size
    if data[110:name_end - 1].decode(errors="replace") != HANDED_KEY_NAME or size != KEY_SIZE:
        return None
    start = name_end + -name_end % 4
    return bytearray(data[start:start + size])


class KeyedInitrd:
    """R's initramfs with the key archive in front, in anonymous memory (a memfd), never in a file system.

    ``path`` (``/proc/PID/fd/N``) is what kexec reads as the initrd; the
    memfd stays open across ``exec`` so a program that replaces this one (the
    simulated kernel R) can still read it. :meth:`close` zeroes it.
    """

    def __init__(self, initrd: str, data_key: bytes | bytearray) -> None:
        try:
            with open(initrd, "rb") as handle:
                base = handle.read()
        except OSError as exc:
            raise ImageError(f"cannot read the restore kernel's initramfs {initrd}: {exc.strerror}") from None
        self.fd = os.memfd_create("kjumpd-r-initrd", 0)
        os.set_inheritable(self.fd, True)
        os.write(self.fd, key_archive(data_key))
        os.write(self.fd, base)
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        """Overwrite the key archive and free the memory."""
        os.pwrite(self.fd, bytes(512), 0)
        os.close(self.fd)


def take_handed_key(root: str = "/") -> bytearray | None:
    """R: the data key C put in R's initramfs, or None; the file is zeroed and removed once read."""
    path = os.path.join(root, HANDED_KEY_NAME)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        key = bytearray(KEY_SIZE)
        read = os.readv(fd, [key])
        os.pwrite(fd, bytes(KEY_SIZE), 0)
    finally:
        os.close(fd)
        os.unlink(path)
    if read != KEY_SIZE:
        raise ImageError(f"the data key handed over by the resume check has {read} bytes, not {KEY_SIZE}")
    return key


def destroyed_seal(seal: bytes) -> bytes:
    """A superblock's envelope with the ephemeral key and sealed data key zeroed (crypto-erase).

    Works on the bytes, so an envelope of an unknown algorithm is destroyed
    as well. What stays: algorithm, key id, image UUID, stream tag.
    """
    start, end = _EPHEMERAL_AT, _EPHEMERAL_AT + KEY_SIZE + KEY_SIZE + TAG_SIZE
    return seal[:start] + bytes(end - start) + seal[end:]


# --- memory that must never reach a disk -------------------------------------------------------

# How a memfd_secret file shows in /proc/PID/fd and /proc/PID/maps: the kernel
# creates it with alloc_file_pseudo(…, "secretmem", …) on an internal mount
# (mm/secretmem.c), which d_path prints as "/secretmem (deleted)".
SECRETMEM_NAME = "/secretmem (deleted)"


def secret_memory_holders(proc: str = "/proc") -> list[tuple[int, str]]:
    """(pid, command name) of every process holding a ``memfd_secret`` file, open or mapped.

    The kernel counts such files (``secretmem_users``) and refuses its own
    hibernation while there is one (``hibernation_available()``): their pages
    are removed from the kernel's direct map precisely so that they never
    reach a disk. Processes that vanish while being looked at are skipped.
    """
    holders = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        if _holds_secret_memory(entry.path):
            try:
                with open(os.path.join(entry.path, "comm"), encoding="utf-8", errors="replace") as handle:
                    name = handle.read().strip()
            except OSError:
                name = "?"
            holders.append((int(entry.name), name))
    return sorted(holders)


def _holds_secret_memory(process: str) -> bool:
    try:
        for fd in os.scandir(os.path.join(process, "fd")):
            try:
                if os.readlink(fd.path) == SECRETMEM_NAME:
                    return True
            except OSError:
                continue
        with open(os.path.join(process, "maps"), encoding="utf-8", errors="replace") as handle:
            return any(line.rstrip("\n").endswith(" " + SECRETMEM_NAME) for line in handle)
    except OSError:
        return False


# --- C: the image's data key ------------------------------------------------------------------

def unlock_image_key(image_seal: bytes, secret_path: str, ask: Asker, say: Callable[[str], None],
                     tries: int = 3) -> bytearray | None:
    """The data key of an image with superblock seal ``image_seal`` (C), or None for a plain image.

    Where a secret key file exists, only encrypted images are accepted: a
    plain one may be a forgery and is refused. Asks the passphrase up to
    ``tries`` times. ImageError (KeyFileError) says why there is no key.
    """
    have_secret = os.path.exists(secret_path)
    if not image_seal:
        if have_secret:
            raise ImageError(f"the image is not encrypted, but this machine has an image key ({secret_path}): "
                             "only encrypted images are resumed here")
        return None
    if not have_secret:
        raise ImageError(f"the image is encrypted, but there is no secret key {secret_path} in this initramfs")
    secret = SecretKeyFile.load(secret_path)
    envelope = Envelope.unpack(image_seal)
    if envelope.key_id != key_id(secret.public):
        raise ImageError(f"the image was sealed to another key (key id {envelope.key_id.hex()}, this "
                         f"machine's is {key_id(secret.public).hex()})")
    private = unlock_interactively(secret, ask, tries, say)
    if private is None:
        raise ImageError("the image key was not unlocked (no right passphrase given)")
    return unseal_key(envelope, private)
