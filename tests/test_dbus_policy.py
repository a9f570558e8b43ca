"""The shipped bus policy on a dbus-daemon configured like Debian's system bus (not the allow-all test bus).

The bus takes its default policy from this machine's /usr/share/dbus-1/system.conf
(deny own, deny method calls) and includes dbus-policy/org.kjump.Hibernate1.conf
and the installed polkit/logind policies so their mocks can run there. Unprivileged
clients run as nobody through setpriv.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbus_testing import FakeHibernator, InProcessDaemon, Mock, spawn_mock, start_dbus_daemon

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "dbus-policy" / "org.kjump.Hibernate1.conf"
ACTIONS = ROOT / "dbus-policy" / "org.kjump.policy"
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
SYSTEM_D = Path("/usr/share/dbus-1/system.d")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NAME, PATH, IFACE = "org.kjump.Hibernate1", "/org/kjump/Hibernate1", "org.kjump.Hibernate1"


def system_default_policy() -> str:
    """The <policy context="default"> block of this machine's system bus configuration."""
    match = re.search(r'<policy context="default">.*?</policy>', SYSTEM_CONF.read_text(), re.S)
    assert match, f"no default policy in {SYSTEM_CONF}"
    return match.group(0)


@pytest.fixture
def strict_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not SYSTEM_CONF.exists() or shutil.which("setpriv") is None:
        pytest.skip("needs /usr/share/dbus-1/system.conf and setpriv")
    # A directory nobody can reach: the socket must be usable by uid 65534.
    directory = Path(tempfile.mkdtemp(prefix="kjbus", dir="/tmp"))
    directory.chmod(0o755)
    includes = "\n".join(f"  <include>{p}</include>" for p in
                         (POLICY, SYSTEM_D / "org.freedesktop.PolicyKit1.conf", SYSTEM_D / "org.freedesktop.login1.conf")
                         if p.exists())
    # The installed polkit policy lets only the polkitd user own its name; the mock runs as root.
    mock_owner = '<policy user="root"><allow own="org.freedesktop.PolicyKit1"/></policy>'
    bus = start_dbus_daemon(directory, "\n".join((system_default_policy(), includes, mock_owner)))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    yield bus.address
    bus.stop()
    shutil.rmtree(directory)


@pytest.fixture
def strict_service(strict_bus: str, fake_hibernator: FakeHibernator) -> Iterator[tuple[InProcessDaemon, Mock]]:
    from kjumpd.daemon.config import Config

    polkit = spawn_mock(strict_bus, "polkitd")
    daemon = InProcessDaemon(strict_bus, fake_hibernator, Config())
    yield daemon, polkit
    daemon.stop()
    polkit.process.terminate()
    polkit.process.wait(10)


def as_nobody(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, "busctl", f"--address={address}", *args], capture_output=True, text=True, timeout=30)


def test_policy_and_actions_are_well_formed_and_match_the_code() -> None:
    from kjumpd import api

    policy = ET.parse(POLICY).getroot()
    owners = [(p.get("user"), a.get("own")) for p in policy.iter("policy") for a in p.iter("allow") if a.get("own")]
    assert owners == [("root", api.BUS_NAME)]
    actions = {a.get("id") for a in ET.parse(ACTIONS).getroot().iter("action")}
    assert actions == {api.ACTION_HIBERNATE, api.ACTION_MANAGE}


