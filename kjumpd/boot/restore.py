"""The restore program: runs in the hibernate kernel R (``python -m kjumpd.boot.restore``).

C loaded R into the B region with ``kjump.role=restore``. R reads the image
once: it checks each chunk just before writing its pages back into A's
memory (``mmap`` of ``/dev/mem`` on the real machine), marks the image
consumed and jumps to A's entry. If anything fails, even after some pages
were written (A's memory is lost then, but it was lost anyway: this is a
fresh boot), the image is discarded with the reason and the machine reboots
into a normal boot.
"""

from __future__ import annotations

import sys

from .. import image, kexec
from ..errors import KjumpError
from ..format import State
from ..machine import Machine
from .common import ConsoleProgress, start_program


def restore(machine: Machine, args: kexec.HibernateKernelArgs) -> int:
    """Restore and jump; returns A's entry, or raises KjumpError with the reason."""
    with machine.open_target(args.target, offset=args.offset, writable=True) as target:
        try:
            with machine.physical_memory(writable=True) as memory:
                superblock = image.restore(target, memory, progress=ConsoleProgress(machine),
                                           key=machine.handed_key())
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            try:
                if image.read_superblock(target).state in (*image.RESUMABLE, State.RESTORING):
                    image.discard(target, f"restore failed: {reason}")
            except KjumpError as record_error:
                machine.console(f"could not mark the image discarded: {record_error}")
            raise KjumpError(reason) from exc
    if not superblock.jump_back_entry:
        raise KjumpError("the image records no jump-back entry")
    return superblock.jump_back_entry


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns only when the resume failed (after rebooting on the real machine)."""
    started = start_program(kexec.ROLE_RESTORE, "R", "Restore A's memory (runs in R).", argv)
    if started is None:
        return 1
    machine, args = started
    try:
        entry = restore(machine, args)
        machine.console(f"memory restored; jumping to the hibernated system at {entry:#x}")
        machine.jump_back(entry)
        machine.console("the hibernated system returned control unexpectedly")
    except KjumpError as exc:
        machine.console(f"resume failed: {exc}; rebooting into a normal boot")
    machine.reboot()
    return 1


if __name__ == "__main__":
    sys.exit(main())
