"""List the files the boot-time resume check needs in the initramfs.

Run by the initramfs-tools hook (/usr/share/initramfs-tools/hooks/kjumpd) as
``python3 /usr/share/kjumpd/initramfs-files.py [CONFIG_DIR]``. Prints one
``KIND PATH`` line per file, where KIND is ``exec`` (an ELF file: the hook
copies it with copy_exec, which brings its shared libraries) or ``file``
(copied as is). The set is:

* the Python interpreter and the modules ``kjumpctl resume-check`` imports,
  found with modulefinder from kjumpctl and all of its subcommand groups
  (kjumpctl imports every group at start-up), so the initramfs carries only
  what runs there and not the daemon's D-Bus, GLib or udev stack;
* the whole kjumpd package (small, and its modules import each other
  lazily in places modulefinder cannot see);
* kexec from kexec-tools;
* kjumpd's configuration, and the hibernate kernel and initrd it names, since
  the root file system is not mounted when the check runs.

Problems that make a resume impossible (no hibernate kernel configured, a
configured file missing) are printed to stderr as warnings: an initramfs
without them still boots, it just cannot resume.
"""

from __future__ import annotations

import importlib.util
import modulefinder
import os
import pkgutil
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

# Modules of the daemon side that the boot-time check never imports.
EXCLUDES = ["gi", "pydbus", "systemd", "pyudev", "tkinter", "unittest", "pydoc", "test", "distutils", "setuptools"]
# Loaded by the interpreter at start-up without an import statement.
STARTUP = ["site", "encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1", "encodings.ascii"]
ENTRY_POINTS = ["kjumpd.ctl", "kjumpd.resumehook"]


def warn(message: str) -> None:
    """Tell the person running update-initramfs, without failing the build."""
    print(f"kjumpd: warning: {message}", file=sys.stderr)


def package_files(package: str) -> Iterator[Path]:
    """Every source file of an installed package, byte-code excluded."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"kjumpd: the Python package {package} is not installed")
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path


def module_closure(names: list[str]) -> Iterator[tuple[str, Path]]:
    """The files of ``names`` and of everything they import, as (kind, path)."""
    finder = modulefinder.ModuleFinder(excludes=EXCLUDES)
    for name in names:
        try:
            finder.import_hook(name)
        except ImportError as exc:
            warn(f"cannot follow the imports of {name}: {exc}")
    for module in finder.modules.values():
        if module.__file__:
            path = Path(module.__file__)
            yield ("exec" if path.suffix == ".so" else "file"), path


def kjumpd_modules() -> list[str]:
    """kjumpctl's subcommand groups and the resume check, as far as they are installed."""
    import kjumpd.ctl

    groups = [f"kjumpd.ctl.{m.name}" for m in pkgutil.iter_modules(kjumpd.ctl.__path__)]
    return ENTRY_POINTS + groups


def configured_files(config_dir: str) -> Iterator[tuple[str, Path]]:
    """kjumpd's configuration files and the hibernate kernel and initrd they name."""
    from kjumpd import config as kconfig

    try:
        conf = kconfig.load(config_dir)
    except kconfig.ConfigError as exc:
        warn(f"{exc}; the initramfs will not be able to resume")
        return
    for source in conf.sources:
        yield "file", Path(source)
    if not (conf.kernel and conf.initrd):
        warn("no [HibernateKernel] Kernel= and Initrd= configured; the initramfs will not be able to resume")
    for path in filter(None, (conf.kernel, conf.initrd)):
        if Path(path).is_file():
            yield "file", Path(path)
        else:
            warn(f"{path} (from {', '.join(conf.sources)}) does not exist; the initramfs will not be able to resume")


def main(argv: list[str]) -> int:
    """Print the list; the optional argument is the configuration directory."""
    config_dir = argv[1] if len(argv) > 1 else "/etc/kjumpd"
    entries: dict[Path, str] = {Path(os.path.realpath(sys.executable)): "exec", Path(sys.executable): "exec"}
    kexec = shutil.which("kexec", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if kexec:
        entries[Path(kexec)] = "exec"
    else:
        warn("kexec (kexec-tools) not found; the initramfs will not be able to resume")
    for kind, path in module_closure(STARTUP + kjumpd_modules()):
        entries.setdefault(path, kind)
    for path in package_files("kjumpd"):
        entries.setdefault(path, "exec" if path.suffix == ".so" else "file")
    for kind, path in configured_files(config_dir):
        entries.setdefault(path, kind)
    for path, kind in entries.items():
        print(kind, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
