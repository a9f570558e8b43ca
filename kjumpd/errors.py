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


# The daemon's refusals of a request; each has a public D-Bus error name in
# kjumpd.api.ERROR_NAMES (a table, so renaming a class cannot change the API).


class Busy(KjumpError):
    """Another hibernation or preparation is running."""


class NotReady(KjumpError):
    """Hibernation is not possible now; the message lists the problems."""


class InvalidRestartPoint(KjumpError):
    """The restart point is not one the daemon supports."""


class InvalidOption(KjumpError):
    """An option of HibernateWithOptions is unknown or has the wrong type."""


class NotRunning(KjumpError):
    """Cancel was asked while no hibernation runs."""


class Inhibited(KjumpError):
    """A caller that is not root asked to hibernate while a logind block inhibitor for sleep is held."""


class TooLate(KjumpError):
    """Cancel was asked after the hibernation passed its point of no return (the jump)."""
