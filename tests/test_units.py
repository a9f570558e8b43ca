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
RUNNER = UNITS / "kjumpd-sleep"
HOST_UNIT_DIR = Path("/usr/lib/systemd/system")
# Our files and where the packaging installs them.
OURS = {"/usr/bin/kjumpd": None, "/usr/bin/kjumpctl": None, "/usr/lib/kjumpd/kjumpd-sleep-hooks": HOOKS,
        "/usr/lib/kjumpd/kjumpd-sleep": RUNNER}
SLEEP_OPERATIONS = ["hibernate", "hybrid-sleep", "suspend-then-hibernate"]
UNIT_NAMES = ["kjumpd.service", "kjumpd-prepare.service", *(f"systemd-{op}.service" for op in SLEEP_OPERATIONS),
              "systemd-logind.service"]
DROPIN_DIRS = [*(f"systemd-{op}.service.d" for op in SLEEP_OPERATIONS), "systemd-logind.service.d"]

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


@pytest.mark.parametrize("operation", SLEEP_OPERATIONS)
def test_sleep_dropins_hand_the_operation_to_the_runner(operation: str) -> None:
    text = (UNITS / f"systemd-{operation}.service.d" / "50-kjumpd.conf").read_text()
    exec_start = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=", f"ExecStart=/usr/lib/kjumpd/kjumpd-sleep {operation}"]
    # kjumpd not running must not make the sleep service fail: it falls back to systemd-sleep
    assert "Wants=kjumpd.service" in text.splitlines() and "Requires=" not in text


def enabled_links(root: Path, tmp_path: Path) -> set[str]:
    """The .wants links ``systemctl enable`` makes for kjumpd-prepare.service (offline, in a copy of ``root``)."""
    copy = tmp_path / "enable-root"
    shutil.copytree(root, copy, symlinks=True)
    result = subprocess.run(["systemctl", f"--root={copy}", "enable", "kjumpd-prepare.service"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {os.path.basename(d) for d, _dirs, files in os.walk(copy / "etc/systemd/system")
            if "kjumpd-prepare.service" in files}


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_only_hibernating_targets_wait_for_prepare_and_only_for_a_while(root: Path, tmp_path: Path) -> None:
    """Issue 10.3: a hung kjumpd must not block a plain suspend or lid close."""
    assert enabled_links(root, tmp_path) == {"hibernate.target.wants", "hybrid-sleep.target.wants",
                                             "suspend-then-hibernate.target.wants"}
    lines = (UNITS / "kjumpd-prepare.service").read_text().splitlines()
    before = next(line for line in lines if line.startswith("Before=")).split("=", 1)[1].split()
    assert sorted(before) == sorted(f"systemd-{op}.service" for op in SLEEP_OPERATIONS)
    timeout = next(line for line in lines if line.startswith("TimeoutStartSec=")).split("=", 1)[1]
    assert timeout not in ("infinity", "0"), "staging must not hold the sleep for ever"
    assert "ConditionPathExists=/run/kjumpd/ready" in lines


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


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    result = subprocess.run(["shellcheck", "--severity=info", str(RUNNER), str(HOOKS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout


def test_a_hung_hook_is_killed(tmp_path: Path) -> None:
    """Issue 10.3: like systemd-sleep, the runner waits for a hook only for a while."""
    log = tmp_path / "log"
    log.mkdir()
    make_hook(tmp_path / "hooks", "10-hangs", "exec sleep 600\n")
    make_hook(tmp_path / "hooks", "20-quick", f"touch {log}/quick\n")
    env = dict(os.environ, KJUMPD_SLEEP_HOOK_DIRS=str(tmp_path / "hooks"), KJUMPD_SLEEP_HOOK_TIMEOUT="1")
    result = subprocess.run([str(HOOKS), "pre", "hibernate"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0
    assert "hook 10-hangs (pre hibernate) failed" in result.stderr
    assert (log / "quick").exists()


# --- the sleep services' command ---------------------------------------------------------------------


@pytest.fixture
def runner_env(tmp_path: Path) -> dict[str, str]:
    """Stand-ins for systemd-sleep, kjumpctl and the hook runner that log their arguments to ``calls``."""
    calls = tmp_path / "calls"
    env = dict(os.environ, KJUMPD_READY_FILE=str(tmp_path / "ready"))
    for variable, name, status in (("KJUMPD_SYSTEMD_SLEEP", "systemd-sleep", 0), ("KJUMPD_KJUMPCTL", "kjumpctl", 7),
                                   ("KJUMPD_SLEEP_HOOKS", "hooks", 0)):
        path = tmp_path / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit {status}\n')
        path.chmod(0o755)
        env[variable] = str(path)
    return env


def run_runner(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    result = subprocess.run([str(RUNNER), *args], capture_output=True, text=True, env=env, timeout=60)
    calls = Path(env["KJUMPD_READY_FILE"]).parent / "calls"
    return result, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("operation", SLEEP_OPERATIONS)
def test_runner_hands_the_operation_to_kjumpd_when_it_is_in_charge(runner_env: dict[str, str],
                                                                   operation: str) -> None:
    Path(runner_env["KJUMPD_READY_FILE"]).write_text("kjumpd is ready\n")
    result, calls = run_runner(runner_env, operation)
    assert calls == [f"hooks pre {operation}",
                     f"kjumpctl hibernate --wait --no-ask-password --sleep-operation={operation}",
                     f"hooks post {operation}"]
    assert result.returncode == 7, "kjumpctl's failure is the service's failure"


@pytest.mark.parametrize("operation", SLEEP_OPERATIONS)
def test_runner_falls_back_to_systemd_sleep(runner_env: dict[str, str], operation: str) -> None:
    """Issue 10.3: kjumpd not in charge (stopped, or not able to hibernate): systemd's own behaviour."""
    result, calls = run_runner(runner_env, operation)
    assert calls == [f"systemd-sleep {operation}"]
    assert result.returncode == 0 and "kjumpd is not in charge" in result.stderr


@pytest.mark.parametrize("args", [[], ["suspend"], ["hibernate", "now"]])
def test_runner_usage(runner_env: dict[str, str], args: list[str]) -> None:
    result, calls = run_runner(runner_env, *args)
    assert result.returncode == 2 and "usage" in result.stderr and calls == []


@pytest.mark.parametrize("args", [[], ["pre"], ["during", "hibernate"], ["pre", "hibernate", "extra"]])
def test_hook_runner_usage(tmp_path: Path, args: list[str]) -> None:
    result = run_hooks([tmp_path], *args)
    assert result.returncode == 2 and "usage" in result.stderr


def test_writable_paths_made_at_start_may_be_missing_when_the_namespace_is_set_up() -> None:
    """systemd sets up the mount namespace of every command, ExecStartPre="+…" included
    (systemd 252), before that command runs: a ReadWritePaths= directory that the
    unit's own ExecStartPre makes (/run/systemd/sleep.conf.d after every boot) must be
    "-"-prefixed, or the service fails with 226/NAMESPACE before it ever starts (seen
    in the system test, tests/system)."""
    text = (UNITS / "kjumpd.service").read_text()
    made = set(re.findall(r"^ExecStartPre=\S*mkdir -p (\S+)$", text, re.M))
    for line in re.findall(r"^ReadWritePaths=(.*)$", text, re.M):
        for path in line.split():
            if path.lstrip("-") in made:
                assert path.startswith("-"), f"ReadWritePaths={path} is made by ExecStartPre: write -{path}"
