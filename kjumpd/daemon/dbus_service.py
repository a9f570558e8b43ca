"""All of kjumpd's D-Bus binding: the ``org.kjump.Hibernate1`` object, polkit, logind.

Everything is done with Gio on one private connection (exit-on-close off, so
a lost bus ends the main loop through ``on_bus_lost`` instead of killing the
process): the object is registered from the interface XML, the name is owned
without allowing replacement, and logind's ``Inhibit`` keeps its file
descriptor.

The main loop never waits for another process. A method call that needs
polkit (or logind's inhibitor list) sends that question asynchronously and
answers its own caller from the reply's callback, however long an
authentication agent takes to answer; meanwhile every other call, property
read and logind signal is served.

Nothing here decides anything about hibernation: the handlers check the
arguments, ask polkit (and logind, for direct callers that are not root), and
call ``kjumpd.daemon.manager.Manager``. The API is documented in
``docs/dbus.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from gi.repository import Gio, GLib

from ..api import (
    ACTION_HIBERNATE,
    ACTION_MANAGE,
    BUS_NAME,
    ERROR_ACCESS_DENIED,
    ERROR_FAILED,
    ERROR_NAMES,
    INTERFACE,
    OBJECT_PATH,
    interface_xml,
)
from ..errors import Inhibited, KjumpError
from .manager import Manager

log = logging.getLogger("kjumpd.dbus")

POLKIT_TIMEOUT_MS = 5 * 60 * 1000  # an interactive check waits for the user to type a password
LOGIND_TIMEOUT_MS = 25 * 1000

LOGIND = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
POLKIT = ("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
          "org.freedesktop.PolicyKit1.Authority")
BUS_DRIVER = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")

INTROSPECTION = interface_xml()
_NODE = Gio.DBusNodeInfo.new_for_xml(INTROSPECTION)
_INTERFACE_INFO = _NODE.interfaces[0]
PROPERTY_TYPES = {p.name: p.signature for p in _INTERFACE_INFO.properties}
_SIGNAL_TYPES = {s.name: "(" + "".join(a.signature for a in s.args) + ")" for s in _INTERFACE_INFO.signals}


class BusError(KjumpError):
    """The daemon cannot serve on the bus (no bus, name not allowed or taken)."""


class Refused(Exception):
    """A D-Bus error reply: its name and message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def error_reply(exc: BaseException) -> Refused:
    """The error reply for an exception: the documented name of a manager's refusal, else ``Error.Failed``."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, KjumpError):
        return Refused(ERROR_NAMES.get(type(exc), ERROR_FAILED), str(exc))
    log.error("unexpected failure in a method call", exc_info=exc)
    return Refused(ERROR_FAILED, f"internal error: {exc}")


def to_variant(value: Any) -> GLib.Variant:
    """A Python value as a variant for ``a{sv}`` maps (documented in docs/dbus.md).

    bool → b, int → x, float → d, str → s, a list of str → as, other lists →
    av, dict → a{sv}.
    """
    if isinstance(value, GLib.Variant):
        return value
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("x", value)
    if isinstance(value, float):
        return GLib.Variant("d", value)
    if isinstance(value, str):
        return GLib.Variant("s", value)
    if isinstance(value, dict):
        return GLib.Variant("a{sv}", to_vardict(value))
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return GLib.Variant("as", list(value))
        return GLib.Variant("av", [to_variant(v) for v in value])
    raise TypeError(f"cannot send {type(value).__name__} over D-Bus")


def to_vardict(mapping: dict[str, Any]) -> dict[str, GLib.Variant]:
    """A dict as the content of an ``a{sv}``; keys with value None are left out."""
    return {str(k): to_variant(v) for k, v in mapping.items() if v is not None}


def property_variant(name: str, value: Any) -> GLib.Variant:
    """A property's value as a variant of the type the interface XML gives it."""
    kind = PROPERTY_TYPES[name]
    return GLib.Variant(kind, to_vardict(value) if kind == "a{sv}" else value)


Reply = Callable[[Any], None]          # called with the answer: a value, or a Refused to send as an error


