"""List what the boot-time resume check needs in the initramfs.

Run by the initramfs-tools hook (/usr/share/initramfs-tools/hooks/kjumpd) as
``python3 /usr/share/kjumpd/initramfs-files.py [CONFIG_DIR]``. Prints one
instruction per line:

``exec PATH``
    an ELF file; the hook copies it with copy_exec, which brings its shared
    libraries;
``file PATH [DEST]``
    a file copied as is (to DEST in the initramfs when given);
``env NAME VALUE``
    a variable for /conf/conf.d/kjumpd-target, which the initramfs' /init sources
    before it runs the boot scripts; the hook exports it so that the boot
    script sees it (VALUE is already shell-quoted).

What is listed:

* the Python interpreter and the modules ``kjumpctl`` imports, found with
  modulefinder from kjumpctl and all of its subcommand groups (kjumpctl
  imports every group at start-up), without the daemon's D-Bus, GLib and udev
  stack;
* the whole kjumpd package (small, and its modules import each other lazily
  in places modulefinder cannot see);
* kexec from kexec-tools;
* OpenSSL's provider modules when the modules use cryptography (dlopened);
* ``/etc/machine-id``: the check refuses an image whose machine id is not
  this installation's, so it cannot decide without it;
* the passphrase-protected image key ``/etc/kjumpd/image-key.secret`` when
  ``kjumpctl key init`` made one (docs/encryption.md);
* from kjumpd's configuration: the hibernate kernel and initrd, copied to
  the places the resume check loads them from (the root file system is not
  mounted when it runs), and the image target and offset
  (``KJUMPD_TARGET``, ``KJUMPD_OFFSET``).

When no resume is possible (no hibernate kernel or initrd configured, a
configured file missing, no kexec) nothing is listed and a warning on stderr
says why: the initramfs then boots as if kjumpd were not installed, without
the 12 MB of Python it would not use.
"""

from __future__ import annotations

import importlib.util
import json
import modulefinder
import os
import pkgutil
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Modules of the daemon side that the boot-time check never imports.
EXCLUDES = ["gi", "pydbus", "systemd", "pyudev", "tkinter", "unittest", "pydoc", "test", "distutils", "setuptools"]
# Loaded by the interpreter at start-up without an import statement.
STARTUP = ["site", "encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1", "encodings.ascii"]
ENTRY_POINTS = ["kjumpd.ctl", "kjumpd.boot.resume"]


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


# Imports ``names`` (JSON in argv[1]) and prints the file of every module then loaded.
_PROBE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
print(json.dumps({name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}))
"""


def _kind(path: Path) -> str:
    return "exec" if path.suffix == ".so" else "file"


def module_closure(names: list[str]) -> Iterator[tuple[str, Path]]:
    """The files of ``names`` and of everything they import, as (kind, path).

    modulefinder reads the import statements of Python source; what compiled
    extension modules import when they load (cryptography's bindings import
    ``_cffi_backend``) only shows when the modules are imported, so a child
    interpreter imports them too and everything it then holds is added
    (without the EXCLUDES packages, which the resume check never loads).
    """
    finder = modulefinder.ModuleFinder(excludes=EXCLUDES)
    for name in names:
        try:
            finder.import_hook(name)
        except ImportError as exc:
            warn(f"cannot follow the imports of {name}: {exc}")
    for module in finder.modules.values():
        if module.__file__:
            yield _kind(Path(module.__file__)), Path(module.__file__)
    importable = [name for name in names if not name.endswith(".__main__")]     # that one would run kjumpctl
    probe = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(importable)], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        warn(f"cannot import {', '.join(names)} to list their modules: {probe.stderr.strip()[-300:]}")
        return
    for name, file in json.loads(probe.stdout).items():
        if file and name.split(".")[0] not in EXCLUDES:
            yield _kind(Path(file)), Path(file)


def openssl_providers(entries: dict[Path, str]) -> list[Path]:
    """OpenSSL 3's provider modules, when a listed module uses OpenSSL
    (cryptography). OpenSSL dlopens them (cryptography loads "legacy" when it
    starts and fails without it), so copy_exec cannot find them; Debian keeps
    them in ossl-modules/ beside libcrypto."""
    if not any("cryptography" in path.parts for path in entries):
        return []
    directory = Path(sysconfig.get_config_var("LIBDIR") or "/usr/lib") / "ossl-modules"
    return sorted(directory.glob("*.so")) if directory.is_dir() else []


def kjumpd_modules() -> list[str]:
    """kjumpctl's subcommand groups and the resume check, as far as they are installed."""
    import kjumpd.ctl

    groups = [f"kjumpd.ctl.{m.name}" for m in pkgutil.iter_modules(kjumpd.ctl.__path__)]
    return ENTRY_POINTS + groups


