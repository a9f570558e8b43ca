"""org.kjump.Hibernate1 on a private system bus (real dbus-daemon, dbusmock polkitd and logind).

The daemon runs in-process with a controllable hibernator (conftest.FakeHibernator)
so that tests can hold a job open; clients are pydbus, busctl and gdbus.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from gi.repository import GLib

from dbus_testing import FakeHibernator, InProcessDaemon, Mock, connect, wait_for
from kjumpd.format import RESTART_POINTS

NAME, PATH, IFACE = "org.kjump.Hibernate1", "/org/kjump/Hibernate1", "org.kjump.Hibernate1"
HIBERNATE, MANAGE = "org.kjump.hibernate", "org.kjump.manage"


def busctl(address: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["busctl", f"--address={address}", *args], capture_output=True, text=True, check=check, timeout=30)


def busctl_call(address: str, method: str, *args: str) -> subprocess.CompletedProcess:
    return busctl(address, "call", NAME, PATH, IFACE, method, *args)


def gdbus_call(address: str, method: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["gdbus", "call", "--address", address, "--dest", NAME, "--object-path", PATH,
                           "--method", f"{IFACE}.{method}", *args], capture_output=True, text=True, timeout=30)


def proxy(address: str):
    return connect(address).get(NAME, PATH)


def dbus_error(excinfo: pytest.ExceptionInfo) -> str:
    from gi.repository import Gio

    return Gio.DBusError.get_remote_error(excinfo.value)


def last_result_ended(obj) -> dict:
    return obj.State == "idle" and obj.LastResult


# --- introspection and properties ------------------------------------------------------------


@pytest.mark.parametrize("tool", ["busctl", "gdbus"])
def test_introspection_lists_the_whole_api(kjumpd_service: InProcessDaemon, system_bus: str, tool: str) -> None:
    if tool == "busctl":
        out = busctl(system_bus, "introspect", NAME, PATH, IFACE, check=True).stdout
    else:
        out = subprocess.run(["gdbus", "introspect", "--address", system_bus, "--dest", NAME, "--object-path", PATH],
                             capture_output=True, text=True, check=True).stdout
    for member in ("Hibernate", "HibernateWithOptions", "CanHibernate", "Prepare", "Cancel", "Resumed", "DevicesChanged",
                   "State", "Staged", "DefaultRestartPoint", "SupportedRestartPoints", "ImageTarget", "ImageCapacity",
                   "EstimatedImageSize", "Region", "Problems", "LastResult", "Version"):
        assert member in out, f"{member} missing from {tool} introspection"


def test_properties_reflect_the_hibernator_and_configuration(kjumpd_service: InProcessDaemon, system_bus: str,
                                                            fake_hibernator: FakeHibernator) -> None:
    obj = proxy(system_bus)
    assert obj.State == "idle"
    assert obj.Staged is False
    assert obj.DefaultRestartPoint == kjumpd_service.config.hibernate_restart_point
    assert obj.SupportedRestartPoints == list(RESTART_POINTS)
    assert obj.ImageTarget == kjumpd_service.config.image_target
    assert obj.ImageCapacity == fake_hibernator.image_capacity()
    assert obj.EstimatedImageSize == fake_hibernator.estimated_image_size()
    assert obj.Region == fake_hibernator.region()
    assert obj.Problems == []
    assert obj.LastResult == {}
    out = busctl(system_bus, "get-property", NAME, PATH, IFACE, "Region", check=True).stdout.split()
    assert out == ["(tt)", str(fake_hibernator.region()[0]), str(fake_hibernator.region()[1])]


# --- polkit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,args", [("Hibernate", ("shutdown",)), ("Prepare", ()), ("Cancel", ())])
def test_polkit_denial_is_access_denied_and_nothing_happens(kjumpd_service: InProcessDaemon, system_bus: str,
                                                            fake_hibernator: FakeHibernator, method: str, args: tuple) -> None:
    obj = proxy(system_bus)
    with pytest.raises(GLib.Error) as excinfo:
        getattr(obj, method)(*args)
    assert dbus_error(excinfo) == "org.freedesktop.DBus.Error.AccessDenied"
    assert fake_hibernator.calls == []
    assert obj.State == "idle"


def test_manage_permission_does_not_allow_hibernation(kjumpd_service: InProcessDaemon, system_bus: str,
                                                      polkitd: Mock, fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([MANAGE])
    result = busctl_call(system_bus, "Hibernate", "s", "shutdown")
    assert result.returncode != 0 and "Access denied" in result.stderr
    assert fake_hibernator.calls == []


def test_can_hibernate_answers_like_logind(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                           fake_hibernator: FakeHibernator) -> None:
    obj = proxy(system_bus)
    assert obj.CanHibernate() == "no"
    polkitd.proxy.SetAllowed([HIBERNATE])
    assert obj.CanHibernate() == "yes"
    fake_hibernator.problem_list = ["image target /var/lib/kjump/image is missing"]
    kjumpd_service.call(kjumpd_service.manager.refresh)
    assert obj.CanHibernate() == "na"
    assert obj.Problems == fake_hibernator.problem_list


# --- hibernation ----------------------------------------------------------------------------------


def test_hibernate_runs_and_reports_through_properties_and_resumed(kjumpd_service: InProcessDaemon, system_bus: str,
                                                                   polkitd: Mock, fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    bus = connect(system_bus)
    obj = bus.get(NAME, PATH)
    resumed: list = []
    changes: list = []
    obj.Resumed.connect(lambda *args: resumed.append(args))
    obj.PropertiesChanged.connect(lambda iface, changed, invalid: changes.append(changed))
    obj.Hibernate("reboot")
    wait_for(lambda: resumed, "the Resumed signal")
    point, details = resumed[0]
    assert point == "reboot"
    assert details["success"] is True and details["result"] == "saved" and details["image-bytes"] == 123
    assert details["durations"] == {"save": 1.5}
    assert fake_hibernator.calls == [("hibernate", "reboot", False)]
    wait_for(lambda: obj.State == "idle", "the end of the hibernation")
    assert obj.LastResult["restart-point"] == "reboot"
    states = [c["State"] for c in changes if "State" in c]
    assert states[0] == "hibernating" and states[-1] == "idle"
    assert any(c.get("Phase") == "save" for c in changes)


def test_empty_restart_point_means_the_configured_default(kjumpd_service: InProcessDaemon, system_bus: str,
                                                          polkitd: Mock, fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    busctl_call(system_bus, "Hibernate", "s", "").check_returncode()
    obj = proxy(system_bus)
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert fake_hibernator.calls == [("hibernate", kjumpd_service.config.hibernate_restart_point, False)]


def test_hibernate_with_options_through_gdbus(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                              fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    result = gdbus_call(system_bus, "HibernateWithOptions", "", "{'force': <true>, 'sleep-operation': <'hybrid-sleep'>}")
    assert result.returncode == 0, result.stderr
    obj = proxy(system_bus)
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert fake_hibernator.calls == [("hibernate", kjumpd_service.config.hybrid_sleep_restart_point, True)]


def test_not_ready_when_the_hibernator_has_problems(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                                    fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    fake_hibernator.problem_list = ["a writable file system is mounted from removable disk sdb"]
    result = busctl_call(system_bus, "Hibernate", "s", "shutdown")
    assert result.returncode != 0
    assert "removable disk sdb" in result.stderr
    gd = gdbus_call(system_bus, "Hibernate", "shutdown")
    assert "org.kjump.Hibernate1.Error.NotReady" in gd.stderr
    assert fake_hibernator.calls == []


@pytest.mark.parametrize("method,args,error", [
    ("Hibernate", ["hyper-sleep"], "org.kjump.Hibernate1.Error.InvalidRestartPoint"),
    ("HibernateWithOptions", ["shutdown", "{'force': <1>}"], "org.kjump.Hibernate1.Error.InvalidOption"),
    ("HibernateWithOptions", ["shutdown", "{'colour': <'red'>}"], "org.kjump.Hibernate1.Error.InvalidOption"),
    ("HibernateWithOptions", ["", "{'sleep-operation': <'nap'>}"], "org.kjump.Hibernate1.Error.InvalidOption"),
])
def test_invalid_arguments_get_documented_errors(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                                 fake_hibernator: FakeHibernator, method: str, args: list,
                                                 error: str) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE, MANAGE])
    result = gdbus_call(system_bus, method, *args)
    assert result.returncode != 0 and error in result.stderr
    assert fake_hibernator.calls == []
    assert proxy(system_bus).State == "idle"


@pytest.mark.parametrize("args", [("Hibernate", "i", "3"), ("Hibernate",), ("Prepare", "s", "now"), ("NoSuchMethod",)])
def test_malformed_calls_get_errors_and_the_daemon_keeps_serving(kjumpd_service: InProcessDaemon, system_bus: str,
                                                                 polkitd: Mock, fake_hibernator: FakeHibernator,
                                                                 args: tuple) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE, MANAGE])
    result = busctl_call(system_bus, *args)  # busctl does not check arguments against introspection
    assert result.returncode != 0 and result.stderr.startswith("Call failed:")
    assert fake_hibernator.calls == []
    busctl_call(system_bus, "Hibernate", "s", "resume").check_returncode()
    obj = proxy(system_bus)
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert fake_hibernator.calls == [("hibernate", "resume", False)]


def test_concurrent_hibernate_calls_one_runs_the_others_are_busy(kjumpd_service: InProcessDaemon, system_bus: str,
                                                                  polkitd: Mock, fake_hibernator: FakeHibernator) -> None:
    import threading

    polkitd.proxy.SetAllowed([HIBERNATE, MANAGE])
    fake_hibernator.gate = threading.Event()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: gdbus_call(system_bus, "Hibernate", "shutdown"), range(6)))
    ok = [r for r in results if r.returncode == 0]
    busy = [r for r in results if "org.kjump.Hibernate1.Error.Busy" in r.stderr]
    assert len(ok) == 1 and len(busy) == 5, [r.stderr for r in results]
    prepare = gdbus_call(system_bus, "Prepare")
    assert "org.kjump.Hibernate1.Error.Busy" in prepare.stderr
    fake_hibernator.gate.set()
    obj = proxy(system_bus)
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert fake_hibernator.calls == [("hibernate", "shutdown", False)]


def test_cancel_stops_a_running_hibernation(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                            fake_hibernator: FakeHibernator) -> None:
    import threading

    polkitd.proxy.SetAllowed([HIBERNATE, MANAGE])
    obj = proxy(system_bus)
    with pytest.raises(GLib.Error) as excinfo:
        obj.Cancel()
    assert dbus_error(excinfo) == "org.kjump.Hibernate1.Error.NotRunning"
    fake_hibernator.gate = threading.Event()
    obj.Hibernate("shutdown")
    assert fake_hibernator.started.wait(10)
    obj.Cancel()
    fake_hibernator.gate.set()
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert obj.LastResult["result"] == "cancelled" and obj.LastResult["success"] is False


def test_cancel_after_the_jump_says_it_is_too_late(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                                   fake_hibernator: FakeHibernator) -> None:
    """Issue 16.11: a Cancel that comes after the point of no return fails with TooLate; the cycle runs on."""
    import threading

    polkitd.proxy.SetAllowed([HIBERNATE, MANAGE])
    obj = proxy(system_bus)
    fake_hibernator.gate = threading.Event()
    fake_hibernator.past_jump = True
    obj.Hibernate("shutdown")
    assert fake_hibernator.started.wait(10)
    with pytest.raises(GLib.Error) as excinfo:
        obj.Cancel()
    assert dbus_error(excinfo) == "org.kjump.Hibernate1.Error.TooLate"
    assert "point of no return" in str(excinfo.value)
    fake_hibernator.gate.set()
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert obj.LastResult["result"] == "saved" and obj.LastResult["success"] is True


def test_prepare_stages_the_kernel(kjumpd_service: InProcessDaemon, system_bus: str, polkitd: Mock,
                                   fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([MANAGE])
    obj = proxy(system_bus)
    assert obj.Staged is False
    busctl_call(system_bus, "Prepare").check_returncode()
    wait_for(lambda: obj.Staged, "Staged to become true")
    assert obj.State == "idle"
    assert fake_hibernator.calls == [("stage",)]


def test_a_failing_hibernation_is_reported_in_last_result(kjumpd_service: InProcessDaemon, system_bus: str,
                                                          polkitd: Mock, fake_hibernator: FakeHibernator) -> None:
    polkitd.proxy.SetAllowed([HIBERNATE])
    fake_hibernator.fail = True
    obj = proxy(system_bus)
    obj.Hibernate("shutdown")
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert obj.LastResult["success"] is False
    assert obj.LastResult["reason"] == "image target is full"


# --- logind ----------------------------------------------------------------------------------------


def _our_inhibitors(logind: Mock) -> list:
    return [i for i in logind.proxy.ListInhibitors() if i[1] == "kjumpd"]


def test_delay_inhibitor_is_held_and_follows_prepare_for_sleep(kjumpd_service: InProcessDaemon, system_bus: str,
                                                                logind: Mock, fake_hibernator: FakeHibernator) -> None:
    import threading

    held = wait_for(lambda: _our_inhibitors(logind), "kjumpd's inhibitor")
    assert held[0][0] == "sleep" and held[0][3] == "delay"
    fake_hibernator.gate = threading.Event()
    logind.proxy.EmitSignal("org.freedesktop.login1.Manager", "PrepareForSleep", "b", [GLib.Variant("b", True)])
    # Not staged yet: kjumpd stages first and keeps the lock meanwhile.
    assert fake_hibernator.started.wait(10)
    assert _our_inhibitors(logind)
    fake_hibernator.gate.set()
    wait_for(lambda: not _our_inhibitors(logind), "the inhibitor to be released")
    assert fake_hibernator.calls == [("stage",)]
    logind.proxy.EmitSignal("org.freedesktop.login1.Manager", "PrepareForSleep", "b", [GLib.Variant("b", False)])
    wait_for(lambda: _our_inhibitors(logind), "the inhibitor to be taken again")


def test_inhibitor_released_at_once_when_already_staged(kjumpd_service: InProcessDaemon, system_bus: str,
                                                        logind: Mock, fake_hibernator: FakeHibernator) -> None:
    fake_hibernator.staged = True
    kjumpd_service.call(kjumpd_service.manager.refresh)
    wait_for(lambda: _our_inhibitors(logind), "kjumpd's inhibitor")
    logind.proxy.EmitSignal("org.freedesktop.login1.Manager", "PrepareForSleep", "b", [GLib.Variant("b", True)])
    wait_for(lambda: not _our_inhibitors(logind), "the inhibitor to be released")
    assert fake_hibernator.calls == []


def test_second_daemon_cannot_take_the_name(kjumpd_service: InProcessDaemon, system_bus: str,
                                            fake_hibernator: FakeHibernator) -> None:
    from kjumpd.daemon.config import Config

    with pytest.raises(Exception, match="another process owns it"):
        InProcessDaemon(system_bus, fake_hibernator, Config())
    assert proxy(system_bus).State == "idle"


# --- polkit that never answers ----------------------------------------------------------------------

SILENT_POLKIT = """
import sys
from gi.repository import Gio, GLib
XML = '''<node><interface name="org.freedesktop.PolicyKit1.Authority">
<method name="CheckAuthorization"><arg type="(sa{sv})" direction="in"/><arg type="s" direction="in"/>
<arg type="a{ss}" direction="in"/><arg type="u" direction="in"/><arg type="s" direction="in"/>
<arg type="(bba{ss})" direction="out"/></method></interface></node>'''
held = []
def call(con, sender, path, iface, method, params, invocation):
    held.append(invocation)               # never answered: an authentication agent nobody types into
    print(params.unpack()[1], flush=True)
con = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
con.register_object("/org/freedesktop/PolicyKit1/Authority", Gio.DBusNodeInfo.new_for_xml(XML).interfaces[0],
                    call, None, None)
Gio.bus_own_name_on_connection(con, "org.freedesktop.PolicyKit1", Gio.BusNameOwnerFlags.NONE,
                               lambda *a: print("owned", flush=True), None)
GLib.MainLoop().run()
"""


def test_a_polkit_that_never_answers_blocks_nobody(system_bus: str, logind: Mock,
                                                    fake_hibernator: FakeHibernator) -> None:
    """Issue 16.9: while polkit sits on a Hibernate call, State is still read and logind's delay lock released."""
    import sys

    from kjumpd.daemon.config import Config

    polkit = subprocess.Popen([sys.executable, "-c", SILENT_POLKIT], stdout=subprocess.PIPE, text=True)
    daemon = InProcessDaemon(system_bus, fake_hibernator, Config(image_target="/var/lib/kjump/image"))
    client = None
    try:
        assert polkit.stdout.readline().strip() == "owned"
        fake_hibernator.staged = True
        daemon.call(daemon.manager.refresh)
        wait_for(lambda: _our_inhibitors(logind), "kjumpd's inhibitor")
        client = subprocess.Popen(["gdbus", "call", "--address", system_bus, "--dest", NAME, "--object-path", PATH,
                                   "--method", f"{IFACE}.Hibernate", "shutdown"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert polkit.stdout.readline().strip() == HIBERNATE     # the daemon is waiting for polkit now
        state = busctl(system_bus, "--timeout=10", "get-property", NAME, PATH, IFACE, "State")
        assert state.returncode == 0 and state.stdout.strip() == 's "idle"', state.stderr
        logind.proxy.EmitSignal("org.freedesktop.login1.Manager", "PrepareForSleep", "b", [GLib.Variant("b", True)])
        wait_for(lambda: not _our_inhibitors(logind), "the inhibitor to be released")
        assert fake_hibernator.calls == []
    finally:
        if client is not None:
            client.kill()
            client.wait()
        daemon.stop()
        polkit.kill()
        polkit.wait()


def test_suspend_then_hibernate_is_a_suspend_with_the_configured_delay(kjumpd_service: InProcessDaemon,
                                                                       system_bus: str, polkitd: Mock,
                                                                       fake_hibernator: FakeHibernator) -> None:
    """Issue 10.3: systemctl suspend-then-hibernate goes through kjumpd: restart point suspend with a wake alarm."""
    polkitd.proxy.SetAllowed([HIBERNATE])
    obj = proxy(system_bus)
    with pytest.raises(GLib.Error) as excinfo:
        obj.HibernateWithOptions("shutdown", {"sleep-operation": GLib.Variant("s", "suspend-then-hibernate")})
    assert dbus_error(excinfo) == "org.kjump.Hibernate1.Error.InvalidOption"
    obj.HibernateWithOptions("", {"sleep-operation": GLib.Variant("s", "suspend-then-hibernate")})
    wait_for(lambda: last_result_ended(obj), "the hibernation to end")
    assert fake_hibernator.calls == [("hibernate", "suspend", False, kjumpd_service.config.hibernate_delay)]
