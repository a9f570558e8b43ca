"""kjumpd's configuration: ``/etc/kjumpd/kjumpd.conf`` plus ``kjumpd.conf.d/*.conf``.

The syntax is systemd's INI dialect (``[Section]``, ``Key=Value``, ``#`` and
``;`` comments, keys case-sensitive, a later assignment wins). Drop-ins are
read in the lexical order of their file names after the main file, so a
package or an administrator can change one key without copying the rest.
Every value is checked when the file is read; an error names the file and the
line. The keys are documented in ``docs/config.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import KjumpError
from ..format import RESTART_POINTS, Compression
from ..machine import KINDS
from ..seal import PUBLIC_KEY_PATH

DEFAULT_DIR = Path("/etc/kjumpd")
MAIN_FILE = "kjumpd.conf"
DROPIN_DIR = "kjumpd.conf.d"

COMPRESSIONS = tuple(c.name.lower() for c in Compression)
ENCRYPTIONS = ("auto", "on", "off")   # docs/encryption.md: auto seals images once a key exists

_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^([0-9]+)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


class ConfigError(KjumpError):
    """The configuration cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Config:
    """The daemon's settings, after defaults, main file and drop-ins are merged.

    ``sources`` lists the files that were read, in order, so that ``kjumpctl
    status`` and the log can say where the settings came from.
    """

    machine_type: str = "real"
    machine_path: str = ""
    image_target: str = ""
    image_offset: int = 0
    compression: str = "lz4"
    encryption: str = "auto"
    public_key: str = PUBLIC_KEY_PATH
    kernel: str = ""
    initrd: str = ""
    region_size: int = 256 << 20
    kernel_arguments: str = ""
    hibernate_restart_point: str = "shutdown"
    hybrid_sleep_restart_point: str = "suspend"
    hibernate_delay: int = 2 * 3600        # seconds asleep before suspend-then-hibernate powers off
    sources: tuple[str, ...] = ()

    def restart_point_for(self, operation: str) -> str:
        """The configured restart point of a sleep operation (``hibernate`` or ``hybrid-sleep``)."""
        if operation == "hibernate":
            return self.hibernate_restart_point
        if operation == "hybrid-sleep":
            return self.hybrid_sleep_restart_point
        if operation == "suspend-then-hibernate":
            return "suspend"       # the image is saved, then S3 with an alarm (Manager.hibernate)
        raise ConfigError(f"unknown sleep operation {operation!r}: "
                          "expected 'hibernate', 'hybrid-sleep' or 'suspend-then-hibernate'")


def parse_size(text: str) -> int:
    """Parse a byte count with an optional binary suffix (``K``, ``M``, ``G``, ``T``), as systemd does."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (a number of bytes, optionally with K, M, G or T)")
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).upper()]


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return text
    return check


def _absolute_path(text: str) -> str:
    if text and not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path")
    return text


def _region_size(text: str) -> int:
    size = parse_size(text)
    if size < (16 << 20) or size % (1 << 20):
        raise ValueError(f"{text!r} must be a whole number of MiB, at least 16M")
    return size


_TIMESPAN_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
_TIMESPAN_RE = re.compile(r"([0-9]+)\s*([a-z]*)")


def _timespan(text: str) -> int:
    """A positive number of seconds in systemd's notation: ``7200``, ``90min``, ``2h 30min``."""
    text_ = text.strip().lower()
    parts = _TIMESPAN_RE.findall(text_)
    if not parts or _TIMESPAN_RE.sub("", text_).strip() or any(u not in _TIMESPAN_UNITS for _, u in parts):
        raise ValueError(f"{text!r} is not a time span (seconds, or with s, min, h, d)")
    seconds = sum(int(n) * _TIMESPAN_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than 0 s")
    return seconds


def _text(text: str) -> str:
    return text


# (section, key) -> (Config field, converter)
_KEYS: dict[tuple[str, str], tuple[str, Callable[[str], object]]] = {
    ("Machine", "Type"): ("machine_type", _choice(KINDS)),
    ("Machine", "Path"): ("machine_path", _absolute_path),
    ("Image", "Target"): ("image_target", _absolute_path),
    ("Image", "Offset"): ("image_offset", parse_size),
    ("Image", "Compression"): ("compression", _choice(COMPRESSIONS)),
    ("Image", "Encryption"): ("encryption", _choice(ENCRYPTIONS)),
    ("Image", "PublicKey"): ("public_key", _absolute_path),
    ("HibernateKernel", "Kernel"): ("kernel", _absolute_path),
    ("HibernateKernel", "Initrd"): ("initrd", _absolute_path),
    ("HibernateKernel", "RegionSize"): ("region_size", _region_size),
    ("HibernateKernel", "KernelArguments"): ("kernel_arguments", _text),
    ("Sleep", "HibernateRestartPoint"): ("hibernate_restart_point", _choice(tuple(RESTART_POINTS))),
    ("Sleep", "HybridSleepRestartPoint"): ("hybrid_sleep_restart_point", _choice(tuple(RESTART_POINTS))),
    ("Sleep", "HibernateDelaySec"): ("hibernate_delay", _timespan),
}


def _parse_file(path: Path, values: dict[str, object]) -> None:
    """Read one INI file into ``values``; raise ConfigError naming ``path:line`` on any mistake."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"{where}: malformed section header {line!r}")
            section = line[1:-1]
            if section not in {s for s, _ in _KEYS}:
                raise ConfigError(f"{where}: unknown section [{section}]")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: expected Key=Value, got {line!r}")
        if not section:
            raise ConfigError(f"{where}: {key}= is outside of any section")
        if (section, key) not in _KEYS:
            raise ConfigError(f"{where}: unknown key {key}= in section [{section}]")
        field, convert = _KEYS[(section, key)]
        if value == "":
            values[field] = getattr(Config, field)  # an empty assignment resets to the default
            continue
        try:
            values[field] = convert(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: [{section}] {key}=: {exc}") from exc


def load(directory: Path | str = DEFAULT_DIR) -> Config:
    """Read ``kjumpd.conf`` and the ``kjumpd.conf.d/*.conf`` drop-ins of ``directory``.

    A missing main file or drop-in directory is not an error (defaults
    apply); a file that exists but is wrong is. Values are checked one by
    one as read; settings that only make sense together are checked at the
    end with the file list in the message.
    """
    directory = Path(directory)
    files = [directory / MAIN_FILE] if (directory / MAIN_FILE).exists() else []
    dropins = directory / DROPIN_DIR
    if dropins.is_dir():
        files += sorted((p for p in dropins.iterdir() if p.suffix == ".conf"), key=lambda p: p.name)
    values: dict[str, object] = {}
    for path in files:
        _parse_file(path, values)
    config = Config(**values, sources=tuple(os.fspath(p) for p in files))
    _check_combination(config)
    return config


def _check_combination(config: Config) -> None:
    where = ", ".join(config.sources) or "defaults"
    if config.machine_type == "simulated" and not config.machine_path:
        raise ConfigError(f"{where}: [Machine] Type=simulated needs Path= (the simulated machine's directory)")
    if config.image_offset % 4096:
        raise ConfigError(f"{where}: [Image] Offset={config.image_offset} is not a multiple of 4096")

