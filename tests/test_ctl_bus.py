"""kjumpctl's daemon subcommands as a user runs them: a separate process on the private system bus."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from dbus_testing import FakeHibernator, InProcessDaemon, Mock, connect
from kjumpd.ctl import EXIT_DENIED, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

HIBERNATE, MANAGE = "org.kjump.hibernate", "org.kjump.manage"


def kjumpctl(*args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run kjumpctl in its own process (DBUS_SYSTEM_BUS_ADDRESS is set by the system_bus fixture)."""
    command = [sys.executable, "-c", "import sys; from kjumpd.ctl import main; sys.exit(main())", *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_hibernate_wait_returns_0_after_a_successful_cycle(kjumpd_service: InProcessDaemon, polkitd: Mock,
                                                           fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    fake_hibernator.gate = threading.Event()
    process = kjumpctl("hibernate", "--wait", "--restart-point=reboot", wait=False)
    # It must still be waiting while the cycle runs.
    assert fake_hibernator.started.wait(20)
    assert process.poll() is None
    fake_hibernator.gate.set()
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_OK, err
    assert "saved" in out
    assert fake_hibernator.calls == [("hibernate", "reboot", False)]


def test_hibernate_wait_fails_after_a_failed_cycle(kjumpd_service: InProcessDaemon, polkitd: Mock,
                                                   fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    fake_hibernator.fail = True
    result = kjumpctl("hibernate", "--wait", "--sleep-operation=hybrid-sleep", "--force")
    assert result.returncode == EXIT_FAILED
    assert "image target is full" in result.stderr
    assert fake_hibernator.calls == [("hibernate", kjumpd_service.config.hybrid_sleep_restart_point, True)]


def test_hibernate_wait_fails_when_cancelled(kjumpd_service: InProcessDaemon, polkitd: Mock,
                                             fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE, MANAGE])
    fake_hibernator.gate = threading.Event()
    process = kjumpctl("hibernate", "--wait", wait=False)
    assert fake_hibernator.started.wait(20)
    assert kjumpctl("cancel").returncode == EXIT_OK
    fake_hibernator.gate.set()
    _out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_FAILED
    assert "cancelled" in err


def test_exit_codes_for_denied_unavailable_and_bad_input(kjumpd_service: InProcessDaemon, polkitd: Mock,
                                                         fake_hibernator: FakeHibernator) -> None:
    assert kjumpctl("hibernate", "--no-ask-password").returncode == EXIT_DENIED
    polkitd.proxy.SetAllowed([HIBERNATE])
    bad = kjumpctl("hibernate", "--restart-point=nap")
    assert bad.returncode == EXIT_USAGE and "unknown restart point 'nap'" in bad.stderr
    fake_hibernator.problem_list = ["image target missing"]
    not_ready = kjumpctl("hibernate")
    assert not_ready.returncode == EXIT_UNAVAILABLE and "image target missing" in not_ready.stderr
    assert kjumpctl("cancel").returncode == EXIT_DENIED
    assert fake_hibernator.calls == []


def test_can_hibernate(kjumpd_service: InProcessDaemon, polkitd: Mock, fake_hibernator: FakeHibernator) -> None:
    result = kjumpctl("can-hibernate")
    assert (result.returncode, result.stdout.strip()) == (EXIT_DENIED, "no")
    polkitd.proxy.SetAllowed([HIBERNATE])
    result = kjumpctl("can-hibernate")
    assert (result.returncode, result.stdout.strip()) == (EXIT_OK, "yes")


def test_status_human_and_json(kjumpd_service: InProcessDaemon, fake_hibernator: FakeHibernator) -> None:
    result = kjumpctl("status", "--json")
    assert result.returncode == EXIT_OK, result.stderr
    status = json.loads(result.stdout)
    assert status["State"] == "idle"
    assert status["Region"] == list(fake_hibernator.region())
    assert status["ImageTarget"] == kjumpd_service.config.image_target
    human = kjumpctl("status")
    assert human.returncode == EXIT_OK
    assert "State: idle" in human.stdout
    assert f"Image target: {kjumpd_service.config.image_target}" in human.stdout
    assert "256.0M at 0x30000000" in human.stdout


def test_prepare_waits_until_staged(kjumpd_service: InProcessDaemon, polkitd: Mock, fake_hibernator: FakeHibernator,
                                    system_bus: str) -> None:
    polkitd.proxy.SetAllowed([MANAGE])
    fake_hibernator.gate = threading.Event()
    process = kjumpctl("prepare", wait=False)
    assert fake_hibernator.started.wait(20)
    # A second Prepare joins the running one instead of failing (kjumpd-prepare.service after PrepareForSleep).
    subprocess.run(["busctl", f"--address={system_bus}", "call", "org.kjump.Hibernate1", "/org/kjump/Hibernate1",
                    "org.kjump.Hibernate1", "Prepare"], check=True, timeout=30)
    assert process.poll() is None
    fake_hibernator.gate.set()
    _out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_OK, err
    assert fake_hibernator.calls == [("stage",)]
    assert connect(system_bus).get("org.kjump.Hibernate1", "/org/kjump/Hibernate1").Staged is True


def test_daemon_not_running(system_bus: str) -> None:
    result = kjumpctl("status")
    assert result.returncode == EXIT_UNAVAILABLE
    assert "kjumpd is not running" in result.stderr


def test_wait_ends_when_the_daemon_leaves(kjumpd_service: InProcessDaemon, polkitd: Mock,
                                          fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    fake_hibernator.gate = threading.Event()
    process = kjumpctl("hibernate", "--wait", wait=False)
    assert fake_hibernator.started.wait(20)
    kjumpd_service.stop()
    _out, err = process.communicate(timeout=60)
    fake_hibernator.gate.set()
    assert process.returncode == EXIT_FAILED
    assert "lost kjumpd before the operation ended" in err
