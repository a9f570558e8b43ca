"""``make demo``: one hibernate and resume on the simulated machine, as a user sees it.

The daemon runs on a private bus served by a real ``dbus-daemon`` (with
python-dbusmock standing in for polkit and logind, which a private bus does
not have). A workload process keeps a counter and a token in the simulated
machine's RAM. ``kjumpctl hibernate --wait`` (what ``systemctl hibernate``
runs through the drop-in) jumps into B, which saves RAM to the image and
powers off; the machine is powered on again, C's resume hook finds the image,
R writes RAM back and jumps into A; the workload carries on from the counter
value it had, and ``kjumpctl hibernate --wait`` returns 0.

When kjumpd refuses to hibernate (``can-hibernate`` is not ``yes``), or the
hibernation fails before the machine is off (``kjumpctl hibernate --wait``
returns first), the demo stops at once with kjumpd's reason on stderr and
exit status 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable

from ..machine.simulated import SimulatedMachine

PYTHON = sys.executable
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""

# The workload: its whole state (token, counter) lives in the machine's RAM,
# so it only carries on if that RAM is written back exactly.
WORKLOAD = textwrap.dedent("""
    import mmap, os, secrets, struct, sys, time
    ram, address, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fd = os.open(ram, os.O_RDWR)
    area = mmap.mmap(fd, 4096, offset=address)
    area[0:24] = b"TOKEN-" + secrets.token_hex(9).encode()
    struct.pack_into("<Q", area, 24, 0)
    while True:
        count = struct.unpack_from("<Q", area, 24)[0] + 1
        struct.pack_into("<Q", area, 24, count)
        with open(log, "a") as out:
            out.write(f"{area[0:24].decode()} counter={count}\\n")
        time.sleep(0.25)
