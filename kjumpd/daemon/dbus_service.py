"""All of kjumpd's D-Bus binding: the ``org.kjump.Hibernate1`` object, polkit, logind.

pydbus publishes the object and calls the handlers; what pydbus cannot do is
done with Gio directly on the same connection: owning the name without
allowing replacement, polkit calls with a timeout, and logind's ``Inhibit``,
whose file descriptor pydbus would lose (it closes received fds). The
connection is private with exit-on-close off, so a lost bus ends the main
loop through ``on_bus_lost`` instead of killing the process.

Nothing here decides anything about hibernation: the handlers check the
arguments, ask polkit, and call ``kjumpd.Manager``. The API is
documented in ``docs/dbus.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pydbus.bus  # noqa: F401  (adds the .pydbus property to Gio.DBusConnection)
from gi.repository import Gio, GLib
from pydbus.generic import signal

from ..api import (
    ACTION_HIBERNATE,
    ACTION_MANAGE,
    BUS_NAME,
    ERROR_ACCESS_DENIED,
    ERROR_FAILED,
    ERROR_INVALID_ARGS,
    ERROR_NAMES,
    INTERFACE,
    OBJECT_PATH,
    interface_xml,
)
from ..errors import KjumpError
from .manager import Manager

log = logging.getLogger("kjumpd.dbus")

POLKIT_TIMEOUT_MS = 5 * 60 * 1000  # an interactive check waits for the user to type a password

LOGIND = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
POLKIT = ("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
          "org.freedesktop.PolicyKit1.Authority")

INTROSPECTION = interface_xml()
_NODE = Gio.DBusNodeInfo.new_for_xml(INTROSPECTION)
PROPERTY_TYPES = {p.name: p.signature for p in _NODE.interfaces[0].properties}


class BusError(KjumpError):
    """The daemon cannot serve on the bus (no bus, name not allowed or taken)."""


def _error_class(name: str, doc: str) -> type[Exception]:
    """An exception class whose ``__name__`` is a D-Bus error name: pydbus replies with that name."""
    cls = type(name.rsplit(".", 1)[1], (Exception,), {"__doc__": doc})
    cls.__name__ = name
    return cls


AccessDenied = _error_class(ERROR_ACCESS_DENIED, "polkit said no.")
InvalidArgs = _error_class(ERROR_INVALID_ARGS, "An argument is malformed.")
# the manager's refusals -> the reply classes carrying their names from kjumpd.api.ERROR_NAMES
ERRORS: dict[type[KjumpError], type[Exception]] = {
    cls: _error_class(name, cls.__doc__ or "") for cls, name in ERROR_NAMES.items()}
Failed = _error_class(ERROR_FAILED, "The operation failed; the message says why.")
_REPLY_ERRORS = tuple(ERRORS.values()) + (AccessDenied, InvalidArgs, Failed)


class _QuietExpectedErrors(logging.Filter):
    """pydbus logs a traceback for every error reply; ours are answers, not crashes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _REPLY_ERRORS))


logging.getLogger("pydbus.registration").addFilter(_QuietExpectedErrors())


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


def _wire(name: str, value: Any) -> Any:
    """A property value in the form pydbus needs to wrap it in the property's type."""
    return to_vardict(value) if PROPERTY_TYPES[name] == "a{sv}" else value


class Polkit:
    """polkit ``CheckAuthorization`` for the sender of a method call; fails closed."""

    def __init__(self, con: Gio.DBusConnection) -> None:
        self.con = con

    def check(self, sender: str, action: str, *, interactive: bool) -> tuple[bool, bool]:
        """(authorized, challenge) for ``sender``; an unreachable polkit means not authorized."""
        subject = ("system-bus-name", {"name": GLib.Variant("s", sender)})
        try:
            reply = self.con.call_sync(
                *POLKIT, "CheckAuthorization",
                GLib.Variant("((sa{sv})sa{ss}us)", (subject, action, {}, 1 if interactive else 0, "")),
                GLib.VariantType.new("((bba{ss}))"), Gio.DBusCallFlags.NONE, POLKIT_TIMEOUT_MS, None)
        except GLib.Error as exc:
            log.warning("polkit check of %s for %s failed: %s", action, sender, exc.message)
            return False, False
        authorized, challenge, _details = reply.unpack()[0]
        return bool(authorized), bool(challenge)

    def require(self, invocation: Gio.DBusMethodInvocation, action: str) -> None:
        """Raise AccessDenied unless the caller may do ``action`` (interactive if the caller allows)."""
        flags = invocation.get_message().get_flags()
        interactive = bool(flags & Gio.DBusMessageFlags.ALLOW_INTERACTIVE_AUTHORIZATION)
        sender = invocation.get_sender()
        authorized, challenge = self.check(sender, action, interactive=interactive)
        if not authorized:
            hint = " (authentication is required: call with interactive authorization allowed)" if challenge else ""
            log.info("%s denied to %s", action, sender)
            raise AccessDenied(f"not authorized for {action}{hint}")


