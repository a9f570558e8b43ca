#!/usr/bin/python3
"""VM test only: a stand-in for polkitd on the guest's system bus.

org.freedesktop.PolicyKit1.Authority.CheckAuthorization answers "authorized"
when the subject (a system-bus-name) belongs to uid 0 and "not authorized"
otherwise, the answer polkit's default rules give root. No JavaScript engine,
no agent: the guest has no polkitd.
"""
import sys

from gi.repository import Gio, GLib

XML = """<node><interface name="org.freedesktop.PolicyKit1.Authority">
  <method name="CheckAuthorization">
    <arg type="(sa{sv})" direction="in"/><arg type="s" direction="in"/>
    <arg type="a{ss}" direction="in"/><arg type="u" direction="in"/>
    <arg type="s" direction="in"/><arg type="(bba{ss})" direction="out"/>
  </method>
  <property name="BackendName" type="s" access="read"/>
</interface></node>"""


def main():
    bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
    node = Gio.DBusNodeInfo.new_for_xml(XML)

    def call(con, sender, path, iface, method, params, inv):
        (kind, details), action, _d, _flags, _cancel = params.unpack()
        uid = None
        if kind == "system-bus-name" and "name" in details:
            reply = con.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                  "GetConnectionUnixUser", GLib.Variant("(s)", (details["name"],)),
                                  GLib.VariantType.new("(u)"), Gio.DBusCallFlags.NONE, 5000, None)
            uid = reply.unpack()[0]
        elif kind == "unix-process" and "uid" in details:
            uid = details["uid"]
        ok = uid == 0
        print(f"CheckAuthorization {action} for {kind} {details} (uid {uid}): {'yes' if ok else 'no'}",
              flush=True)
        inv.return_value(GLib.Variant("((bba{ss}))", ((ok, False, {}),)))

    def get_prop(con, sender, path, iface, name):
        return GLib.Variant("s", "kjvm-root-only")

    bus.register_object("/org/freedesktop/PolicyKit1/Authority", node.interfaces[0], call, get_prop, None)
    Gio.bus_own_name_on_connection(bus, "org.freedesktop.PolicyKit1", Gio.BusNameOwnerFlags.NONE,
                                   lambda *a: print("polkit stand-in ready", flush=True),
                                   lambda *a: (print("lost org.freedesktop.PolicyKit1", flush=True),
                                               sys.exit(1)))
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