def test_nobody_cannot_own_the_name(strict_bus: str) -> None:
    result = subprocess.run([*NOBODY, "busctl", f"--address={strict_bus}", "call", "org.freedesktop.DBus",
                             "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName", "su", NAME, "4"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "Access denied" in result.stderr


def test_root_owns_the_name_and_nobody_can_call(strict_service: tuple[InProcessDaemon, Mock], strict_bus: str,
                                                fake_hibernator: FakeHibernator) -> None:
    _daemon, polkit = strict_service
    state = as_nobody(strict_bus, "get-property", NAME, PATH, IFACE, "State")
    assert state.returncode == 0 and state.stdout.strip() == 's "idle"', state.stderr
    assert as_nobody(strict_bus, "introspect", NAME, PATH).returncode == 0
    can = as_nobody(strict_bus, "call", NAME, PATH, IFACE, "CanHibernate")
    assert can.returncode == 0 and can.stdout.strip() == 's "no"', can.stderr
    # The bus lets the call through; polkit says no (gdbus shows kjumpd's message, busctl only "Access denied").
    denied = subprocess.run([*NOBODY, "gdbus", "call", "--address", strict_bus, "--dest", NAME, "--object-path", PATH,
                             "--method", f"{IFACE}.Hibernate", "shutdown"], capture_output=True, text=True, timeout=30)
    assert denied.returncode != 0 and "not authorized for org.kjump.hibernate" in denied.stderr, denied.stderr
    assert fake_hibernator.calls == []
    polkit.proxy.SetAllowed(["org.kjump.hibernate"])
    allowed = as_nobody(strict_bus, "call", NAME, PATH, IFACE, "Hibernate", "s", "shutdown")
    assert allowed.returncode == 0, allowed.stderr


def test_nobody_cannot_call_other_interfaces_or_set_properties(strict_service: tuple[InProcessDaemon, Mock],
                                                               strict_bus: str) -> None:
    result = as_nobody(strict_bus, "set-property", NAME, PATH, IFACE, "State", "s", "idle")
    assert result.returncode != 0 and "Access denied" in result.stderr
    other = as_nobody(strict_bus, "call", NAME, PATH, "org.kjump.Other", "Hibernate", "s", "shutdown")
    assert other.returncode != 0 and "Access denied" in other.stderr


def _hold_inhibitor(address: str, what: str, who: str, why: str, mode: str) -> int:
    """Take a logind inhibitor on the bus at ``address`` and return its fd (closing it releases it)."""
    from gi.repository import Gio, GLib

    con = Gio.DBusConnection.new_for_address_sync(
        address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
        None, None)
    reply, fds = con.call_with_unix_fd_list_sync(
        "org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "Inhibit",
        GLib.Variant("(ssss)", (what, who, why, mode)), GLib.VariantType.new("(h)"), Gio.DBusCallFlags.NONE,
        10000, None, None)
    fd = fds.steal_fds()[reply.unpack()[0]]
    con.close_sync(None)
    return fd


def test_direct_unprivileged_call_respects_block_inhibitors(strict_service: tuple[InProcessDaemon, Mock],
                                                             strict_bus: str, fake_hibernator: FakeHibernator) -> None:
    """Issue 10.3: logind's block inhibitors hold for a user who calls kjumpd directly (root, logind's own
    sleep service, is not asked: logind has honoured them already)."""
    import os

    from dbus_testing import wait_for

    _daemon, polkit = strict_service
    polkit.proxy.SetAllowed(["org.kjump.hibernate"])
    logind = spawn_mock(strict_bus, "logind")
    try:
        fd = _hold_inhibitor(strict_bus, "sleep:shutdown", "editor", "saving a file", "block")
        refused = subprocess.run([*NOBODY, "gdbus", "call", "--address", strict_bus, "--dest", NAME, "--object-path",
                                  PATH, "--method", f"{IFACE}.Hibernate", "shutdown"],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0
        assert "org.kjump.Hibernate1.Error.Inhibited" in refused.stderr and "editor" in refused.stderr, refused.stderr
        assert fake_hibernator.calls == []
        os.close(fd)
        wait_for(lambda: all(i[1] != "editor" for i in logind.proxy.ListInhibitors()), "the inhibitor to be released")
        delay_fd = _hold_inhibitor(strict_bus, "sleep", "player", "fading out", "delay")   # delay does not block
        allowed = as_nobody(strict_bus, "call", NAME, PATH, IFACE, "Hibernate", "s", "shutdown")
        os.close(delay_fd)
        assert allowed.returncode == 0, allowed.stderr
        wait_for(lambda: fake_hibernator.calls, "the hibernation to start")
        assert fake_hibernator.calls == [("hibernate", "shutdown", False)]
    finally:
        logind.process.terminate()
        logind.process.wait(10)


def test_root_is_not_held_by_block_inhibitors(strict_service: tuple[InProcessDaemon, Mock], strict_bus: str,
                                              fake_hibernator: FakeHibernator) -> None:
    import os

    _daemon, polkit = strict_service
    polkit.proxy.SetAllowed(["org.kjump.hibernate"])
    logind = spawn_mock(strict_bus, "logind")
    try:
        fd = _hold_inhibitor(strict_bus, "sleep", "editor", "saving a file", "block")
        as_root = subprocess.run(["busctl", f"--address={strict_bus}", "call", NAME, PATH, IFACE, "Hibernate", "s",
                                  "shutdown"], capture_output=True, text=True, timeout=30)
        os.close(fd)
        assert as_root.returncode == 0, as_root.stderr
    finally:
        logind.process.terminate()
        logind.process.wait(10)
