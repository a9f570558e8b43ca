"""The save program: runs in the hibernate kernel B (``python -m kjumpd.boot.save``).

B's kernel command line says where the image target is (``kjump.target=``,
``kjump.offset=``), where B runs (``kjump.region=``), which machine this is
(``kjump.machine=``, real by default) and, appended by kexec-tools' purgatory,
``kexec_jump_back_entry=``. The handoff A wrote right before the jump says
what to save and what to do after.

A failed save never strands A: the image is marked DISCARDED with the reason
and the restart point becomes ``resume``, so A carries on and reports it.
Whenever B returns to A after a good save without A being frozen (restart
point ``resume``, or a power-off or reboot that failed) it discards the image
first: A's tasks write from the moment A runs again, so the image would be
stale, and no boot may resume it (docs/restart-points.md).
When A jumps into the parked B again, the jump back returns here and the
next hibernation starts with a fresh handoff.
"""

from __future__ import annotations

import sys

from .. import image, kexec
from ..errors import KjumpError, MachineError
from ..format import RESULT_FAILED, State
from ..machine import Machine
from ..memmap import Range
from ..target import ImageTarget
from .common import ConsoleProgress, start_program


def _check_map(handoff_region: Range, args_region: Range | None, ranges: list[Range], low: Range) -> None:
    """Refuse a memory map that would make B save its own memory."""
    if args_region is not None and handoff_region != args_region:
        raise KjumpError(f"the handoff names region {handoff_region}, but this kernel runs in {args_region}; "
                         "the hibernate kernel must be staged again")
    for r in ranges:
        for own in (handoff_region, low):
            if r.start < own.end and own.start < r.end:
                raise KjumpError(f"the memory map includes {r}, which overlaps this kernel's memory {own}")


def save(machine: Machine, args: kexec.HibernateKernelArgs) -> tuple[str, bool]:
    """Save A's memory as the handoff says; returns (restart point, image saved)."""
    target: ImageTarget | None = None
    sequence: dict[str, int] = {}
    try:
        target = machine.open_target(args.target, offset=args.offset, writable=True)
        handoff, _ = image.read_handoff(target)
        sequence["sequence"] = handoff.sequence
        region = Range(handoff.region_base, handoff.region_base + handoff.region_size)
        low = Range(handoff.low_base, handoff.low_base + handoff.low_size)
        _check_map(region, args.region, handoff.memmap.ranges(), low)
        machine.console(f"saving {handoff.memmap.total_bytes >> 20} MiB of memory to {args.target} "
                        f"({handoff.compression.label}), then {handoff.restart_point}")
        with machine.physical_memory(writable=False) as memory:
            superblock = image.save(memory, target, handoff, jump_back_entry=args.jump_back_entry or 0,
                                    progress=ConsoleProgress(machine))
        machine.console(f"image saved: {superblock.image_bytes >> 20} MiB on disk")
        if handoff.restart_point == "resume":
            # A carries on: its tasks run (and write) the moment it is back, so
            # the image must be unusable before that, not after.
            image.discard(target, "A carried on (restart point resume)")
            return "resume", False
        return handoff.restart_point, True
    except Exception as exc:  # whatever went wrong, A must get control back
        reason = str(exc) or type(exc).__name__
        machine.console(f"saving the image failed: {reason}; returning to the running system")
        if target is not None:
            try:
                image.set_state(target, State.DISCARDED, reason=reason, restart_point="resume",
                                result=RESULT_FAILED, **sequence)
            except KjumpError as record_error:
                machine.console(f"could not record the failure in the image: {record_error}")
        return "resume", False
    finally:
        if target is not None:
            target.close()


def _discard_before_return(machine: Machine, args: kexec.HibernateKernelArgs, reason: str) -> None:
    """Make the saved image unusable before A runs again (A's writes would make it stale)."""
    try:
        with machine.open_target(args.target, offset=args.offset, writable=True) as target:
            image.discard(target, reason)
    except KjumpError as exc:
        machine.console(f"could not discard the image ({exc}): the running system discards it")


def leave(machine: Machine, args: kexec.HibernateKernelArgs, restart_point: str, saved: bool) -> None:
    """Power off, reboot or jump back to A; returns when A jumps into this B again."""
    if restart_point in ("shutdown", "reboot"):
        machine.console("powering off" if restart_point == "shutdown" else "rebooting")
        try:
            (machine.power_off if restart_point == "shutdown" else machine.reboot)()
        except MachineError as exc:
            machine.console(f"{exc}; discarding the image and returning to the running system")
            _discard_before_return(machine, args, f"the hibernate kernel could not {restart_point}: {exc}")
            saved = False
    try:
        machine.jump_back(args.jump_back_entry or 0)
    except MachineError as exc:
        machine.console(f"{exc}")
        # A's memory is out of reach. With a saved image the next boot resumes
        # it; without one, a reboot is all that is left.
        if saved:
            machine.console("powering off: the next boot resumes from the image")
            machine.power_off()
        else:
            machine.console("rebooting: the running system cannot be reached")
            machine.reboot()


def main(argv: list[str] | None = None) -> int:
    """Entry point; on the real machine it only returns if everything failed."""
    started = start_program(kexec.ROLE_SAVE, "B", "Save A's memory (runs in B).", argv)
    if started is None:
        return 1
    machine, args = started
    while True:
        restart_point, saved = save(machine, args)
        leave(machine, args, restart_point, saved)
        machine.console("entered again by the running system: starting a new hibernation")


if __name__ == "__main__":
    sys.exit(main())
