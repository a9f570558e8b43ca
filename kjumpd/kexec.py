"""Every kexec call kjumpd makes, in one place.

Three kinds of call:

* kexec-tools command lines: A staging B (``kexec -c -l --load-preserve-context
  -i --mem-min --mem-max``), C loading R (plain ``kexec -c -l`` into the same
  region), executing (``kexec -e -x``) and unloading (``kexec -u``);
* the kernel command line B and R get: confined to the B region with
  ``memmap=exactmap``, A's RAM passed as ``memmap=SIZE#START`` so B's
  identity map covers A's jump-back entry, and the ``kjump.*`` parameters;
* the jump back to A from B or R, done with ``kexec_load(2)`` and
  ``reboot(LINUX_REBOOT_CMD_KEXEC)`` through ctypes, because kexec-tools'
  ``--load-jump-back-helper`` fails with ENOMEM on Linux >= 6.12 (its empty
  segment at address 0 wraps round ``kimage_is_destination_range()``).

The builders are pure functions of a recorded layout, so tests check the
exact command lines; the functions that run something take a runner.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import MachineError
from .memmap import DEFAULT_LOW, PAGE_SIZE, Range, normalise, subtract

KEXEC = "kexec"

# include/uapi/linux/kexec.h
KEXEC_PRESERVE_CONTEXT = 0x00000002
KEXEC_ARCH_X86_64 = 62 << 16
# include/uapi/linux/reboot.h
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_CMD_KEXEC = 0x45584543
# arch/x86/entry/syscalls/syscall_64.tbl
SYS_REBOOT_X86_64 = 169
SYS_KEXEC_LOAD_X86_64 = 246

# kexec-tools puts the ELF core header for preserve-context images in the top
# 16 KiB of [mem-min, mem-max]; B must not use those pages as RAM.
ELFCOREHDR_RESERVE = 16 << 10
# COMMAND_LINE_SIZE on x86; kexec-tools appends about 100 bytes of its own.
COMMAND_LINE_SIZE = 2048
KEXEC_TOOLS_APPENDS = 128
# A's kexec control page (holding the jump-back entry) is allocated from
# ordinary RAM, never below 1 MiB, which Linux >= 5.13 keeps reserved.
LOW_MEMORY_END = 1 << 20

ROLE_SAVE = "save"
ROLE_RESTORE = "restore"
ROLES = (ROLE_SAVE, ROLE_RESTORE)

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text; the default runner."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


@dataclass(frozen=True)
class LoadSpec:
    """What to load with kexec: the hibernate kernel in the B region.

    ``preserve_context`` is True for B (A stages it and expects control back)
    and False for R (C loads it and never runs again).
    """

    kernel: str
    initrd: str
    command_line: str
    region: Range
    preserve_context: bool

    @property
    def mem_max(self) -> int:
        """The last byte of the region, as kexec-tools' ``--mem-max`` wants it."""
        return self.region.end - 1


@dataclass(frozen=True)
class KernelParameters:
    """The inputs of B's and R's kernel command line, all fixed when B is staged."""

    ram: Sequence[Range]
    region: Range
    role: str
    target: str
    offset: int = 0
    extra: str = ""
    low: Range = field(default_factory=lambda: Range(DEFAULT_LOW[0], DEFAULT_LOW[0] + DEFAULT_LOW[1]))


def _kib(value: int) -> str:
    if value % 1024:
        raise MachineError(f"{value:#x} is not a multiple of 1 KiB; memmap= cannot express it")
    return f"{value >> 10}K"