""")


def say(text: str) -> None:
    """A step heading."""
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def show(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a user command, echo it like a shell would, print its output."""
    print(f"{DIM}# {' '.join(command)}{RESET}", flush=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for stream in (result.stdout, result.stderr):
        if stream.strip():
            print(textwrap.indent(stream.rstrip(), "  "), flush=True)
    return result


def problems(kjumpctl: list[str], env: dict[str, str]) -> str:
    """kjumpd's reasons for refusing to hibernate: its Problems property, as ``kjumpctl status`` reads it."""
    status = subprocess.run(kjumpctl + ["status", "--json"], env=env, capture_output=True, text=True, check=False)
    try:
        return "; ".join(json.loads(status.stdout)["Problems"]) or "it gave no reason"
    except (ValueError, KeyError):
        return f"kjumpctl status failed: {status.stderr.strip()}"


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    """Poll ``predicate`` until it is true; fail the demo with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def fill_ram(machine: SimulatedMachine, fraction: float = 0.6) -> int:
    """Give A's RAM something like a running system's contents: programs, text, random data.

    Returns the number of bytes filled; the rest stays zero, as free memory
    often is.
    """
    sources = []
    for directory in ("/usr/bin", "/usr/lib/python3.11"):
        for name in sorted(os.listdir(directory))[:400]:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                sources.append(path)
    size = int(machine.hardware["ram_size"])
    address, limit, filled = 16 << 20, int(size * fraction), 0
    with machine.physical_memory(writable=True) as ram:
        for number, path in enumerate(itertools.islice(itertools.cycle(sources), 100000)):
            if address + (1 << 20) > limit:
                break
            with open(path, "rb") as handle:
                data = handle.read(1 << 20)
            if number % 7 == 0:
                data = os.urandom(len(data))        # encrypted or compressed data
            ram.write(address, data)
            filled += len(data)
            address += len(data) + (-len(data) % 4096) + (64 << 10) * (number % 3)
    return filled


def last_line(path: str) -> str:
    """The workload's latest output line."""
    try:
        with open(path, encoding="ascii") as handle:
            lines = handle.read().splitlines()
        return lines[-1] if lines else ""
    except FileNotFoundError:
        return ""


def run(workdir: str) -> int:
    """The demo proper; every process it starts is stopped before it returns."""
    processes: list[subprocess.Popen[bytes]] = []
    machine_dir, confdir = os.path.join(workdir, "machine"), os.path.join(workdir, "etc")
    os.makedirs(confdir)

    def spawn(command: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, **kwargs)  # type: ignore[call-overload]
        processes.append(process)
        return process

    try:
        say("A simulated machine: 256 MiB of RAM in a file, 2 CPUs, a disk image as the image target")
        machine = SimulatedMachine.create(machine_dir, ram_size=256 << 20, cpus=2)
        with open(os.path.join(confdir, "kjumpd.conf"), "w", encoding="ascii") as conf:
            conf.write(machine.kjumpd_config(region_size="64M"))
        print(f"  machine in {machine_dir}, configuration in {confdir}/kjumpd.conf")

        say("A private system bus (dbus-daemon), with dbusmock's polkitd and logind on it")
        socket = os.path.join(workdir, "system_bus_socket")
        bus_conf = os.path.join(workdir, "bus.conf")
        with open(bus_conf, "w", encoding="ascii") as handle:
            handle.write(BUS_CONFIG.format(socket=socket))
        spawn(["dbus-daemon", "--nofork", f"--config-file={bus_conf}"],
              stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "dbus.log"), "ab"))
        wait_for(lambda: os.path.exists(socket), "the bus socket")
        address = f"unix:path={socket}"
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, SYSTEMD_LOG_LEVEL="err")
        for template in ("polkitd", "logind"):
            spawn([PYTHON, "-m", "dbusmock", "--system", "--template", template], env=env,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(
            ["gdbus", "call", "--address", address, "--dest", "org.freedesktop.PolicyKit1", "--object-path",
             "/org/freedesktop/PolicyKit1/Authority", "--method", "org.freedesktop.DBus.Mock.SetAllowed",
             "['org.kjump.hibernate', 'org.kjump.manage']"], capture_output=True).returncode == 0,
            "the polkit mock")
        print(f"  bus at {address}; polkit allows org.kjump.hibernate and org.kjump.manage")

        say("kjumpd starts and stages the hibernate kernel B")
        daemon_log = os.path.join(workdir, "kjumpd.log")
        spawn([PYTHON, "-m", "kjumpd.daemon", "--config", confdir, "--bus-address", address],
              env=env, stdout=open(daemon_log, "ab"), stderr=subprocess.STDOUT)
        kjumpctl = [PYTHON, "-m", "kjumpd.ctl"]
        wait_for(lambda: subprocess.run(kjumpctl + ["status"], env=env, capture_output=True).returncode == 0,
                 "kjumpd on the bus")
        prepared = show(kjumpctl + ["prepare"], env)
        show(kjumpctl + ["status"], env)
        if show(kjumpctl + ["can-hibernate"], env).returncode != 0 or prepared.returncode != 0:
            raise SystemExit(f"demo: kjumpd refuses to hibernate: {problems(kjumpctl, env)}")

        filled = fill_ram(machine)
        print(f"  A's RAM holds {filled >> 20} MiB of programs, text and random data; the rest is free (zero)")

        say("A workload in A keeps a token and a counter in RAM")
        workload_log = os.path.join(workdir, "workload.log")
        address_in_ram, _ = machine.workload_area()
        workload = spawn([PYTHON, "-c", WORKLOAD, os.path.join(machine_dir, "ram"), str(address_in_ram),
                          workload_log])
        machine.register_workload(workload.pid)
        wait_for(lambda: "counter=8" in last_line(workload_log) or
                 int(last_line(workload_log).rsplit("=", 1)[-1] or 0) >= 8, "the workload")
        before = last_line(workload_log)
        print(f"  {before}")

        say("systemctl hibernate → kjumpctl hibernate --wait: A jumps to B, B saves RAM and powers off")
        print(f"{DIM}# kjumpctl hibernate --wait{RESET}", flush=True)
        waiter = spawn(kjumpctl + ["hibernate", "--wait"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
        wait_for(lambda: machine.running == "off" or waiter.poll() is not None, "the machine to power off",
                 timeout=120)
        if machine.running != "off":  # kjumpctl came back: kjumpd refused, or the hibernation failed in A or B
            output, _ = waiter.communicate()
            raise SystemExit(f"demo: kjumpctl hibernate --wait exited {waiter.returncode} before the machine "
                             f"powered off: {output.decode().strip()}")
        frozen_at = last_line(workload_log)
        for event in machine.events():
            if event.get("event") in ("freeze", "kexec-execute", "jump", "power-off", "save-done",
                                      "workload-signal"):
                details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
                print(f"  event: {event['event']} {details}")
        print(textwrap.indent(machine.console_output().rstrip(), "  B console| "))
        show(kjumpctl + ["image", "inspect", machine.target_path], env)
        print(f"  the workload is stopped at: {frozen_at}")

        say("The machine is off. Power on: C's resume hook finds the image, R restores RAM, jumps into A")
        time.sleep(1)
        boot = machine.power_on()
        print(textwrap.indent(boot.output.rstrip(), "  C/R console| "))
        output, _ = waiter.communicate(timeout=120)
        print(textwrap.indent(output.decode().rstrip(), "  "))
        print(f"  kjumpctl hibernate --wait exited with {waiter.returncode}")

        say("A carries on: same token, the counter continues")
        wait_for(lambda: last_line(workload_log) != frozen_at, "the workload to carry on")
        time.sleep(1)
        after = last_line(workload_log)
        print(f"  before the jump: {frozen_at}\n  now:             {after}")
        token_kept = frozen_at.split()[0] == after.split()[0]
        show(kjumpctl + ["status"], env)
        ok = boot.resumed and waiter.returncode == 0 and token_kept
        say("Result: " + ("hibernated and resumed; the workload never noticed" if ok else "FAILED"))
        if not ok:
            with open(daemon_log, encoding="utf-8", errors="replace") as log:
                print(log.read())
        return 0 if ok else 1
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGCONT)
                    process.terminate()
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    process.kill()


def main(argv: list[str] | None = None) -> int:
    """Run the demo in a fresh directory (kept with --keep)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the working directory afterwards")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="kjumpd-demo-")
    try:
        return run(workdir)
    finally:
        if args.keep:
            print(f"\nfiles kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
