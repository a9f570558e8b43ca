"""What kjumpd tells systemd about its readiness, in two files kept up to date from ``Problems``.

- **logind's answers**: a runtime ``sleep.conf`` drop-in
  (``/run/systemd/sleep.conf.d/50-kjumpd.conf``). logind reads ``sleep.conf``
  and its drop-ins at every ``CanHibernate()``, ``CanHybridSleep()`` and
  ``CanSuspendThenHibernate()`` and answers ``na`` for an operation that
  ``Allow…=no`` forbids. While kjumpd has problems and the kernel's own
  hibernation could not stand in either, the drop-in forbids the three
  operations; otherwise it forbids nothing.
- **the sleep services' choice**: ``/run/kjumpd/ready`` exists exactly while
  kjumpd has no problems. ``kjumpd-sleep`` (the sleep services' command)
  hands the operation to kjumpd when it exists and to systemd-sleep when not.

Both are removed when the daemon stops (the unit also removes them after a
crash: ``ExecStopPost=``), which leaves logind and the sleep services to
systemd's own behaviour. Format and reasons: ``docs/units.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .manager import Manager

log = logging.getLogger("kjumpd")

SLEEP_CONF_DROPIN = Path("/run/systemd/sleep.conf.d/50-kjumpd.conf")
READY_FILE = Path("/run/kjumpd/ready")
#: the sleep.conf keys of the operations that hibernate (systemd-sleep.conf(5))
ALLOW_KEYS = ("AllowHibernation", "AllowHybridSleep", "AllowSuspendThenHibernate")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def sleep_conf(problems: list[str], fallback_problems: list[str]) -> str:
    """The drop-in's text: kjumpd's problems and those of the kernel's own hibernation decide what logind offers."""
    lines = ["# Written by kjumpd while it runs (docs/units.md); do not edit.", "[Sleep]"]
    if not problems:
        lines.insert(1, "# kjumpd is ready: hibernation goes through kjumpd.")
        return "\n".join(lines) + "\n"
    why = [f"#   {_one_line(p)}" for p in problems]
    if not fallback_problems:
        lines[1:1] = ["# kjumpd cannot hibernate now:", *why,
                      "# the sleep services fall back to the kernel's own hibernation, which looks usable."]
        return "\n".join(lines) + "\n"
    lines[1:1] = ["# kjumpd cannot hibernate now:", *why, "# nor can the kernel's own hibernation:",
                  *(f"#   {_one_line(p)}" for p in fallback_problems)]
    lines += [f"{key}=no" for key in ALLOW_KEYS]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (a reader sees the old or the new file, never half of one)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


class Readiness:
    """Keeps the drop-in and the ready marker in step with the manager's ``Problems``; an Observer of it."""

    def __init__(self, manager: Manager, fallback_problems: Callable[[], list[str]], *,
                 dropin: Path | None = SLEEP_CONF_DROPIN, ready: Path | None = READY_FILE) -> None:
        """``dropin`` or ``ready`` None: that file is not kept."""
        self.manager = manager
        self.fallback_problems = fallback_problems
        self.dropin = dropin
        self.ready = ready
        self._failed: set[Path] = set()     # say once that a file cannot be written, not at every change

    def update(self) -> None:
        """Write both files from the manager's current problems."""
        problems = list(self.manager.get("Problems"))
        if self.dropin is not None:
            fallback = list(self.fallback_problems()) if problems else []
            self._do(self.dropin, lambda path: _write(path, sleep_conf(problems, fallback)))
        self._do(self.ready, (lambda path: path.unlink(missing_ok=True)) if problems
                 else (lambda path: _write(path, "kjumpd is ready\n")))

    def _do(self, path: Path | None, action: Callable[[Path], None]) -> None:
        if path is None:
            return
        try:
            action(path)
        except OSError as exc:
            if path not in self._failed:
                log.warning("cannot update %s: %s (systemd does not learn kjumpd's readiness)", path,
                            exc.strerror or exc)
                self._failed.add(path)
            return
        self._failed.discard(path)

    def stop(self) -> None:
        """Remove both files: systemd's own behaviour applies again."""
        for path in (self.dropin, self.ready):
            self._do(path, lambda path: path.unlink(missing_ok=True))

    # observer ----------------------------------------------------------------------------------

    def properties_changed(self, changed: dict[str, Any]) -> None:
        if "Problems" in changed:
            self.update()

    def resumed(self, restart_point: str, details: dict[str, Any]) -> None:
        """Nothing to do: the problems after a cycle arrive as a property change."""

    def devices_changed(self, added: list[str], removed: list[str]) -> None:
        """Nothing to do: device changes that matter arrive as a change of ``Problems``."""
