"""The ``kjumpd`` process: configuration, logging, the GLib main loop, ``sd_notify``, signals.

It builds the bus-free ``Manager`` (``kjumpd.daemon.manager``) with its
hibernator and device tracker, then attaches the D-Bus service
(``kjumpd.daemon.dbus_service``) to it from outside. SIGTERM stops (a running
hibernation is cancelled first), SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import KjumpError, TooLate
from . import config as configmod
from . import readiness
from .config import Config, ConfigError
from .manager import HIBERNATING, HibernatorLike, Manager, Schedule, TrackerParticipant

log = logging.getLogger("kjumpd")



def settings_from(config: Config) -> Any:
    """The hibernator's settings from the daemon's configuration.

    Every field of ``HibernateSettings`` is the ``Config`` field of the same
    name (a test holds them to that), so a new setting is stated once, in
    both dataclasses, and never copied here by hand.
    """
    from .hibernator import HibernateSettings

    return HibernateSettings(**{f.name: getattr(config, f.name) for f in dataclasses.fields(HibernateSettings)})


def make_hibernator(config: Config, participants: tuple) -> HibernatorLike:
    """Open the configured machine and build a Hibernator for it (the daemon's factory)."""
    from ..machine import open_machine
    from .hibernator import Hibernator

    return Hibernator(open_machine(config.machine_type, config.machine_path), settings_from(config), participants)


def make_tracker(config: Config, on_change: Callable[[], None]) -> TrackerParticipant | None:
    """The udev device tracker watching on the main loop, when kjumpd.daemon.devices is installed; None otherwise."""
    try:
        from .devices import DeviceTracker
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.devices":
            raise
        log.warning("device tracking is not available (kjumpd.daemon.devices is missing)")
        return None
    tracker = DeviceTracker(config.image_target, on_change=on_change)
    tracker.start()
    return TrackerParticipant(tracker)


def make_manager(config: Config, schedule: Schedule) -> Manager:
    """The daemon's Manager: the Hibernator of ``make_hibernator`` and the udev device tracker, every
    change of which makes the manager look again (``refresh``) on the main loop.

    One place for this wiring, so that tests build the daemon exactly as ``main()`` does. Whatever a
    daemon that died mid-hibernation left frozen is thawed here, before anything else.
    """
    manager_ref: list[Manager] = []

    def tracker_factory(cfg: Config) -> TrackerParticipant | None:
        return make_tracker(cfg, lambda: schedule(lambda: manager_ref[0].refresh()))

    manager = Manager(config, make_hibernator, schedule, tracker_factory)
    manager_ref.append(manager)
    manager.hibernator.thaw_left_frozen()   # a daemon that died mid-hibernation must not leave A frozen
    return manager


def tell_systemd(manager: Manager, args: argparse.Namespace) -> readiness.Readiness | None:
    """Keep logind's sleep.conf drop-in and the sleep services' marker from now on (kjumpd.daemon.readiness).

    On the system bus by default; a daemon on another bus (tests, the demo)
    is not the system's kjumpd and writes them only where it is told to.
    """
    system = args.bus_address is None
    dropin = args.sleep_conf or (readiness.SLEEP_CONF_DROPIN if system else None)
    ready = args.ready_file or (readiness.READY_FILE if system else None)
    if dropin is None and ready is None:
        return None
    told = readiness.Readiness(manager, manager.hibernator.fallback_problems, dropin=dropin, ready=ready)
    manager.observers.append(told)
    told.update()
    return told


def notify(message: str) -> None:
    """sd_notify, quiet when not started by systemd (a missing socket is not an error here)."""
    try:
        from systemd import daemon as sd_daemon

        sd_daemon.notify(message)
    except (ImportError, OSError) as exc:
        log.debug("sd_notify(%r) failed: %s", message, exc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kjumpd", description="kexec-jump hibernation daemon (org.kjump.Hibernate1).")
    parser.add_argument("--config", metavar="DIR", type=Path, default=configmod.DEFAULT_DIR,
                        help="configuration directory holding kjumpd.conf and kjumpd.conf.d/ (default %(default)s)")
    parser.add_argument("--bus-address", metavar="ADDRESS",
                        help="serve on this D-Bus address instead of the system bus")
    parser.add_argument("--ready-file", metavar="PATH", type=Path,
                        help=f"the marker the sleep services look for (default {readiness.READY_FILE} on the "
                             "system bus, none with --bus-address)")
    parser.add_argument("--sleep-conf", metavar="PATH", type=Path,
                        help=f"logind's sleep.conf drop-in (default {readiness.SLEEP_CONF_DROPIN} on the system bus, "
                             "none with --bus-address)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"kjumpd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the daemon until SIGTERM; returns the exit code."""
    args = parse_args(argv)
    from .. import log as logsetup

    logsetup.setup("kjumpd", getattr(logging, args.log_level.upper()))
    try:
        config = configmod.load(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        notify(f"STATUS=configuration error: {exc}")
        return 1
    if args.check_config:
        print(f"configuration OK ({', '.join(config.sources) or 'defaults'})")
        return 0

    from gi.repository import GLib

    from . import dbus_service

    def schedule(fn: Callable[[], None]) -> None:
        def once() -> bool:
            fn()
            return GLib.SOURCE_REMOVE
        GLib.idle_add(once)

    try:
        manager = make_manager(config, schedule)
    except KjumpError as exc:
        log.error("cannot start: %s", exc)
        notify(f"STATUS=cannot start: {exc}")
        return 1
    manager.hibernator.discard_stale_image()   # one image, one chance: boots without kjumpd's hook
    loop = GLib.MainLoop()
    try:
        service = dbus_service.Service.start(manager, args.bus_address, on_bus_lost=loop.quit)
    except dbus_service.BusError as exc:
        log.error("%s", exc)
        return 1
    told = tell_systemd(manager, args)      # after owning the name (a second kjumpd must not touch them),
                                            # before READY=1 (Type=notify: the sleep services start after)

    def on_term() -> bool:
        notify("STOPPING=1")
        if manager.get("State") == HIBERNATING:
            log.info("SIGTERM during a hibernation: cancelling it, then stopping")
            try:
                manager.cancel()
            except TooLate:
                log.info("the hibernation is past the jump: stopping when it has ended")
        manager.when_idle(loop.quit)
        return GLib.SOURCE_CONTINUE

    def on_hup() -> bool:
        notify("RELOADING=1")
        try:
            manager.reload(configmod.load(args.config))
        except ConfigError as exc:
            log.error("configuration not reloaded, keeping the old one: %s", exc)
        notify("READY=1")
        return GLib.SOURCE_CONTINUE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_term)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_term)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGHUP, on_hup)
    notify("READY=1\nSTATUS=serving org.kjump.Hibernate1")
    log.info("kjumpd %s serving org.kjump.Hibernate1 (%s)", __version__, args.bus_address or "system bus")
    loop.run()
    service.stop()
    if told is not None:
        told.stop()
    if manager.tracker is not None:
        manager.tracker.stop()
    log.info("kjumpd stopped")
    return 0
