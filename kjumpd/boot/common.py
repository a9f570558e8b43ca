"""What the programs of the boot stages (B's save, R's restore, C's resume check) share.

Their start-up: the kernel command line (``/proc/cmdline`` or ``--cmdline``),
the ``kjump.*`` arguments and the machine they name; and the progress they
print on the console. Nothing here may import the daemon side: these modules
run in an initramfs (see ``kjumpd.host.closure``).
"""

from __future__ import annotations

import argparse
import sys

from .. import kexec
from ..errors import KjumpError, MachineError
from ..machine import Machine, machine_from_command_line


class ConsoleProgress:
    """Prints the image engine's progress on the console every ``step`` percent of each phase."""

    def __init__(self, machine: Machine, step: int = 10) -> None:
        self.machine = machine
        self.step = step
        self.phase = ""
        self.shown = 0

    def __call__(self, done: int, total: int, phase: str) -> None:
        percent = 100 * done // total if total else 100
        if phase != self.phase or percent // self.step != self.shown // self.step:
            self.phase, self.shown = phase, percent
            label = {"save": "saving", "verify": "verifying", "restore": "restoring"}.get(phase, phase)
            self.machine.console(f"{label}: {percent}% of {total >> 20} MiB")


def command_line_text(text: str | None) -> str:
    """The given command line, or ``/proc/cmdline``."""
    if text is None:
        with open("/proc/cmdline", encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    return text


def read_command_line(text: str | None) -> dict[str, str]:
    """The parameters of the given command line, or of ``/proc/cmdline``, as the kernel splits them."""
    return kexec.parse_command_line(command_line_text(text))


def start_program(role: str, kernel: str, description: str,
                  argv: list[str] | None) -> tuple[Machine, kexec.HibernateKernelArgs] | None:
    """Parse the program's options and kernel command line for B's or R's program.

    Returns the machine and the ``kjump.*`` arguments, or None after saying
    on stderr why the program cannot start.
    """
    parser = argparse.ArgumentParser(prog=f"kjumpd.boot.{role}", description=description)
    parser.add_argument("--cmdline", help="kernel command line to use instead of /proc/cmdline")
    options = parser.parse_args(argv)
    try:
        params = read_command_line(options.cmdline)
        args = kexec.hibernate_kernel_args(params)
        if args.role != role:
            raise MachineError(f"this is the {role} program but kjump.role={args.role}")
        if role == kexec.ROLE_SAVE and args.jump_back_entry is None:
            raise MachineError("no kexec_jump_back_entry= on the command line: not started by a kexec jump")
        return machine_from_command_line(params, kernel=kernel), args
    except (KjumpError, OSError) as exc:
        print(f"kjump: cannot start the {role}: {exc}", file=sys.stderr, flush=True)
        return None
