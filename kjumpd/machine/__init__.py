"""The machine layer: ``open_machine("real")`` or ``open_machine("simulated", path)``.

The hibernate-kernel programs (B, R) and the resume hook (C) learn their
machine from the kernel command line: ``kjump.machine=simulated:/path`` for
the simulated one, the real machine when the parameter is absent.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import MachineError
from .base import Fingerprint, Machine, MachineLostError

KINDS = ("real", "simulated")

__all__ = ["Fingerprint", "Machine", "MachineLostError", "open_machine", "machine_from_command_line", "KINDS"]


def open_machine(kind: str, path: str | None = None, *, kernel: str = "A") -> Machine:
    """Open the real machine, or the simulated machine kept in directory ``path``.

    ``kernel`` says which kernel the caller plays on the simulated machine
    (A, B, C or R); the real machine ignores it.
    """
    if kind == "real":
        from .real import RealMachine

        return RealMachine()
    if kind == "simulated":
        if not path:
            raise MachineError("the simulated machine needs the path of its directory")
        from .simulated import SimulatedMachine

        return SimulatedMachine(path, kernel=kernel)
    raise MachineError(f"unknown machine type {kind!r}; expected one of {', '.join(KINDS)}")


def machine_from_command_line(params: Mapping[str, str], kernel: str) -> Machine:
    """The machine named by ``kjump.machine=`` (``real`` or ``simulated:/path``); real by default."""
    value = params.get("kjump.machine", "real") or "real"
    kind, _, path = value.partition(":")
    return open_machine(kind, path or None, kernel=kernel)
