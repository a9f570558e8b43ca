"""Exceptions shared by every part of kjumpd.

Each carries a message meant for a person: the command-line tools print it as
it is, the daemon puts it in ``Problems`` or ``LastResult``.
"""


class KjumpError(Exception):
    """Base class of every error kjumpd reports on purpose."""


class FormatError(KjumpError):
    """A record on disk is not what the format allows (bad magic, checksum, version)."""


class ImageError(KjumpError):
    """An image cannot be written, verified or restored; nothing was changed."""


class RefusedError(KjumpError):
    """A hibernation cannot be done safely and was refused before anything was touched."""


class MachineError(KjumpError):
    """The machine (kexec, power states, devices) failed an operation."""