class Polkit:
    """polkit ``CheckAuthorization`` for the sender of a method call, asynchronous; fails closed."""

    def __init__(self, con: Gio.DBusConnection) -> None:
        self.con = con

    def check(self, sender: str, action: str, interactive: bool,
              done: Callable[[bool, bool], None]) -> None:
        """Ask polkit; later call ``done(authorized, challenge)`` on the main loop (unreachable: not authorized)."""
        subject = ("system-bus-name", {"name": GLib.Variant("s", sender)})

        def answered(con: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                authorized, challenge, _details = con.call_finish(result).unpack()[0]
            except GLib.Error as exc:
                log.warning("polkit check of %s for %s failed: %s", action, sender, exc.message)
                authorized = challenge = False
            done(bool(authorized), bool(challenge))

        self.con.call(*POLKIT, "CheckAuthorization",
                      GLib.Variant("((sa{sv})sa{ss}us)", (subject, action, {}, 1 if interactive else 0, "")),
                      GLib.VariantType.new("((bba{ss}))"), Gio.DBusCallFlags.NONE, POLKIT_TIMEOUT_MS, None,
                      answered)

    def require(self, invocation: Gio.DBusMethodInvocation, action: str, allowed: Callable[[], None],
                reply: Reply) -> None:
        """Call ``allowed()`` once polkit allows the caller ``action``; else ``reply`` AccessDenied.

        The check is interactive when the caller allows it (the message flag).
        """
        flags = invocation.get_message().get_flags()
        interactive = bool(flags & Gio.DBusMessageFlags.ALLOW_INTERACTIVE_AUTHORIZATION)
        sender = invocation.get_sender()

        def done(authorized: bool, challenge: bool) -> None:
            if not authorized:
                hint = " (authentication is required: call with interactive authorization allowed)" if challenge else ""
                log.info("%s denied to %s", action, sender)
                reply(Refused(ERROR_ACCESS_DENIED, f"not authorized for {action}{hint}"))
                return
            allowed()

        self.check(sender, action, interactive, done)


def _answer(work: Callable[[], Any], reply: Reply) -> None:
    """``reply(work())``, or the error reply for what ``work`` raised."""
    try:
        value = work()
    except Exception as exc:  # every failure becomes an error reply, none may kill the daemon
        reply(error_reply(exc))
        return
    reply(value)


class HibernateObject:
    """The object at /org/kjump/Hibernate1, registered with Gio; an Observer of the manager."""

    def __init__(self, con: Gio.DBusConnection, manager: Manager, polkit: Polkit, logind: Logind) -> None:
        self.con = con
        self.manager = manager
        self.polkit = polkit
        self.logind = logind
        self.registration = con.register_object(OBJECT_PATH, _INTERFACE_INFO, self._method_call,
                                                self._get_property, None)

    def unregister(self) -> None:
        """Take the object off the bus."""
        self.con.unregister_object(self.registration)

    # dispatch ----------------------------------------------------------------------------------

    def _method_call(self, _con: Gio.DBusConnection, sender: str, _path: str, _interface: str, method: str,
                     parameters: GLib.Variant, invocation: Gio.DBusMethodInvocation) -> None:
        out = {m.name: "(" + "".join(a.signature for a in m.out_args) + ")" for m in _INTERFACE_INFO.methods}[method]

        def reply(value: Any) -> None:
            if isinstance(value, Refused):
                invocation.return_dbus_error(value.name, str(value))
            elif out == "()":
                invocation.return_value(None)
            else:
                invocation.return_value(GLib.Variant(out, (value,)))

        handler = getattr(self, f"_do_{method}")
        try:
            handler(invocation, sender, reply, *parameters.unpack())
        except Exception as exc:
            reply(error_reply(exc))

    def _get_property(self, _con: Gio.DBusConnection, _sender: str, _path: str, _interface: str,
                      name: str) -> GLib.Variant:
        return property_variant(name, self.manager.get(name))

    # methods -----------------------------------------------------------------------------------

    def _do_Hibernate(self, invocation: Gio.DBusMethodInvocation, sender: str, reply: Reply,
                      restart_point: str) -> None:
        self._hibernate(invocation, sender, reply, restart_point, {})

    def _do_HibernateWithOptions(self, invocation: Gio.DBusMethodInvocation, sender: str, reply: Reply,
                                 restart_point: str, options: dict[str, Any]) -> None:
        self._hibernate(invocation, sender, reply, restart_point, options)

    def _hibernate(self, invocation: Gio.DBusMethodInvocation, sender: str, reply: Reply, restart_point: str,
                   options: dict[str, Any]) -> None:
        # Arguments first: a malformed call is answered without asking polkit.
        self.manager.check_options(options)
        self.manager.resolve_restart_point(restart_point, options.get("sleep-operation", "hibernate"))

        def start() -> None:
            log.info("Hibernate(%r, %r) from %s", restart_point, options, sender)
            self.manager.hibernate(restart_point, options)

        self.polkit.require(invocation, ACTION_HIBERNATE,
                            lambda: self.logind.unless_blocked(sender, lambda: _answer(start, reply), reply), reply)

    def _do_CanHibernate(self, _invocation: Gio.DBusMethodInvocation, sender: str, reply: Reply) -> None:
        if self.manager.can_hibernate() != "yes":
            reply("na")
            return
        self.polkit.check(sender, ACTION_HIBERNATE, False, lambda authorized, challenge: reply(
            "yes" if authorized else "challenge" if challenge else "no"))

    def _do_Prepare(self, invocation: Gio.DBusMethodInvocation, _sender: str, reply: Reply) -> None:
        self.polkit.require(invocation, ACTION_MANAGE, lambda: _answer(self.manager.prepare, reply), reply)

    def _do_Cancel(self, invocation: Gio.DBusMethodInvocation, _sender: str, reply: Reply) -> None:
        self.polkit.require(invocation, ACTION_MANAGE, lambda: _answer(self.manager.cancel, reply), reply)

    # observer ----------------------------------------------------------------------------------

    def _emit(self, interface: str, name: str, parameters: GLib.Variant) -> None:
        if not self.con.is_closed():
            self.con.emit_signal(None, OBJECT_PATH, interface, name, parameters)

    def properties_changed(self, changed: dict[str, Any]) -> None:
        self._emit("org.freedesktop.DBus.Properties", "PropertiesChanged", GLib.Variant(
            "(sa{sv}as)", (INTERFACE, {k: property_variant(k, v) for k, v in changed.items()}, [])))

    def resumed(self, restart_point: str, details: dict[str, Any]) -> None:
        self._emit(INTERFACE, "Resumed", GLib.Variant(_SIGNAL_TYPES["Resumed"], (restart_point, to_vardict(details))))

    def devices_changed(self, added: list[str], removed: list[str]) -> None:
        self._emit(INTERFACE, "DevicesChanged", GLib.Variant(_SIGNAL_TYPES["DevicesChanged"], (added, removed)))


class Logind:
    """logind's side of sleep: a *delay* inhibitor held while idle, PrepareForSleep, and block inhibitors.

    The inhibitor is taken when logind appears on the bus and again after
    each ``PrepareForSleep(false)``; on ``PrepareForSleep(true)`` the manager
    makes sure the hibernate kernel is staged, then the lock is released so
    logind can go on. Every call to logind is asynchronous.

    A caller that reaches kjumpd directly skips logind's inhibitors; one that
    is not root is refused while a *block* inhibitor for sleep is held
    (``unless_blocked``). Root is not asked: logind's own sleep services run
    ``kjumpctl`` as root after logind has honoured its inhibitors already.
    """

    WHY = "Make sure the hibernate kernel is staged before sleeping"

    def __init__(self, con: Gio.DBusConnection, manager: Manager) -> None:
        self.con = con
        self.manager = manager
        self.fd = -1
        self._wanted = False     # the inhibitor should be held (a late reply to take() is dropped otherwise)
        self._asking = False
        self._subscription = con.signal_subscribe(
            LOGIND[0], LOGIND[2], "PrepareForSleep", LOGIND[1], None, Gio.DBusSignalFlags.NONE,
            self._on_prepare_for_sleep)
        self._watch = Gio.bus_watch_name_on_connection(
            con, LOGIND[0], Gio.BusNameWatcherFlags.NONE, self._on_appeared, self._on_vanished)

    def take(self) -> None:
        """Ask for the delay inhibitor unless it is held or asked for; a failure is logged, not fatal.

        A reply that comes after ``release()`` (logind already preparing to
        sleep) is closed at once.
        """
        self._wanted = True
        if self.fd >= 0 or self._asking:
            return
        self._asking = True

        def answered(con: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            self._asking = False
            try:
                reply, fds = con.call_with_unix_fd_list_finish(result)
            except GLib.Error as exc:
                log.warning("cannot take logind's delay inhibitor: %s", exc.message)
                return
            (index,) = reply.unpack()
            fd = fds.steal_fds()[index]  # steal: get() would dup and leave a copy open
            if not self._wanted:
                os.close(fd)
                return
            self.fd = fd
            log.debug("logind delay inhibitor taken (fd %d)", self.fd)

        self.con.call_with_unix_fd_list(
            *LOGIND, "Inhibit", GLib.Variant("(ssss)", ("sleep", "kjumpd", self.WHY, "delay")),
            GLib.VariantType.new("(h)"), Gio.DBusCallFlags.NONE, LOGIND_TIMEOUT_MS, None, None, answered)

    def unless_blocked(self, sender: str, go: Callable[[], None], reply: Reply) -> None:
        """Call ``go()`` unless ``sender`` is not root and a block inhibitor for sleep is held (then reply Inhibited).

        Without logind on the bus nothing can be inhibited. The caller's uid
        and the inhibitor list are asked asynchronously.
        """
        def listed(con: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                (inhibitors,) = con.call_finish(result).unpack()
            except GLib.Error as exc:
                log.warning("cannot list logind's inhibitors (%s): not checking them", exc.message)
                go()
                return
            blocking = [f"{who} (uid {uid}, pid {pid}): {why}" for what, who, why, mode, uid, pid in inhibitors
                        if mode == "block" and "sleep" in what.split(":")]
            if blocking:
                log.info("hibernation from %s refused: sleep is inhibited by %s", sender, "; ".join(blocking))
                reply(error_reply(Inhibited("sleep is inhibited by " + "; ".join(blocking)
                                            + " (ask logind instead: systemctl hibernate)")))
                return
            go()

        def identified(con: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                (uid,) = con.call_finish(result).unpack()
            except GLib.Error as exc:
                reply(Refused(ERROR_FAILED, f"cannot identify the caller: {exc.message}"))
                return
            if uid == 0:
                go()
                return
            con.call(*LOGIND, "ListInhibitors", None, GLib.VariantType.new("(a(ssssuu))"),
                     Gio.DBusCallFlags.NO_AUTO_START, LOGIND_TIMEOUT_MS, None, listed)

        self.con.call(*BUS_DRIVER, "GetConnectionUnixUser", GLib.Variant("(s)", (sender,)),
                      GLib.VariantType.new("(u)"), Gio.DBusCallFlags.NONE, LOGIND_TIMEOUT_MS, None, identified)

    def release(self) -> None:
        """Close the inhibitor's fd, which lets logind proceed."""
        self._wanted = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            log.debug("logind delay inhibitor released")

    def _on_appeared(self, _con: Any, _name: str, _owner: str) -> None:
        self.take()

    def _on_vanished(self, _con: Any, _name: str) -> None:
        self.release()

    def _on_prepare_for_sleep(self, _con: Any, _sender: str, _path: str, _iface: str, _signal: str,
                              params: GLib.Variant) -> None:
        (start,) = params.unpack()
        if start:
            log.info("system is going to sleep: checking the hibernate kernel")
            self.manager.prepare_for_sleep(self.release)
        else:
            log.info("system woke up")
            self.take()

    def stop(self) -> None:
        self.con.signal_unsubscribe(self._subscription)
        Gio.bus_unwatch_name(self._watch)
        self.release()


class Service:
    """The published service: the connection, the object, the name, polkit and logind."""

    def __init__(self, con: Gio.DBusConnection, manager: Manager) -> None:
        self.con = con
        self.manager = manager
        self.logind = Logind(con, manager)
        self.object = HibernateObject(con, manager, Polkit(con), self.logind)
        manager.observers.append(self.object)

    @classmethod
    def start(cls, manager: Manager, address: str | None = None,
              on_bus_lost: Callable[[], None] | None = None) -> Service:
        """Connect (to ``address`` or the system bus), publish the object, then own the name.

        The name is requested without allowing replacement and without
        queueing: a second kjumpd fails instead of waiting or stealing it.
        """
        try:
            address = address or Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)
            con = Gio.DBusConnection.new_for_address_sync(
                address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
                None, None)
        except GLib.Error as exc:
            raise BusError(f"cannot connect to the bus {address or '(system)'}: {exc.message}") from exc
        con.set_exit_on_close(False)
        if on_bus_lost:
            con.connect("closed", lambda *_: on_bus_lost())
        service = cls(con, manager)
        try:
            (result,) = con.call_sync(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName",
                GLib.Variant("(su)", (BUS_NAME, 4)), GLib.VariantType.new("(u)"),
                Gio.DBusCallFlags.NONE, -1, None).unpack()
        except GLib.Error as exc:
            service.stop()
            raise BusError(f"cannot own {BUS_NAME}: {exc.message}") from exc
        if result != 1:  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
            service.stop()
            raise BusError(f"cannot own {BUS_NAME}: another process owns it")
        return service

    def stop(self) -> None:
        """Release everything and close the connection."""
        self.logind.stop()
        if self.object in self.manager.observers:
            self.manager.observers.remove(self.object)
        self.object.unregister()
        if not self.con.is_closed():
            self.con.close_sync(None)
