"""The shipped systemd units: ``systemd-analyze verify``, what the drop-ins run, the sleep-hook runner.

systemd-analyze runs without systemd as PID 1 with ``--root``: the root holds a
copy of this machine's unit directory with ours installed on top, and every
command the units name, copied from this machine (or ours, installed as they
would be), so a missing binary is an error as it would be on a real system.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "units"
HOOKS = UNITS / "kjumpd-sleep-hooks"
HOST_UNIT_DIR = Path("/usr/lib/systemd/system")
# Our files and where the packaging installs them.
OURS = {"/usr/bin/kjumpd": None, "/usr/bin/kjumpctl": None, "/usr/lib/kjumpd/kjumpd-sleep-hooks": HOOKS}
UNIT_NAMES = ["kjumpd.service", "kjumpd-prepare.service", "systemd-hibernate.service",
              "systemd-hybrid-sleep.service", "systemd-logind.service"]
DROPIN_DIRS = ["systemd-hibernate.service.d", "systemd-hybrid-sleep.service.d", "systemd-logind.service.d"]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def unit_files() -> list[Path]:
    return sorted(p for p in UNITS.rglob("*") if p.suffix in (".service", ".conf"))


def commands(path: Path) -> set[str]:
    """Absolute paths of the programs a unit file runs."""
    found = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^Exec\w+=[-@:+!]*(/\S+)", line)
        if match:
            found.add(match.group(1))
    return found


def install(root: Path, path: str, source: Path | None) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source is None:
        dest.write_text("#!/bin/sh\n")
        dest.chmod(0o755)
    else:
        shutil.copy2(source, dest)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file system root with this machine's units, ours on top, and every command they run."""
    root = tmp_path_factory.mktemp("root")
    unit_dir = root / "usr/lib/systemd/system"
    shutil.copytree(HOST_UNIT_DIR, unit_dir, symlinks=True)
    for path in UNITS.glob("*.service"):
        shutil.copy2(path, unit_dir)
    for name in DROPIN_DIRS:
        shutil.copytree(UNITS / name, unit_dir / name, dirs_exist_ok=True)
    needed = set().union(*(commands(p) for p in unit_files()),
                         *(commands(unit_dir / u) for u in UNIT_NAMES if (unit_dir / u).is_file()))
    for command in needed:
        if command in OURS:
            install(root, command, OURS[command])
        elif os.path.exists(command):
            install(root, command, Path(command))
    return root


@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_systemd_analyze_verify(root: Path, unit: str) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no "Unknown key … ignoring" either


def test_verify_catches_a_broken_dropin(root: Path, tmp_path: Path) -> None:
    """The check above is only worth something if drop-ins are really read."""
    broken = tmp_path / "root"
    shutil.copytree(root, broken, symlinks=True)
    (broken / "usr/lib/systemd/system/systemd-hibernate.service.d/60-broken.conf").write_text(
        "[Service]\nExecStart=\nExecStartt=/usr/bin/kjumpctl\n")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={broken}", "systemd-hibernate.service"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 or "ExecStartt" in result.stderr


def test_every_command_exists_on_a_real_system(root: Path) -> None:
    for path in unit_files():
        for command in commands(path):
            assert command in OURS or os.path.exists(command), f"{path.name} runs {command}, which does not exist"


@pytest.mark.parametrize("operation", ["hibernate", "hybrid-sleep"])
def test_sleep_dropins_replace_systemd_sleep_with_kjumpctl(operation: str) -> None:
    text = (UNITS / f"systemd-{operation}.service.d" / "50-kjumpd.conf").read_text()
    exec_start = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start[0] == "ExecStart="  # systemd-sleep's command is removed first
    assert exec_start[1:] == [f"ExecStart=/usr/bin/kjumpctl hibernate --wait --no-ask-password "
                              f"--sleep-operation={operation}"]
    assert f"ExecStartPre=/usr/lib/kjumpd/kjumpd-sleep-hooks pre {operation}" in text
    assert f"ExecStopPost=/usr/lib/kjumpd/kjumpd-sleep-hooks post {operation}" in text
    assert "Requires=kjumpd.service" in text


