"""Fallback jump back from B to A, used by /init when the save program could
not run at all. Self-contained on purpose (no kjumpd import): one
preserve-context kexec_load whose only, empty segment sits at the page of A's
kexec_jump_back_entry, then reboot(LINUX_REBOOT_CMD_KEXEC). This works on 6.12,
where kexec-tools' --load-jump-back-helper fails with ENOMEM.

The constants are kjumpd.kexec's (a test keeps them equal); this file cannot import them."""
import ctypes
import os
import sys

SYS_kexec_load, SYS_reboot = 246, 169          # x86_64
KEXEC_PRESERVE_CONTEXT, KEXEC_ARCH_X86_64 = 0x2, 62 << 16
MAGIC1, MAGIC2, CMD_KEXEC = 0xFEE1DEAD, 672274793, 0x45584543


class Segment(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("bufsz", ctypes.c_size_t),
                ("mem", ctypes.c_ulong), ("memsz", ctypes.c_size_t)]


def main() -> int:
    """Jump to A's kexec_jump_back_entry; returns only on failure (or when A jumps into B again)."""
    entry = None
    for arg in open("/proc/cmdline").read().split():
        if arg.startswith("kexec_jump_back_entry="):
            entry = int(arg.split("=", 1)[1], 0)
    if entry is None:
        print("jumpback: no kexec_jump_back_entry= on the command line", flush=True)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    seg = Segment(None, 0, entry & ~0xFFF, 0)
    rc = libc.syscall(ctypes.c_long(SYS_kexec_load), ctypes.c_ulong(entry), ctypes.c_ulong(1),
                      ctypes.byref(seg), ctypes.c_ulong(KEXEC_PRESERVE_CONTEXT | KEXEC_ARCH_X86_64))
    if rc != 0:
        print(f"jumpback: kexec_load: {os.strerror(ctypes.get_errno())}", flush=True)
        return 1
    print(f"jumpback: jumping to 0x{entry:x}", flush=True)
    os.sync()
    rc = libc.syscall(ctypes.c_long(SYS_reboot), ctypes.c_uint(MAGIC1), ctypes.c_uint(MAGIC2),
                      ctypes.c_uint(CMD_KEXEC), None)
    # back here only if A jumped into B again
    print(f"jumpback: reboot(KEXEC) returned {rc}", flush=True)
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
