"""kexec.py: exact kexec-tools command lines and kernel parameters for recorded layouts,
and the ctypes jump back with a recording syscall (nothing is ever executed here)."""

from __future__ import annotations

import ctypes
import subprocess

import pytest

from kjumpd import kexec
from kjumpd.errors import MachineError
from kjumpd.memmap import Range, choose_region, parse_iomem

VM_1G = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
00100000-3ffdffff : System RAM
  01000000-01c01e77 : Kernel code
3ffe0000-3fffffff : Reserved
"""

VM_4G = """\
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
00100000-bffdffff : System RAM
bffe0000-bfffffff : Reserved
feffc000-feffffff : Reserved
100000000-13fffffff : System RAM
"""

LAPTOP = """\
00001000-0009efff : System RAM
0009f000-000fffff : Reserved
00100000-09afffff : System RAM
09b00000-09dfffff : Reserved
09e00000-09efffff : System RAM
09f00000-09f0ffff : ACPI Non-volatile Storage
09f10000-b8b6afff : System RAM
b8b6b000-bbe7efff : Reserved
bbe7f000-bc27efff : ACPI Non-volatile Storage
bc27f000-bdffffff : System RAM
be000000-bfffffff : Reserved
100000000-43e2fffff : System RAM
"""

TAIL = "nokaslr maxcpus=1 iomem=relaxed noresume panic=10"


def params(iomem: str, role: str = "save", extra: str = "console=ttyS0") -> kexec.KernelParameters:
    ram = parse_iomem(iomem)
    return kexec.KernelParameters(ram=ram, region=choose_region(ram, 256 << 20), role=role,
                                  target="/dev/disk/by-partuuid/5e3a-02", offset=8192, extra=extra)


def test_vm_1g_command_line() -> None:
    assert kexec.kernel_command_line(params(VM_1G)) == (
        "memmap=exactmap memmap=256K@64K memmap=262128K@785408K "
        "memmap=784384K#1024K memmap=896K#1047552K " + TAIL +
        " kjump.role=save kjump.target=/dev/disk/by-partuuid/5e3a-02 kjump.offset=8192"
        " kjump.region=0x2ff00000-0x3fefffff console=ttyS0")


def test_vm_4g_command_line_reaches_ram_above_4g() -> None:
    line = kexec.kernel_command_line(params(VM_4G, role="restore", extra=""))
    assert line == (
        "memmap=exactmap memmap=256K@64K memmap=262128K@4980736K "
        "memmap=3144576K#1024K memmap=786432K#4194304K " + TAIL +
        " kjump.role=restore kjump.target=/dev/disk/by-partuuid/5e3a-02 kjump.offset=8192"
        " kjump.region=0x130000000-0x13fffffff")


def test_laptop_with_holes_passes_every_ram_piece_exactly() -> None:
    line = kexec.kernel_command_line(params(LAPTOP, extra=""))
    assert line.startswith("memmap=exactmap memmap=256K@64K memmap=262128K@17533952K "
                           "memmap=157696K#1024K memmap=1024K#161792K memmap=2863468K#162880K "
                           "memmap=30212K#3082748K memmap=13339648K#4194304K " + TAIL)
    # Reserved and ACPI NVS holes never become RAM or "ACPI data" for B.
    assert "#158720K" not in line and "#3158524K" not in line


def test_b_load_argv() -> None:
    spec = kexec.LoadSpec("/boot/kjump/vmlinuz", "/boot/kjump/initrd.img", "memmap=exactmap x",
                          Range(0x2FF00000, 0x3FF00000), preserve_context=True)
    assert kexec.load_argv(spec) == [
        "kexec", "-c", "-l", "--load-preserve-context", "-i", "--mem-min=0x2ff00000",
        "--mem-max=0x3fefffff", "/boot/kjump/vmlinuz", "--initrd=/boot/kjump/initrd.img",
        "--append=memmap=exactmap x"]


def test_r_load_argv_is_a_plain_load() -> None:
    spec = kexec.LoadSpec("/k", "", "a b", Range(0x130000000, 0x140000000), preserve_context=False)
    assert kexec.load_argv(spec) == ["kexec", "-c", "-l", "--mem-min=0x130000000", "--mem-max=0x13fffffff",
                                     "/k", "--append=a b"]


def test_execute_and_unload_argv() -> None:
    assert kexec.execute_argv() == ["kexec", "-e", "-x"]
    assert kexec.unload_argv() == ["kexec", "-u"]


def test_load_reports_kexec_error(tmp_path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    calls = []

    def runner(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 255, "", "kexec_load failed: Operation not permitted\n")

    spec = kexec.LoadSpec(str(kernel), "", "x", Range(0x2FF00000, 0x3FF00000), True)
    with pytest.raises(MachineError, match="kexec load failed: kexec_load failed: Operation not permitted"):
        kexec.load(spec, runner)
    assert calls == [kexec.load_argv(spec)]


def test_load_refuses_missing_kernel_before_running_anything(tmp_path) -> None:
    spec = kexec.LoadSpec(str(tmp_path / "missing"), "", "x", Range(0, 1 << 30), True)
    with pytest.raises(MachineError, match="does not exist"):
        kexec.load(spec, lambda argv: pytest.fail("kexec must not run"))


def test_command_line_too_long_is_refused() -> None:
    ram = [Range(0x100000 + i * 0x200000, 0x100000 + i * 0x200000 + 0x100000) for i in range(200)]
    ram.append(Range(0x40000000, 0x80000000))
    p = kexec.KernelParameters(ram=ram, region=Range(0x70000000, 0x80000000), role="save", target="/dev/vdb")
    with pytest.raises(MachineError, match="command line would be"):
        kexec.kernel_command_line(p)


@pytest.mark.parametrize("target", ["", "/dev/disk/by-label/my disk"])
def test_unusable_target_names_are_refused(target: str) -> None:
    p = params(VM_1G)
    with pytest.raises(MachineError, match="cannot be passed"):
        kexec.kernel_command_line(kexec.KernelParameters(p.ram, p.region, "save", target))


def test_jump_back_uses_one_empty_segment_at_the_entry_page() -> None:
    calls = []

    def syscall(number, *args):
        if number == kexec.SYS_KEXEC_LOAD_X86_64:
            entry, count, segment_ref, flags = args
            segment = ctypes.cast(segment_ref, ctypes.POINTER(kexec.KexecSegment)).contents
            calls.append(("kexec_load", entry.value, count.value, segment.mem, segment.memsz, segment.bufsz,
                          flags.value))
        else:
            calls.append(("reboot", *(a.value for a in args[:3])))
        return 0

    kexec.jump_back(0x1_01E1_70FB, syscall)
    assert calls == [
        ("kexec_load", 0x1_01E1_70FB, 1, 0x1_01E1_7000, 0, 0, 0x2 | (62 << 16)),
        ("reboot", 0xFEE1DEAD, 672274793, 0x45584543),
    ]


def test_jump_back_failure_is_reported() -> None:
    with pytest.raises(MachineError, match="kexec_load of the jump back"):
        kexec.jump_back(0x56E60F2, lambda *args: -1)


def test_hibernate_kernel_args_from_a_command_line() -> None:
    line = ("console=ttyS0 memmap=exactmap kjump.role=save kjump.target=/dev/disk/by-uuid/ab-cd "
            "kjump.offset=4096 kjump.region=0x2ff00000-0x3fefffff kexec_jump_back_entry=0x00000000053700f2")
    args = kexec.hibernate_kernel_args(kexec.parse_command_line(line))
    assert args == kexec.HibernateKernelArgs("save", "/dev/disk/by-uuid/ab-cd", 4096,
                                             Range(0x2FF00000, 0x3FF00000), "", 0x53700F2)


@pytest.mark.parametrize("line, message", [
    ("kjump.target=/dev/vdb", "kjump.role"),
    ("kjump.role=save", "kjump.target"),
    ("kjump.role=save kjump.target=/dev/vdb kjump.offset=x", "malformed"),
])
def test_hibernate_kernel_args_incomplete(line: str, message: str) -> None:
    with pytest.raises(MachineError, match=message):
        kexec.hibernate_kernel_args(kexec.parse_command_line(line))


# --- the kernel's own command-line syntax (issue 16.4) ---------------------------------


@pytest.mark.parametrize("line, expected", [
    # a single quote is an ordinary character for the kernel (shlex raised ValueError)
    ("ro foo=it's kjump.resume=/dev/vdb", {"ro": "", "foo": "it's", "kjump.resume": "/dev/vdb"}),
    # double quotes group spaces; the kernel strips them around a value
    ('dyndbg="file kexec.c +p" quiet', {"dyndbg": "file kexec.c +p", "quiet": ""}),
    # a quote before the name quotes the whole word; the closing one is dropped from the value
    ('"quoted=a b" x=1', {"quoted": "a b", "x": "1"}),
    # quotes inside a value are kept and still group spaces
    ('a=x"y z"w b', {"a": 'x"y z"w', "b": ""}),
    # an unterminated quote runs to the end of the line
    ('a="b c d', {"a": "b c d"}),
    # tabs and newlines separate words; the last of two equal names wins (as for kjump.*)
    ("x=1\tx=2\ny=3\n", {"x": "2", "y": "3"}),
    # after "--" come init's arguments, not kernel parameters
    ("ro -- kjump.resume=/dev/sdz", {"ro": ""}),
    ("", {}),
])
def test_command_line_is_parsed_as_the_kernel_does(line: str, expected: dict[str, str]) -> None:
    assert kexec.parse_command_line(line) == expected


def test_every_value_of_a_repeated_name_is_kept_in_order() -> None:
    words = kexec.split_command_line('console=tty0 quiet console="ttyS0,115200n8" console')
    assert [(w.name, w.value) for w in words] == [
        ("console", "tty0"), ("quiet", None), ("console", "ttyS0,115200n8"), ("console", None)]
    assert words[2].text == 'console="ttyS0,115200n8"'


def test_extra_arguments_keep_their_quotes() -> None:
    line = kexec.kernel_command_line(params(VM_1G, extra='dyndbg="file kexec.c +p" loglevel=7'))
    assert line.endswith(' dyndbg="file kexec.c +p" loglevel=7')
    assert kexec.parse_command_line(line)["dyndbg"] == "file kexec.c +p"


@pytest.mark.parametrize("extra", ["kjump.target=/dev/sdz", '"kjump.offset=0"', "kjump.role=save"])
def test_extra_arguments_cannot_override_kjump_parameters(extra: str) -> None:
    with pytest.raises(MachineError, match="kjump"):
        kexec.kernel_command_line(params(VM_1G, extra=extra))


@pytest.mark.parametrize("line, consoles", [
    ("console=ttyS0,115200n8 console=tty0 earlyprintk=serial,ttyS0,115200",
     ["console=ttyS0,115200n8", "console=tty0", "earlyprintk=serial,ttyS0,115200"]),
    # the injection of issue 16.4: a quoted console value carrying a second parameter
    ('console="ttyS0 kjump.target=/dev/sdz"', []),
    ('console=ttyS0 console="tty0"', ["console=ttyS0", "console=tty0"]),
    ("console= console=tty0' quiet", []),
])
def test_console_words_carry_only_validated_values(line: str, consoles: list[str]) -> None:
    words, dropped = kexec.console_words(kexec.split_command_line(line))
    assert words == consoles
    for word in words:
        assert kexec.parse_command_line(word) == {word.split("=")[0]: word.split("=", 1)[1]}
    assert len(dropped) == len(kexec.split_command_line(line)) - len(consoles) - line.count("quiet")


@pytest.mark.parametrize("target", ["/dev/disk/by-id/a b", '/dev/a"b', ""])
def test_target_that_would_change_the_command_line_is_refused(target: str) -> None:
    """A double quote in the target would open a quoted run in R's or B's command line and
    swallow the parameters after it (issue 16.4: only checked values reach the line)."""
    p = params(VM_1G)
    with pytest.raises(MachineError, match="cannot be passed on a kernel command line"):
        kexec.kernel_command_line(kexec.KernelParameters(ram=p.ram, region=p.region, role="restore", target=target))