def test_prepare_unit_is_pulled_in_by_sleep_target() -> None:
    text = (UNITS / "kjumpd-prepare.service").read_text()
    for line in ("Before=sleep.target", "WantedBy=sleep.target", "Type=oneshot", "TimeoutStartSec=infinity",
                 "ExecStart=/usr/bin/kjumpctl prepare --no-ask-password"):
        assert line in text.splitlines()


def test_logind_dropin_bypasses_the_swap_check() -> None:
    text = (UNITS / "systemd-logind.service.d" / "50-kjumpd.conf").read_text()
    assert "Environment=SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK=1" in text.splitlines()


def test_security_exposure_matches_the_documentation(root: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager",
                             "kjumpd.service"], capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for kjumpd.service: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    documented = (ROOT / "docs" / "units.md").read_text()
    assert f"exposure level {match.group(1)} ({match.group(2)})" in documented, \
        f"docs/units.md must record the current exposure {match.group(1)} {match.group(2)}"
    # What kexec jump needs must survive the sandbox.
    text = (UNITS / "kjumpd.service").read_text()
    assert "CAP_SYS_BOOT" in re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1)
    # kexec-tools reads _stext from /proc/kallsyms (KASLR); see test_machine_real
    assert "CAP_SYSLOG" in re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert not re.search(r"^ProtectKernelLogs=(yes|true)", text, re.M), "it drops CAP_SYSLOG again"
    assert "@reboot" in re.search(r"^SystemCallFilter=(.*)$", text, re.M).group(1)
    assert not re.search(r"^ProtectKernelTunables=(yes|true)", text, re.M)


# --- the hook runner ---------------------------------------------------------------------------------


def make_hook(directory: Path, name: str, body: str, executable: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755 if executable else 0o644)
    return path


def run_hooks(dirs: list[Path], *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KJUMPD_SLEEP_HOOK_DIRS=" ".join(str(d) for d in dirs))
    env.pop("SYSTEMD_SLEEP_ACTION", None)
    return subprocess.run([str(HOOKS), *args], capture_output=True, text=True, env=env, timeout=60)


def test_hooks_get_phase_operation_and_action(tmp_path: Path) -> None:
    etc, lib, log = tmp_path / "etc", tmp_path / "lib", tmp_path / "log"
    log.mkdir()
    record = f'echo "$1 $2 $SYSTEMD_SLEEP_ACTION" > {log}/$(basename "$0")\n'
    make_hook(lib, "10-vendor", record)
    make_hook(lib, "20-overridden", "echo vendor > " + str(log / "20-overridden") + "\n")
    make_hook(etc, "20-overridden", record)
    make_hook(lib, "30-masked", record)
    (etc / "30-masked").symlink_to("/dev/null")
    make_hook(lib, "40-not-executable", record, executable=False)
    make_hook(lib, "50-failing", "exit 3\n")
    result = run_hooks([etc, lib], "pre", "hibernate")
    assert result.returncode == 0
    assert "hook 50-failing (pre hibernate) failed" in result.stderr
    assert sorted(p.name for p in log.iterdir()) == ["10-vendor", "20-overridden"]
    assert (log / "10-vendor").read_text() == "pre hibernate hibernate\n"
    assert (log / "20-overridden").read_text() == "pre hibernate hibernate\n"


def test_hooks_run_in_parallel(tmp_path: Path) -> None:
    """Each hook waits (bounded) for the other to have started: only parallel runs see both."""
    log = tmp_path / "log"
    log.mkdir()
    for me, other in (("a", "b"), ("b", "a")):
        make_hook(tmp_path / "hooks", me, f"""touch {log}/{me}.started
i=0; while [ ! -e {log}/{other}.started ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -e {log}/{other}.started ] && touch {log}/{me}.saw-{other}
""")
    assert run_hooks([tmp_path / "hooks"], "post", "hybrid-sleep").returncode == 0
    assert (log / "a.saw-b").exists() and (log / "b.saw-a").exists()


@pytest.mark.parametrize("args", [[], ["pre"], ["during", "hibernate"], ["pre", "hibernate", "extra"]])
def test_hook_runner_usage(tmp_path: Path, args: list[str]) -> None:
    result = run_hooks([tmp_path], *args)
    assert result.returncode == 2 and "usage" in result.stderr