class HibernateObject:
    """The object at /org/kjump/Hibernate1 as pydbus sees it; an Observer of the manager."""

    dbus = INTROSPECTION
    PropertiesChanged = signal()
    Resumed = signal()
    DevicesChanged = signal()

    def __init__(self, manager: Manager, polkit: Polkit) -> None:
        self.manager = manager
        self.polkit = polkit

    # methods -----------------------------------------------------------------------------------

    def Hibernate(self, restart_point: str, dbus_context: Any) -> None:
        self._hibernate(restart_point, {}, dbus_context)

    def HibernateWithOptions(self, restart_point: str, options: dict[str, Any], dbus_context: Any) -> None:
        self._hibernate(restart_point, options, dbus_context)

    def CanHibernate(self, dbus_context: Any) -> str:
        if self.manager.can_hibernate() != "yes":
            return "na"
        authorized, challenge = self.polkit.check(dbus_context.sender, ACTION_HIBERNATE, interactive=False)
        return "yes" if authorized else "challenge" if challenge else "no"

    # pydbus hides the Gio invocation in dbus_context._mi; polkit needs its message flags.

    def Prepare(self, dbus_context: Any) -> None:
        self.polkit.require(dbus_context._mi, ACTION_MANAGE)
        with _translated():
            self.manager.prepare()

    def Cancel(self, dbus_context: Any) -> None:
        self.polkit.require(dbus_context._mi, ACTION_MANAGE)
        with _translated():
            self.manager.cancel()

    def _hibernate(self, restart_point: str, options: dict[str, Any], dbus_context: Any) -> None:
        with _translated():
            # Arguments first: a malformed call is answered without asking polkit.
            self.manager.check_options(options)
            self.manager.resolve_restart_point(restart_point, options.get("sleep-operation", "hibernate"))
        self.polkit.require(dbus_context._mi, ACTION_HIBERNATE)
        log.info("Hibernate(%r, %r) from %s", restart_point, options, dbus_context.sender)
        with _translated():
            self.manager.hibernate(restart_point, options)

    # observer ----------------------------------------------------------------------------------

    def properties_changed(self, changed: dict[str, Any]) -> None:
        self.PropertiesChanged(INTERFACE, {k: _wire(k, v) for k, v in changed.items()}, [])

    def resumed(self, restart_point: str, details: dict[str, Any]) -> None:
        self.Resumed(restart_point, to_vardict(details))

    def devices_changed(self, added: list[str], removed: list[str]) -> None:
        self.DevicesChanged(added, removed)


def _property(name: str) -> property:
    return property(lambda self: _wire(name, self.manager.get(name)), doc=f"The {name} property (docs/dbus.md).")


for _name in PROPERTY_TYPES:
    setattr(HibernateObject, _name, _property(_name))


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn the manager's refusals into D-Bus errors with the documented names."""
    try:
        yield
    except KjumpError as exc:
        raise ERRORS.get(type(exc), Failed)(str(exc)) from exc


class Logind:
    """logind's side of sleep: a *delay* inhibitor held while idle, and PrepareForSleep.

    The inhibitor is taken when logind appears on the bus and again after
    each ``PrepareForSleep(false)``; on ``PrepareForSleep(true)`` the manager
    makes sure the hibernate kernel is staged, then the lock is released so
    logind can go on.
    """

    WHY = "Make sure the hibernate kernel is staged before sleeping"

    def __init__(self, con: Gio.DBusConnection, manager: Manager) -> None:
        self.con = con
        self.manager = manager
        self.fd = -1
        self._subscription = con.signal_subscribe(
            LOGIND[0], LOGIND[2], "PrepareForSleep", LOGIND[1], None, Gio.DBusSignalFlags.NONE,
            self._on_prepare_for_sleep)
        self._watch = Gio.bus_watch_name_on_connection(
            con, LOGIND[0], Gio.BusNameWatcherFlags.NONE, self._on_appeared, self._on_vanished)

    def take(self) -> None:
        """Take the delay inhibitor unless it is held; a failure is logged, not fatal."""
        if self.fd >= 0:
            return
        try:
            reply, fds = self.con.call_with_unix_fd_list_sync(
                *LOGIND, "Inhibit", GLib.Variant("(ssss)", ("sleep", "kjumpd", self.WHY, "delay")),
                GLib.VariantType.new("(h)"), Gio.DBusCallFlags.NONE, 25000, None, None)
        except GLib.Error as exc:
            log.warning("cannot take logind's delay inhibitor: %s", exc.message)
            return
        (index,) = reply.unpack()
        self.fd = fds.steal_fds()[index]  # steal: get() would dup and leave a copy open
        log.debug("logind delay inhibitor taken (fd %d)", self.fd)

    def release(self) -> None:
        """Close the inhibitor's fd, which lets logind proceed."""
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
        self.object = HibernateObject(manager, Polkit(con))
        self.registration = con.pydbus.register_object(OBJECT_PATH, self.object, None)
        manager.observers.append(self.object)
        self.logind = Logind(con, manager)

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
        self.registration.unregister()
        if not self.con.is_closed():
            self.con.close_sync(None)
