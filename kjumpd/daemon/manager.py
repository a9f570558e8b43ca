"""The daemon's core in kernel A: the hibernation state machine, without the bus or the process.

``Manager`` owns one ``Hibernator`` and the daemon's state (idle, preparing,
hibernating). Long work (staging the hibernate kernel, a whole hibernation)
runs in a worker thread; its progress and its end are handed back to the
main loop through ``schedule`` and reported to observers as property changes
and events. The manager knows nothing about D-Bus (``dbus_service`` binds it)
nor which machine the hibernator drives.

The process around it (configuration, logging, the main loop, signals) is
``kjumpd.daemon.main``; the bus binding is ``kjumpd.daemon.dbus_service``,
attached as an ``Observer`` from outside.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import __version__
from ..errors import Busy, InvalidOption, InvalidRestartPoint, KjumpError, NotReady, NotRunning, RefusedError, TooLate
from ..format import RESTART_POINTS
from .config import Config
from .hibernator import Cancellation

log = logging.getLogger("kjumpd")

IDLE, PREPARING, HIBERNATING = "idle", "preparing", "hibernating"
SLEEP_OPERATIONS = ("hibernate", "hybrid-sleep", "suspend-then-hibernate")
OPTIONS = {"force": bool, "sleep-operation": str}


class HibernatorLike(Protocol):
    """What the manager needs from ``kjumpd.daemon.hibernator.Hibernator``."""

    def problems(self, *, force: bool = False) -> list[str]: ...
    def is_staged(self) -> bool: ...
    def stage(self) -> None: ...
    def region(self) -> tuple[int, int]: ...
    def image_capacity(self) -> int: ...
    def estimated_image_size(self) -> int: ...
    def discard_stale_image(self) -> str: ...
    def hibernate(self, restart_point: str, *, force: bool = False, progress: Any = None,
                  cancel: Any = None, wake_after: float | None = None) -> Any: ...
    def thaw_left_frozen(self) -> list[str]: ...
    def fallback_problems(self) -> list[str]: ...


class Observer(Protocol):
    """Receives the manager's changes on the main loop (the D-Bus service is one)."""

    def properties_changed(self, changed: dict[str, Any]) -> None: ...
    def resumed(self, restart_point: str, details: dict[str, Any]) -> None: ...
    def devices_changed(self, added: list[str], removed: list[str]) -> None: ...


HibernatorFactory = Callable[[Config, tuple], HibernatorLike]
TrackerFactory = Callable[[Config], "TrackerParticipant | None"]
Schedule = Callable[[Callable[[], None]], None]