def a_ram_outside_b(ram: Sequence[Range], region: Range, low: Range) -> list[Range]:
    """A's RAM above 1 MiB that B does not own, in whole pages.

    B gets these as ``memmap=SIZE#START`` ("ACPI data"): B never allocates
    them, but its kexec identity map covers them, so its jump back reaches
    A's entry in A's control page.
    """
    pages = []
    for r in subtract(ram, [region, low, Range(0, LOW_MEMORY_END)]):
        start = (r.start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        end = r.end & ~(PAGE_SIZE - 1)
        if end > start:
            pages.append(Range(start, end))
    return normalise(pages)


def kernel_command_line(params: KernelParameters) -> str:
    """B's (role ``save``) or R's (role ``restore``) kernel command line.

    The order is fixed so the result can be compared with recorded layouts.
    Raises MachineError when the line would not fit the kernel's buffer.
    """
    if params.role not in ROLES:
        raise MachineError(f"unknown hibernate-kernel role {params.role!r}; expected one of {', '.join(ROLES)}")
    region = params.region
    if region.start % PAGE_SIZE or region.end % PAGE_SIZE:
        raise MachineError(f"the B region {region} is not page aligned")
    if region.size <= ELFCOREHDR_RESERVE:
        raise MachineError(f"the B region {region} is too small to boot a kernel in")
    if not params.target or any(ch.isspace() or ch == '"' for ch in params.target):
        raise MachineError(f"image target {params.target!r} cannot be passed on a kernel command line")
    words = [
        "memmap=exactmap",
        f"memmap={_kib(params.low.size)}@{_kib(params.low.start)}",
        f"memmap={_kib(region.size - ELFCOREHDR_RESERVE)}@{_kib(region.start)}",
    ]
    words += [f"memmap={_kib(r.size)}#{_kib(r.start)}" for r in a_ram_outside_b(params.ram, region, params.low)]
    words += [
        "nokaslr", "maxcpus=1", "iomem=relaxed", "noresume", "panic=10",
        f"kjump.role={params.role}",
        f"kjump.target={params.target}",
        f"kjump.offset={params.offset}",
        f"kjump.region={region.start:#x}-{region.end - 1:#x}",
    ]
    extra = split_command_line(params.extra)
    for word in extra:
        if word.name.startswith("kjump."):
            raise MachineError(f"extra kernel argument {word.text!r}: the kjump.* parameters are set by kjumpd")
    line = " ".join(words + [word.text for word in extra])
    if len(line) + KEXEC_TOOLS_APPENDS > COMMAND_LINE_SIZE:
        raise MachineError(
            f"the hibernate kernel's command line would be {len(line)} bytes, more than the kernel's "
            f"{COMMAND_LINE_SIZE}-byte buffer allows with kexec-tools' additions "
            f"(RAM in {len(a_ram_outside_b(params.ram, region, params.low))} pieces)")
    return line


def load_argv(spec: LoadSpec) -> list[str]:
    """kexec-tools' command line that loads ``spec``.

    ``-c`` forces ``kexec_load`` (only it can preserve context, and kexec-tools
    >= 2.0.27 tries ``kexec_file_load`` first); ``-i`` skips hashing the
    region, which makes the load seconds faster.
    """
    argv = [KEXEC, "-c", "-l"]
    if spec.preserve_context:
        argv += ["--load-preserve-context", "-i"]
    argv += [
        f"--mem-min={spec.region.start:#x}",
        f"--mem-max={spec.mem_max:#x}",
        spec.kernel,
    ]
    if spec.initrd:
        argv.append(f"--initrd={spec.initrd}")
    argv.append(f"--append={spec.command_line}")
    return argv


def execute_argv() -> list[str]:
    """``kexec -e -x``: jump; ``-x`` keeps network interfaces up for the way back."""
    return [KEXEC, "-e", "-x"]


def unload_argv() -> list[str]:
    """``kexec -u``: unload the staged image."""
    return [KEXEC, "-u"]


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() or f"exit status {result.returncode}"
        raise MachineError(f"{what} failed: {detail}")


def check_files(spec: LoadSpec) -> None:
    """MachineError unless the kernel (and initramfs, when given) of ``spec`` exist."""
    if not spec.kernel:
        raise MachineError("no hibernate kernel configured")
    for path, what in ((spec.kernel, "hibernate kernel"), (spec.initrd, "its initramfs")):
        if path and not os.path.isfile(path):
            raise MachineError(f"{what} {path} does not exist")


def load(spec: LoadSpec, runner: Runner = run_command) -> None:
    """Load ``spec`` with kexec-tools; MachineError with kexec's message on failure."""
    check_files(spec)
    _check(runner(load_argv(spec)), "kexec load")


def unload(runner: Runner = run_command) -> None:
    """Unload the staged image."""
    _check(runner(unload_argv()), "kexec unload")


def execute(runner: Runner = run_command) -> subprocess.CompletedProcess[str]:
    """Run ``kexec -e -x`` and return its result.

    Its exit status means nothing: after a successful round trip it is 255 and
    prints "kexec failed". The caller decides from the image superblock.
    """
    return runner(execute_argv())


class KexecSegment(ctypes.Structure):
    """``struct kexec_segment`` of include/uapi/linux/kexec.h."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("bufsz", ctypes.c_size_t),
        ("mem", ctypes.c_ulong),
        ("memsz", ctypes.c_size_t),
    ]


@dataclass(frozen=True)
class JumpBackLoad:
    """The arguments of the ``kexec_load`` call that prepares the jump back."""

    entry: int
    segment_mem: int
    flags: int


def jump_back_load(entry: int) -> JumpBackLoad:
    """The jump-back image for A's entry: one empty segment at the entry's page.

    Putting the segment at the entry's page instead of at 0 (as kexec-tools
    does) avoids the ENOMEM of Linux >= 6.12.
    """
    if entry <= 0 or entry >= 1 << 52:
        raise MachineError(f"kexec_jump_back_entry {entry:#x} is not a physical address")
    return JumpBackLoad(entry, entry & ~(PAGE_SIZE - 1), KEXEC_PRESERVE_CONTEXT | KEXEC_ARCH_X86_64)


Syscall = Callable[..., int]


def _libc_syscall() -> Syscall:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall


def jump_back(entry: int, syscall: Syscall | None = None) -> None:
    """Jump to A's ``kexec_jump_back_entry`` from B or R.

    Returns only if the jump failed (MachineError); when A later jumps into
    this kernel again (B parked, A hibernating a second time) ``reboot``
    returns 0 and so does this function.
    """
    if os.uname().machine != "x86_64" and syscall is None:
        raise MachineError(f"the jump back is implemented for x86_64 only, not {os.uname().machine}")
    call = syscall or _libc_syscall()
    plan = jump_back_load(entry)
    segment = KexecSegment(None, 0, plan.segment_mem, 0)
    if call(SYS_KEXEC_LOAD_X86_64, ctypes.c_ulong(plan.entry), ctypes.c_ulong(1),
            ctypes.byref(segment), ctypes.c_ulong(plan.flags)) != 0:
        err = ctypes.get_errno()
        raise MachineError(f"kexec_load of the jump back to {entry:#x} failed: {os.strerror(err)}")
    if call(SYS_REBOOT_X86_64, ctypes.c_uint(LINUX_REBOOT_MAGIC1), ctypes.c_uint(LINUX_REBOOT_MAGIC2),
            ctypes.c_uint(LINUX_REBOOT_CMD_KEXEC), None) != 0:
        err = ctypes.get_errno()
        raise MachineError(f"the jump back to {entry:#x} failed: {os.strerror(err)}")


# What the kernel takes for white space between parameters (isspace() of
# include/linux/ctype.h on ASCII).
_SPACE = " \t\n\v\f\r"


@dataclass(frozen=True)
class Word:
    """One parameter of a kernel command line: its text as written, its name and value.

    ``value`` is None for a bare word (``quiet``) and the value with the
    kernel's quote removal applied otherwise (``a="b c"`` has the value ``b c``).
    """

    text: str
    name: str
    value: str | None


def split_command_line(text: str) -> list[Word]:
    """Split a kernel command line into parameters exactly as the kernel does.

    The rules of the kernel's ``next_arg()`` (lib/cmdline.c; kernel/params.c
    before 4.x): words are
    separated by white space outside double quotes; a double quote toggles
    quoting anywhere in a word and cannot be escaped; a single quote is an
    ordinary character; the first ``=`` (not in first position) separates the
    name from the value; a value that starts with a quote loses it and a
    closing quote at the end of the word; a word that starts with a quote
    loses it and a closing quote at its end. ``--`` ends the kernel's
    parameters (what follows is for init). Never raises: every string is a
    command line to the kernel.
    """
    words: list[Word] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return words
        start = i
        quoted = in_quote = text[i] == '"'
        i += quoted
        arg_start, equals = i, -1
        while i < n and (in_quote or text[i] not in _SPACE):
            if equals < 0 and text[i] == "=" and i > arg_start:
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        arg = text[arg_start:i]
        if equals < 0:
            if arg == "--":
                return words
            words.append(Word(text[start:i], arg, None))
            continue
        value_start, value_end = equals - arg_start + 1, len(arg)
        closing = arg.endswith('"')
        if arg[value_start:value_start + 1] == '"':
            value_start += 1
            value_end -= closing
        elif quoted:
            value_end -= closing
        words.append(Word(text[start:i], arg[:equals - arg_start], arg[value_start:max(value_start, value_end)]))


def parse_command_line(text: str) -> dict[str, str]:
    """The parameters of a kernel command line by name (a bare word maps to "", the last one wins)."""
    return {word.name: word.value or "" for word in split_command_line(text)}


# The console parameters C passes on to R, and what their values may hold:
# device names and options such as ``ttyS0,115200n8``, ``uart8250,io,0x3f8``,
# ``serial,ttyS0,115200,keep`` -- never white space, quotes or ``=``.
CONSOLE_PARAMETERS = ("console", "earlyprintk")
_CONSOLE_VALUE = re.compile(r"[A-Za-z0-9_.,:/@+-]+")


def console_words(words: Sequence[Word]) -> tuple[list[str], list[str]]:
    """The console settings of C's command line that R may inherit, rebuilt from checked values.

    Returns (words for R's command line, words refused). Each ``console=``
    and ``earlyprintk=`` is kept, in order, only when its value is plain (see
    ``_CONSOLE_VALUE``), and is written back unquoted from that value: a
    quoted value that smuggles another parameter (``console="ttyS0
    kjump.target=/dev/sdz"``) never reaches R.
    """
    kept: list[str] = []
    refused: list[str] = []
    for word in words:
        if word.name not in CONSOLE_PARAMETERS:
            continue
        if word.value is not None and _CONSOLE_VALUE.fullmatch(word.value):
            kept.append(f"{word.name}={word.value}")
        else:
            refused.append(word.text)
    return kept, refused


@dataclass(frozen=True)
class HibernateKernelArgs:
    """What B or R learn from their kernel command line."""

    role: str
    target: str
    offset: int
    region: Range | None
    machine: str
    jump_back_entry: int | None


def hibernate_kernel_args(params: Mapping[str, str]) -> HibernateKernelArgs:
    """Read the ``kjump.*`` parameters and ``kexec_jump_back_entry``; MachineError when incomplete."""
    role = params.get("kjump.role", "")
    if role not in ROLES:
        raise MachineError(f"kjump.role={role!r} on the command line; expected one of {', '.join(ROLES)}")
    target = params.get("kjump.target", "")
    if not target:
        raise MachineError("no kjump.target= on the command line")
    try:
        offset = int(params.get("kjump.offset", "0"), 0)
        entry_text = params.get("kexec_jump_back_entry")
        entry = int(entry_text, 16) if entry_text else None
        region = None
        if params.get("kjump.region"):
            start, end = params["kjump.region"].split("-", 1)
            region = Range(int(start, 0), int(end, 0) + 1)
    except ValueError as exc:
        raise MachineError(f"malformed kjump parameter on the command line: {exc}") from exc
    return HibernateKernelArgs(role, target, offset, region, params.get("kjump.machine", ""), entry)
