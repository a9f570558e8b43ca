"""Logging for kjumpd: the journal with structured fields when journald runs, stderr otherwise.

libsystemd drops journal messages silently when there is no journald socket,
so the journal is used only when the socket exists or systemd connected our
stderr to the journal (``JOURNAL_STREAM``). Structured fields are passed as
``extra={"KJUMP_RESTART_POINT": "shutdown"}``: the journal stores them as
fields, the stderr format ignores them.
"""

from __future__ import annotations

import logging
import os
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def journal_available() -> bool:
    """True when messages sent to the journal would be stored."""
    return os.path.exists(JOURNAL_SOCKET)


def setup(identifier: str = "kjumpd", level: int = logging.INFO, *, use_journal: bool | None = None) -> logging.Handler:
    """Route the root logger to the journal or stderr and return the handler in use.

    ``use_journal`` forces the choice (tests); by default the journal is used
    when it is available.
    """
    if use_journal is None:
        use_journal = journal_available()
    handler: logging.Handler
    if use_journal:
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        # Under systemd, stderr goes to the journal, which adds its own time stamps.
        fmt = ("%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM")
               else "%(asctime)s %(name)s %(levelname)s %(message)s")
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
