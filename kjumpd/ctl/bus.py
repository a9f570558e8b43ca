"""kjumpctl's daemon subcommands: status, can-hibernate, hibernate, prepare, cancel.

They talk to ``org.kjump.Hibernate1`` on the system bus (``DBUS_SYSTEM_BUS_ADDRESS``
is honoured) through Gio directly, so that calls may allow interactive polkit
authentication. Long work never rides on one method call: ``hibernate
--wait`` and ``prepare`` start the job, then follow ``PropertiesChanged``
until the daemon is idle again, re-reading the properties at each wake-up
(the signals only wake us; the properties are the truth). That wait has no
timeout, so systemd's ``systemd-hibernate.service`` can block on it until the
system runs again. Exit codes are those of ``kjumpd.ctl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from gi.repository import Gio, GLib

from ..api import BUS_NAME, ERROR_ACCESS_DENIED, ERROR_INVALID_ARGS, ERROR_NAMES, INTERFACE, OBJECT_PATH
from ..errors import InvalidOption, InvalidRestartPoint, NotReady
from . import EXIT_DENIED, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

CALL_TIMEOUT_MS = 5 * 60 * 1000  # covers a polkit password prompt; no call waits for a job

# D-Bus error name -> exit code; anything else is EXIT_FAILED.
_EXIT_FOR_ERROR = {
    "org.freedesktop.DBus.Error.ServiceUnknown": EXIT_UNAVAILABLE,
    "org.freedesktop.DBus.Error.NameHasNoOwner": EXIT_UNAVAILABLE,
    ERROR_ACCESS_DENIED: EXIT_DENIED,
    ERROR_INVALID_ARGS: EXIT_USAGE,
    ERROR_NAMES[NotReady]: EXIT_UNAVAILABLE,
    ERROR_NAMES[InvalidRestartPoint]: EXIT_USAGE,
    ERROR_NAMES[InvalidOption]: EXIT_USAGE,
}
_NOT_RUNNING = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")
_BUSY_STATES = ("preparing", "hibernating")


class CallFailed(Exception):
    """A D-Bus call failed; carries the exit code kjumpctl should return."""

    def __init__(self, message: str, exit_code: int, dbus_name: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.dbus_name = dbus_name


def _remote_message(message: str, name: str) -> str:
    """The text the remote side gave, without GDBus's ``GDBus.Error:NAME: `` prefix.

    ``Gio.DBusError.strip_remote_error`` cannot do this from Python: it
    strips a copy of the error, not the message PyGObject already holds.
    """
    return message.removeprefix(f"GDBus.Error:{name}: ") if name else message


class Client:
    """A private connection to the system bus and the kjumpd object on it."""

    def __init__(self) -> None:
        try:
            address = Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)
            self.con = Gio.DBusConnection.new_for_address_sync(
                address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
                None, None)
        except GLib.Error as exc:
            raise CallFailed(f"cannot connect to the system bus: {exc.message}", EXIT_UNAVAILABLE) from exc
        self.con.set_exit_on_close(False)

    def call(self, method: str, args: GLib.Variant | None = None, reply: str | None = None, *,
             interface: str = INTERFACE, interactive: bool = False) -> Any:
        """Call a method of kjumpd; returns the unpacked reply, raises CallFailed with the exit code."""
        flags = Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else Gio.DBusCallFlags.NONE
        try:
            result = self.con.call_sync(BUS_NAME, OBJECT_PATH, interface, method, args,
                                        GLib.VariantType.new(reply) if reply else None, flags, CALL_TIMEOUT_MS, None)
        except GLib.Error as exc:
            name = Gio.DBusError.get_remote_error(exc) or ""
            message = _remote_message(exc.message, name)
            if name in _NOT_RUNNING:
                message = f"kjumpd is not running ({BUS_NAME} is not on the bus)"
            raise CallFailed(message, _EXIT_FOR_ERROR.get(name, EXIT_FAILED), name) from exc
        return result.unpack() if result is not None else ()

    def properties(self) -> dict[str, Any]:
        """All properties of kjumpd, unpacked."""
        (props,) = self.call("GetAll", GLib.Variant("(s)", (INTERFACE,)), "(a{sv})",
                             interface="org.freedesktop.DBus.Properties")
        return props

    def wait_until(self, start: Callable[[], None], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Call ``start``, then wait for ``done(properties)``; returns the properties it accepted.

        The signal subscription and the name watch exist before ``start``
        runs, so no change can be missed; kjumpd vanishing from the bus ends
        the wait with an error.
        """
        loop = GLib.MainLoop()
        state: dict[str, Any] = {}

        def check(*_: Any) -> None:
            try:
                props = self.properties()
            except CallFailed as exc:  # e.g. NoReply: kjumpd went away while we asked
                state["error"] = CallFailed(f"lost kjumpd before the operation ended: {exc}", EXIT_FAILED)
                loop.quit()
                return
            if done(props):
                state["props"] = props
                loop.quit()

        def vanished(*_: Any) -> None:
            state.setdefault("error", CallFailed("lost kjumpd before the operation ended: it left the bus",
                                                 EXIT_FAILED))
            loop.quit()

        subscription = self.con.signal_subscribe(BUS_NAME, "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                                 OBJECT_PATH, INTERFACE, Gio.DBusSignalFlags.NONE, check)
        try:
            start()
        except CallFailed as exc:
            self.con.signal_unsubscribe(subscription)
            if exc.dbus_name != "org.freedesktop.DBus.Error.NoReply":
                raise
            # kjumpd left after accepting the call but before its reply reached us
            raise CallFailed(f"lost kjumpd before the operation ended: {exc}", EXIT_FAILED) from exc
        watch = Gio.bus_watch_name_on_connection(self.con, BUS_NAME, Gio.BusNameWatcherFlags.NONE, None, vanished)
        try:
            GLib.idle_add(lambda: check() or GLib.SOURCE_REMOVE)
            loop.run()
        finally:
            Gio.bus_unwatch_name(watch)
            self.con.signal_unsubscribe(subscription)
        if "error" in state:
            raise state["error"]
        return state["props"]


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.1f}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    raise AssertionError("unreachable")


