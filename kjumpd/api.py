"""The names of kjumpd's public D-Bus API, stated once for the daemon and ``kjumpctl``.

The interface itself is the data file ``org.kjump.Hibernate1.xml`` beside
this module (a prose comment on every member), loaded at run time by
``interface_xml()``; ``docs/dbus.md`` documents the same members. The public
error names are an explicit table, so that renaming a Python class cannot
change the API.
"""

from __future__ import annotations

import importlib.resources

from .errors import Busy, Inhibited, InvalidOption, InvalidRestartPoint, KjumpError, NotReady, NotRunning, TooLate

BUS_NAME = "org.kjump.Hibernate1"
OBJECT_PATH = "/org/kjump/Hibernate1"
INTERFACE = "org.kjump.Hibernate1"
INTERFACE_FILE = "org.kjump.Hibernate1.xml"

#: polkit actions (dbus-policy/org.kjump.policy)
ACTION_HIBERNATE = "org.kjump.hibernate"
ACTION_MANAGE = "org.kjump.manage"

ERROR_PREFIX = INTERFACE + ".Error."
#: the daemon's refusals → their public D-Bus error names (docs/dbus.md, "Errors")
ERROR_NAMES: dict[type[KjumpError], str] = {
    Busy: ERROR_PREFIX + "Busy",
    NotReady: ERROR_PREFIX + "NotReady",
    InvalidRestartPoint: ERROR_PREFIX + "InvalidRestartPoint",
    InvalidOption: ERROR_PREFIX + "InvalidOption",
    NotRunning: ERROR_PREFIX + "NotRunning",
    TooLate: ERROR_PREFIX + "TooLate",
    Inhibited: ERROR_PREFIX + "Inhibited",
}
#: any other failure
ERROR_FAILED = ERROR_PREFIX + "Failed"
ERROR_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"


def interface_xml() -> str:
    """The introspection XML of ``org.kjump.Hibernate1`` (the package's data file)."""
    return importlib.resources.files(__package__).joinpath(INTERFACE_FILE).read_text(encoding="utf-8")