def configured(config_dir: str) -> list[tuple[str, ...]] | None:
    """The hibernate kernel and initrd (as ``file SRC DEST``) and the image
    target (as ``env`` lines) from kjumpd's configuration; None when the
    hibernate kernel or initrd is not usable, so that no resume is possible."""
    from kjumpd.daemon import config as kconfig
    from kjumpd.boot import resume

    try:
        conf = kconfig.load(config_dir)
    except kconfig.ConfigError as exc:
        warn(f"{exc}; nothing added to the initramfs, it cannot resume")
        return None
    where = ", ".join(conf.sources) or "the defaults"
    lines: list[tuple[str, ...]] = []
    for key, path, dest in (("Kernel", conf.kernel, resume.DEFAULT_KERNEL),
                            ("Initrd", conf.initrd, resume.DEFAULT_INITRD)):
        if not path:
            warn(f"no [HibernateKernel] {key}= in {where}; nothing added to the initramfs, it cannot resume")
            return None
        if not Path(path).is_file():
            warn(f"{path} ([HibernateKernel] {key}= in {where}) does not exist; "
                 "nothing added to the initramfs, it cannot resume")
            return None
        lines.append(("file", path, dest))
    lines.extend(image_key(conf.encryption, conf.public_key))
    if conf.image_target:
        lines.append(("env", "KJUMPD_TARGET", shlex.quote(conf.image_target)))
        lines.append(("env", "KJUMPD_OFFSET", str(conf.image_offset)))
    else:
        warn(f"no [Image] Target= in {where}; the initramfs resumes only with kjump.resume= on the kernel command line")
    return lines


def image_key(encryption: str, public_key: str) -> list[tuple[str, ...]]:
    """The passphrase-protected image key (``kjumpctl key init``), which the resume check needs to open
    encrypted images (docs/encryption.md); a warning when images are sealed but it is missing."""
    from kjumpd import seal

    if Path(seal.SECRET_KEY_PATH).is_file():
        return [("file", seal.SECRET_KEY_PATH, seal.SECRET_KEY_PATH)]
    if encryption != "off" and Path(public_key).is_file():
        warn(f"images are sealed to {public_key}, but {seal.SECRET_KEY_PATH} is missing: "
             "this initramfs cannot resume them")
    return []


def boundary_ok() -> bool:
    """The resume check stays inside what this initramfs holds: the same check
    (``kjumpd.host.closure``) as the hibernate kernel's initramfs builder."""
    import kjumpd
    from kjumpd.host import closure

    try:
        closure.boot_closure(Path(kjumpd.__file__).resolve().parent, ["kjumpd.boot.resume"])
    except closure.BoundaryError as exc:
        warn(f"{exc}; nothing added to the initramfs, it cannot resume")
        return False
    return True


def main(argv: list[str]) -> int:
    """Print the instructions (none when no resume is possible); the
    optional argument is the configuration directory."""
    config_dir = argv[1] if len(argv) > 1 else "/etc/kjumpd"
    if not boundary_ok():
        return 0
    settings = configured(config_dir)
    if settings is None:
        return 0
    kexec = shutil.which("kexec", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not kexec:
        warn("kexec (kexec-tools) not found; nothing added to the initramfs, it cannot resume")
        return 0
    entries: dict[Path, str] = {Path(os.path.realpath(sys.executable)): "exec", Path(sys.executable): "exec",
                                Path(kexec): "exec", Path("/usr/bin/kjumpctl"): "file",
                                Path("/etc/machine-id"): "file"}
    for kind, path in module_closure(STARTUP + kjumpd_modules()):
        entries.setdefault(path, kind)
    for path in package_files("kjumpd"):
        entries.setdefault(path, "exec" if path.suffix == ".so" else "file")
    for path in openssl_providers(entries):
        entries.setdefault(path, "exec")
    for path, kind in entries.items():
        print(kind, path)
    for line in settings:
        print(*line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