def _describe_result(result: dict[str, Any]) -> str:
    if not result:
        return "none yet"
    text = f"{result.get('result', '?')} (restart point {result.get('restart-point', '?')})"
    if result.get("reason"):
        text += f": {result['reason']}"
    encrypted = result.get("details", {}).get("encrypted")
    if encrypted is not None:
        text += "; image encrypted" if encrypted else "; image NOT encrypted"
    return text


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def cmd_status(args: argparse.Namespace) -> int:
    props = Client().properties()
    if args.json:
        json.dump({k: _json_value(v) for k, v in sorted(props.items())}, sys.stdout, indent=2, sort_keys=True)
        print()
        return EXIT_OK
    base, size = props["Region"]
    state = props["State"]
    if state in _BUSY_STATES and props.get("Phase"):
        state += f" ({props['Phase']}, {props['Progress'] * 100:.0f}%)"
    lines = [
        ("State", state),
        ("Staged", "yes" if props["Staged"] else "no"),
        ("Restart point", f"{props['DefaultRestartPoint']} (hybrid sleep: {props['HybridSleepRestartPoint']})"),
        ("Supported", ", ".join(props["SupportedRestartPoints"])),
        ("Image target", props["ImageTarget"] or "(not configured)"),
        ("Capacity", f"{_size(props['ImageCapacity'])}, estimated image {_size(props['EstimatedImageSize'])}"),
        ("B region", f"{_size(size)} at {base:#x}" if size else "(none)"),
        ("Problems", "; ".join(props["Problems"]) or "none"),
        ("Last result", _describe_result(props["LastResult"])),
        ("Version", props["Version"]),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:>{width}}: {value}")
    return EXIT_OK


CAN_HIBERNATE_EXIT = {"yes": EXIT_OK, "challenge": EXIT_OK, "no": EXIT_DENIED, "na": EXIT_UNAVAILABLE}


def cmd_can_hibernate(args: argparse.Namespace) -> int:
    (answer,) = Client().call("CanHibernate", None, "(s)")
    print(answer)
    return CAN_HIBERNATE_EXIT.get(answer, EXIT_FAILED)


def cmd_hibernate(args: argparse.Namespace) -> int:
    client = Client()
    options = {"force": GLib.Variant("b", args.force), "sleep-operation": GLib.Variant("s", args.sleep_operation)}
    request = GLib.Variant("(sa{sv})", (args.restart_point, options))

    def start() -> None:
        client.call("HibernateWithOptions", request, interactive=args.ask_password)

    if not args.wait:
        start()
        return EXIT_OK
    props = client.wait_until(start, lambda p: p["State"] != "hibernating")
    result = props["LastResult"]
    print(f"hibernation: {_describe_result(result)}", file=sys.stderr if not result.get("success") else sys.stdout)
    return EXIT_OK if result.get("success") else EXIT_FAILED


def cmd_prepare(args: argparse.Namespace) -> int:
    client = Client()

    def start() -> None:
        client.call("Prepare", interactive=args.ask_password)

    if not args.wait:
        start()
        return EXIT_OK
    props = client.wait_until(start, lambda p: p["State"] != "preparing")
    if not props["Staged"]:
        print(f"kjumpctl: not staged: {'; '.join(props['Problems']) or 'unknown reason'}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    Client().call("Cancel", interactive=args.ask_password)
    return EXIT_OK


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print a failed call's message and return its exit code."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CallFailed as exc:
            print(f"kjumpctl: {exc}", file=sys.stderr)
            return exc.exit_code
    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add the daemon subcommands to kjumpctl's parser."""
    def add(name: str, func: Callable[[argparse.Namespace], int], help: str,
            auth: bool = False) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help, description=help)
        if auth:
            parser.add_argument("--no-ask-password", dest="ask_password", action="store_false",
                                help="do not ask for a password when polkit wants authentication")
        parser.set_defaults(func=_guarded(func))
        return parser

    status = add("status", cmd_status, "show kjumpd's state")
    status.add_argument("--json", action="store_true", help="print every property as JSON")
    add("can-hibernate", cmd_can_hibernate, "say whether hibernation is possible for the caller (yes/no/na/challenge)")
    hibernate = add("hibernate", cmd_hibernate, "hibernate the system through kjumpd", auth=True)
    hibernate.add_argument("--restart-point", default="", metavar="POINT",
                           help="what to do after the image is saved (resume, suspend, platform, shutdown, reboot); "
                                "default: the configured one for the sleep operation")
    hibernate.add_argument("--sleep-operation", default="hibernate",
                           choices=["hibernate", "hybrid-sleep", "suspend-then-hibernate"],
                           help="whose configured restart point is the default; suspend-then-hibernate suspends "
                                "with a wake alarm after the save (default: %(default)s)")
    hibernate.add_argument("--force", action="store_true",
                           help="hibernate even with writable file systems mounted from removable disks")
    hibernate.add_argument("--wait", action="store_true",
                           help="block until the system runs again; fail when the hibernation failed")
    prepare = add("prepare", cmd_prepare, "stage the hibernate kernel now (waits until it is staged)", auth=True)
    prepare.add_argument("--no-wait", dest="wait", action="store_false", help="return once the daemon started staging")
    add("cancel", cmd_cancel, "stop a running hibernation before the jump", auth=True)
