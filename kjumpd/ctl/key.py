"""``kjumpctl key``: the key pair that encrypts hibernation images (docs/encryption.md).

``kjumpctl key init`` makes a new X25519 key pair: the public key goes to
``/etc/kjumpd/image-key.pub`` (kjumpd seals every image to it from then on,
``[Image] Encryption=auto``), the private key, encrypted with a passphrase
(scrypt, AES-256-GCM), to ``/etc/kjumpd/image-key.secret``, which the
initramfs hook copies into the boot initramfs where the resume check asks for
the passphrase. ``kjumpctl key show`` says whether a key is configured.

Exit codes: 0 done, 1 refused or failed (reason on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from .. import seal
from . import EXIT_FAILED, EXIT_OK


def _read_passphrase(args: argparse.Namespace) -> bytearray | None:
    """From --passphrase-file (first line; ``-`` for stdin) or asked twice on the terminal."""
    if args.passphrase_file:
        try:
            if args.passphrase_file == "-":
                line = sys.stdin.buffer.readline()
            else:
                with open(args.passphrase_file, "rb") as handle:
                    line = handle.readline()
        except OSError as exc:
            print(f"kjumpctl: cannot read {args.passphrase_file}: {exc.strerror}", file=sys.stderr)
            return None
        return bytearray(line.rstrip(b"\n"))
    try:
        first = getpass.getpass("Passphrase for the hibernation image key: ")
        second = getpass.getpass("Same passphrase again: ")
    except (EOFError, KeyboardInterrupt):
        print("kjumpctl: no passphrase given", file=sys.stderr)
        return None
    if first != second:
        print("kjumpctl: the passphrases differ", file=sys.stderr)
        return None
    return bytearray(first.encode())


def _write(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file next to ``path`` with ``mode``, then rename it into place."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = f"{path}.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def cmd_init(args: argparse.Namespace) -> int:
    """kjumpctl key init [--force] [--passphrase-file FILE]."""
    existing = [p for p in (args.public, args.secret) if os.path.exists(p)]
    if existing and not args.force:
        print(f"kjumpctl: {' and '.join(existing)} exist{'s' if len(existing) == 1 else ''}; a new key makes a "
              "saved image that was sealed to the old one impossible to resume: run again with --force",
              file=sys.stderr)
        return EXIT_FAILED
    passphrase = _read_passphrase(args)
    if passphrase is None:
        return EXIT_FAILED
    if len(passphrase) < args.min_length:
        print(f"kjumpctl: the passphrase has {len(passphrase)} characters; at least {args.min_length} are needed",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        public, secret = seal.generate_key_pair(passphrase, seal.ScryptCost(log_n=args.cost))
        _write(args.secret, secret, 0o600)
        _write(args.public, seal.format_public_key(public).encode(), 0o644)
    except (OSError, seal.KeyFileError) as exc:
        print(f"kjumpctl: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        passphrase[:] = bytes(len(passphrase))
    print(f"image key {seal.key_id(public).hex()}: public key {args.public}, passphrase-protected private key "
          f"{args.secret}")
    print("images are encrypted from the next hibernation; run update-initramfs -u so that the boot "
          "initramfs can ask for the passphrase")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """kjumpctl key show: which key images are sealed to, and whether the private key is there."""
    try:
        public = seal.load_public_key(args.public)
    except seal.KeyFileError as exc:
        print(f"kjumpctl: no image key: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"image key {seal.key_id(public).hex()} ({args.public})")
    try:
        secret = seal.SecretKeyFile.load(args.secret)
    except seal.KeyFileError as exc:
        print(f"kjumpctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if secret.public != public:
        print(f"kjumpctl: {args.secret} holds another key ({seal.key_id(secret.public).hex()})", file=sys.stderr)
        return EXIT_FAILED
    print(f"private key {args.secret} (scrypt 2^{secret.cost.log_n}, r {secret.cost.r}, p {secret.cost.p})")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``kjumpctl key …``."""
    parser = sub.add_parser("key", help="the key pair that encrypts hibernation images",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    for name, func, text in (("init", cmd_init, "make a new key pair protected by a passphrase"),
                             ("show", cmd_show, "show the configured key")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--public", default=seal.PUBLIC_KEY_PATH,
                            help=f"public key file (default {seal.PUBLIC_KEY_PATH})")
        action.add_argument("--secret", default=seal.SECRET_KEY_PATH,
                            help=f"passphrase-protected private key file (default {seal.SECRET_KEY_PATH})")
        action.set_defaults(func=func)
        if name == "init":
            action.add_argument("--force", action="store_true", help="replace an existing key pair")
            action.add_argument("--passphrase-file", metavar="FILE",
                                help="read the passphrase from the first line of FILE ('-': standard input) "
                                "instead of asking twice on the terminal")
            action.add_argument("--min-length", type=int, default=8, help="shortest passphrase accepted (8)")
            action.add_argument("--cost", type=int, default=seal.ScryptCost().log_n, choices=range(10, 21),
                                metavar="LOG2N", help="scrypt cost: 2^LOG2N iterations (default "
                                f"{seal.ScryptCost().log_n}: 128 MiB, about half a second)")