class TrackerParticipant:
    """Wraps the device tracker as a hibernation participant and keeps what ``after_jump`` reported."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.last_change: dict[str, list[str]] = {}

    def problems(self, *, force: bool = False) -> list[str]:
        return list(self.tracker.problems(force=force))

    def before_jump(self) -> None:
        self.last_change = {}
        self.tracker.before_jump()

    def after_jump(self) -> dict:
        self.last_change = dict(self.tracker.after_jump())
        return self.last_change

    @property
    def memory_stale(self) -> bool:
        return bool(self.tracker.memory_stale)

    def clear_memory_stale(self) -> None:
        self.tracker.clear_memory_stale()

    def stop(self) -> None:
        self.tracker.stop()


@dataclass
class _Work:
    """The job running in the worker thread."""

    kind: str
    cancel: Cancellation = field(default_factory=Cancellation)
    when_done: list[Callable[[], None]] = field(default_factory=list)


class Manager:
    """The daemon's state and operations, independent of the bus binding.

    Every public method runs on the main loop. ``schedule(fn)`` must run
    ``fn`` on that loop soon (``GLib.idle_add`` in the daemon); the worker
    thread uses it for every result, so state is only ever changed on the
    main loop.
    """

    def __init__(self, config: Config, hibernator_factory: HibernatorFactory, schedule: Schedule,
                 tracker_factory: TrackerFactory | None = None) -> None:
        self.config = config
        self._factory = hibernator_factory
        self._schedule = schedule
        self._tracker_factory = tracker_factory
        self.tracker = tracker_factory(config) if tracker_factory else None
        self.hibernator = hibernator_factory(config, self._participants())
        self.observers: list[Observer] = []
        self._work: _Work | None = None
        self._pending_config: Config | None = None
        self._stage_error = ""
        self._props: dict[str, Any] = {
            "State": IDLE, "Phase": "", "Progress": 0.0, "LastResult": {}, "Version": __version__,
            "SupportedRestartPoints": list(RESTART_POINTS),
        }
        self._props.update(self._computed())

    # --- properties -------------------------------------------------------------------------

    def _participants(self) -> tuple:
        return (self.tracker,) if self.tracker else ()

    def _computed(self) -> dict[str, Any]:
        """Properties read from the hibernator and the configuration; only called while idle."""
        problems = list(self.hibernator.problems())
        if self._stage_error:
            problems.append(self._stage_error)
        return {
            "Staged": bool(self.hibernator.is_staged()),
            "DefaultRestartPoint": self.config.hibernate_restart_point,
            "HybridSleepRestartPoint": self.config.hybrid_sleep_restart_point,
            "ImageTarget": self.config.image_target,
            "ImageCapacity": int(self.hibernator.image_capacity()),
            "EstimatedImageSize": int(self.hibernator.estimated_image_size()),
            "Region": tuple(int(v) for v in self.hibernator.region()),
            "Problems": problems,
        }

    def get(self, name: str) -> Any:
        """The current value of a property."""
        return self._props[name]

    def properties(self) -> dict[str, Any]:
        """All properties."""
        return dict(self._props)

    def _set(self, **values: Any) -> None:
        changed = {k: v for k, v in values.items() if self._props.get(k) != v}
        if not changed:
            return
        self._props.update(changed)
        for observer in self.observers:
            observer.properties_changed(changed)

    def refresh(self) -> None:
        """Re-read the hibernator's view (devices changed, configuration reloaded); re-stage when memory changed."""
        if self._work is None:
            self._set(**self._computed())
            self._restage_if_memory_changed()

    def _restage_if_memory_changed(self) -> None:
        if self._work is None and self.tracker is not None and self.tracker.memory_stale:
            log.info("the memory layout changed: staging the hibernate kernel again")
            self.prepare()

    # --- operations ---------------------------------------------------------------------------

    def resolve_restart_point(self, restart_point: str, operation: str = "hibernate") -> str:
        """``""`` means the configured default of the sleep operation; anything else must be supported."""
        if operation not in SLEEP_OPERATIONS:
            raise InvalidOption(f"sleep-operation must be one of {', '.join(SLEEP_OPERATIONS)}, not {operation!r}")
        if restart_point == "":
            return self.config.restart_point_for(operation)
        if operation == "suspend-then-hibernate" and restart_point != "suspend":
            raise InvalidOption(f"suspend-then-hibernate saves the image, then suspends: restart point "
                                f"{restart_point!r} is not possible with it (give '' or 'suspend')")
        if restart_point not in RESTART_POINTS:
            raise InvalidRestartPoint(
                f"unknown restart point {restart_point!r}; supported: {', '.join(RESTART_POINTS)}")
        return restart_point

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Refuse unknown options and options of the wrong type."""
        for key, value in options.items():
            if key not in OPTIONS:
                raise InvalidOption(f"unknown option {key!r}; known: {', '.join(OPTIONS)}")
            if type(value) is not OPTIONS[key]:
                raise InvalidOption(f"option {key!r} must be a {OPTIONS[key].__name__}, not {type(value).__name__}")

    def can_hibernate(self) -> str:
        """``yes`` when a hibernation could start now, ``na`` when something prevents it."""
        return "na" if self._props["Problems"] else "yes"

    def hibernate(self, restart_point: str, options: dict[str, Any] | None = None) -> str:
        """Start a hibernation in the worker thread and return the restart point it uses.

        Everything is checked before anything starts: a bad argument, a
        running job or any problem raises and leaves the state unchanged.
        """
        options = dict(options or {})
        self.check_options(options)
        operation = options.get("sleep-operation", "hibernate")
        point = self.resolve_restart_point(restart_point, operation)
        force = options.get("force", False)
        wake_after = self.config.hibernate_delay if operation == "suspend-then-hibernate" else None
        if self._work is not None:
            raise Busy(f"kjumpd is busy ({self._props['State']})")
        problems = list(self.hibernator.problems(force=force))
        if problems:
            self._set(Problems=problems)
            raise NotReady("hibernation is not possible: " + "; ".join(problems))
        log.info("hibernation requested, restart point %s%s", point, " (forced)" if force else "",
                 extra={"KJUMP_RESTART_POINT": point})
        work = self._start(HIBERNATING)
        self._run(work, lambda: self.hibernator.hibernate(
            point, force=force, progress=self._progress_from_worker, cancel=work.cancel, wake_after=wake_after),
            lambda outcome: self._hibernate_done(point, outcome))
        return point

    def prepare(self) -> None:
        """Stage the hibernate kernel in the worker thread (joins a preparation already running)."""
        if self._work is not None and self._work.kind == HIBERNATING:
            raise Busy("kjumpd is hibernating")
        if self._work is None:
            self._run(self._start(PREPARING), self.hibernator.stage, self._prepare_done)

    def cancel(self) -> None:
        """Ask the running hibernation to stop before the jump; TooLate once it is past that point."""
        if self._work is None or self._work.kind != HIBERNATING:
            raise NotRunning("no hibernation is running")
        if not self._work.cancel.request():
            raise TooLate("the hibernation is past its point of no return (freezing and the jump): "
                          "it can no longer be cancelled")
        log.info("cancel requested")

    def prepare_for_sleep(self, done: Callable[[], None]) -> None:
        """Before any sleep: make sure the kernel is staged, then call ``done`` (on the main loop)."""
        if self._work is None and not self._props["Staged"]:
            self.prepare()
        self.when_idle(done)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` now when idle, else when the running job has ended."""
        if self._work is None:
            callback()
        else:
            self._work.when_done.append(callback)

    def reload(self, config: Config) -> None:
        """Use a new configuration; while a job runs it is applied when the job ends."""
        if self._work is not None:
            self._pending_config = config
            return
        if self._tracker_factory and config.image_target != self.config.image_target:
            if self.tracker is not None:
                self.tracker.stop()
            self.tracker = self._tracker_factory(config)
        self.config = config
        self.hibernator = self._factory(config, self._participants())
        self._stage_error = ""
        self.refresh()
        log.info("configuration reloaded from %s", ", ".join(config.sources) or "defaults")

    # --- worker ---------------------------------------------------------------------------------

    def _start(self, kind: str) -> _Work:
        self._work = _Work(kind)
        self._set(State=kind, Phase="", Progress=0.0)
        return self._work

    def _run(self, work: _Work, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        def body() -> None:
            try:
                outcome: Any = job()
            except Exception as exc:  # every failure is reported, none may kill the daemon
                outcome = exc
            self._schedule(lambda: self._finish(work, done, outcome))
        threading.Thread(target=body, name=f"kjumpd-{work.kind}", daemon=True).start()

    def _finish(self, work: _Work, done: Callable[[Any], None], outcome: Any) -> None:
        self._work = None
        done(outcome)
        if self._pending_config is not None:
            config, self._pending_config = self._pending_config, None
            self.reload(config)
        self._set(State=IDLE, Phase="", Progress=0.0, **self._computed())
        for callback in work.when_done:
            callback()
        self._restage_if_memory_changed()

    def _progress_from_worker(self, phase: str, fraction: float) -> None:
        self._schedule(lambda: self._progress(phase, fraction))

    def _progress(self, phase: str, fraction: float) -> None:
        # One signal per whole percent at most: progress callbacks may come per chunk.
        if self._work is None:
            return
        fraction = max(0.0, min(1.0, float(fraction)))
        if phase != self._props["Phase"] or abs(fraction - self._props["Progress"]) >= 0.01 or fraction == 1.0:
            self._set(Phase=phase, Progress=fraction)

    def _prepare_done(self, outcome: Any) -> None:
        if isinstance(outcome, Exception):
            self._stage_error = f"staging the hibernate kernel failed: {outcome}"
            log.error("%s", self._stage_error)
        else:
            self._stage_error = ""
            if self.tracker is not None:
                self.tracker.clear_memory_stale()
            log.info("hibernate kernel staged")

    def _hibernate_done(self, point: str, outcome: Any) -> None:
        if isinstance(outcome, Exception):
            kind = "refused" if isinstance(outcome, RefusedError) else "failed"
            if not isinstance(outcome, KjumpError):
                log.error("hibernation crashed", exc_info=outcome)
            result = {"restart-point": point, "success": False, "result": kind, "reason": str(outcome)}
            log.error("hibernation %s: %s", kind, outcome, extra={"KJUMP_RESTART_POINT": point})
            self._set(LastResult=result)
            return
        result = dict(outcome.as_dict())
        log.info("hibernation ended: %s %s", result.get("result"), result.get("reason", ""),
                 extra={"KJUMP_RESTART_POINT": point, "KJUMP_RESULT": str(result.get("result"))})
        self._set(LastResult=result)
        for observer in self.observers:
            observer.resumed(point, result)
        if self.tracker is not None:
            change = self.tracker.last_change
            added, removed = list(change.get("devices-added", [])), list(change.get("devices-removed", []))
            if added or removed:
                for observer in self.observers:
                    observer.devices_changed(added, removed)
