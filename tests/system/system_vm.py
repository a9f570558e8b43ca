"""The system test's machine: QEMU/TCG with UEFI firmware and three virtio disks.

The console transcript and the shell agent on ttyS0 are the VM test's
(``tests/vm/vm_qemu.py``: :class:`Boot`, :class:`Agent`); this module only
makes the command line of an installed Debian:

* OVMF (UEFI) firmware with its own variable store per run; the firmware
  loads A's kernel (EFI stub) and initrd from the guest's ``/boot`` through
  fw_cfg, in place of a boot loader, with the kernel command line a Debian
  boot loader would pass (``root=LABEL=… ro``) plus ``console=ttyS0``;
* vda the root file system, vdb the image disk, vdc ``/home``;
* ``-no-reboot``: every power-off and reboot ends the QEMU process; the next
  one with the same disks is the next power-on;
* a QMP socket, for waking the guest from suspend to RAM (``system_wakeup``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from system_root import ROOT_LABEL, Guest
from vm_qemu import QEMU, Agent, Boot, VMError

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass
class SystemVM:
    guest: Guest
    disks: dict[str, Path]
    workdir: Path
    logdir: Path
    memory: str = "1G"
    smp: int = 2
    release: str = ""            # the kernel the firmware boots (default A's)
    append: str = ""             # more kernel arguments
    boots: list[Boot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vars = self.workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, self.vars)
        self.qmp_path = self.workdir / "qmp.sock"

    def command(self, name: str) -> list[str]:
        kernel, initrd = self.guest.boot_files(self.release or self.guest.kernel_release)
        append = f"root=LABEL={ROOT_LABEL} ro console=ttyS0 panic=-1 {self.append}".strip()
        return [
            QEMU, "-accel", "tcg", "-cpu", "max", "-m", self.memory, "-smp", str(self.smp),
            "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
            "-global", "PIIX4_PM.disable_s3=0",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            "-serial", "stdio", "-serial", f"file:{self.logdir / (name + '-ttyS1.log')}",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-drive", f"file={self.disks['root']},if=virtio,format=raw,cache=unsafe",
            "-drive", f"file={self.disks['image']},if=virtio,format=raw,cache=writeback",
            "-drive", f"file={self.disks['home']},if=virtio,format=raw,cache=unsafe",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-d", "guest_errors,cpu_reset", "-D", str(self.logdir / (name + "-qemu.log")),
        ]

    def power_on(self, name: str) -> Boot:
        """Start a QEMU process (a power-on) with the same disks."""
        if self.boots and self.boots[-1].alive():
            raise VMError(f"{self.boots[-1].name} is still running")
        boot = Boot(self, f"boot{len(self.boots) + 1}-{name}")
        self.boots.append(boot)
        return boot

    def qmp(self, command: str) -> dict:
        """One QMP command on the running QEMU (after the capabilities handshake)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rw")
            stream.readline()                          # greeting
            for cmd in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": cmd}) + "\n")
                stream.flush()
                while True:
                    reply = json.loads(stream.readline())
                    if "event" not in reply:
                        break
            return reply

    def close(self) -> None:
        for boot in self.boots:
            boot.close()

    def journal(self, dest: Path) -> str:
        """Copy the guest's journal off the (powered-off) root disk and render it.

        Returns ``journalctl -o short-monotonic`` of every boot in it."""
        if self.boots and self.boots[-1].alive():
            raise VMError("the guest is running; its journal is read from the disk when it is off")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        subprocess.run(["debugfs", "-R", f"rdump /var/log/journal {dest}", str(self.disks["root"])],
                       capture_output=True, check=False)
        proc = subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-D", str(dest / "journal")],
                              capture_output=True, text=True, check=False)
        return proc.stdout


def wait_running(agent: Agent, timeout: float = 300) -> str:
    """Wait until systemd finished starting up; returns is-system-running's answer."""
    _, out = agent.run("systemctl is-system-running --wait", timeout=timeout, check=False)
    return out.strip().splitlines()[-1] if out.strip() else ""
