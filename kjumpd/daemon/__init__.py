"""kjumpd, the daemon that runs in kernel A.

* ``manager``: the bus-free core, the hibernation state machine and its worker thread;
* ``hibernator``: A's side of one hibernation (pre-flight, staging, handoff, jump, result);
* ``devices``: the udev device tracker; ``config``: ``/etc/kjumpd/kjumpd.conf`` and its drop-ins;
* ``dbus_service``: the ``org.kjump.Hibernate1`` object, polkit and logind, attached to the manager from outside;
* ``main``: the ``kjumpd`` process that wires them (also ``python3 -m kjumpd.daemon``).
"""
