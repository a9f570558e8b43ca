"""Build the initramfs of the hibernate kernel (B, and R in restore role).

One archive serves both roles: its ``/init`` (a busybox shell script) reads
``kjump.role=save|restore`` from the kernel command line and runs
``python3 -m kjumpd.boot.save`` or ``python3 -m kjumpd.boot.restore``.

The archive is a gzip-compressed cpio (``newc``), written here directly (no
``cpio`` binary, no root needed: ``/dev/console`` is a device entry in the
archive). It holds:

* busybox (static) and its applet links;
* kexec-tools (``/sbin/kexec``) and the shared libraries ``ldd`` lists for it;
* a minimal Python: the interpreter, exactly the standard-library modules the
  save and restore programs import (found by importing them in a child
  interpreter and reading ``sys.modules``), the extension modules lz4,
  zstandard and xxhash and every library they link; everything compiled to
  unchecked-hash ``.pyc`` so nothing is re-compiled at boot;
* the ``kjumpd`` package itself;
* ``/init`` and ``/usr/lib/kjumpd/jumpback.py``, a self-contained fallback that
  jumps back to A when the save program could not even start.

See ``docs/initramfs.md`` for the contract between ``/init`` and the programs.

API::

    result = build("/boot/kjumpd/initramfs.img")
    result.size, result.uncompressed_size, result.files, result.python_modules
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import kexec
from ..errors import KjumpError
from . import closure

#: role on the kernel command line (``kjump.role=``) → program module
ROLE_PROGRAMS: dict[str, str] = {role: f"kjumpd.boot.{role}" for role in kexec.ROLES}

#: modules every archive gets on top of what the programs import (lazy imports
#: inside functions that a top-level import does not reach, and ``-m``)
BASE_MODULES: tuple[str, ...] = (
    "runpy",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.aliases",
    "ctypes",
    "mmap",
    "fcntl",
    "struct",
    "zlib",
    "traceback",
    "lz4.frame",
    "lz4.block",
    "zstandard",
    "xxhash",
)

#: modules left out although something imports them: ``_hashlib`` drags in
#: OpenSSL's libcrypto (4.6 MB); without it ``hashlib`` uses the interpreter's
#: built-in ``_sha256``/``_sha512``/``_md5``/``_blake2``, which is all B and R need
EXCLUDE_MODULES: tuple[str, ...] = ("_hashlib",)

DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_BUSYBOX = "/bin/busybox"
DEFAULT_KEXEC = "/sbin/kexec"
#: where the archive's Python finds kjumpd and the extension packages
SITE_DIR = "/usr/lib/python3/dist-packages"

_MERGED_USR = ("bin", "sbin", "lib", "lib64")


class InitramfsError(KjumpError):
    """The initramfs could not be built (missing tool, module or library)."""


@dataclass
class BuildResult:
    """What :func:`build` wrote."""

    path: str
    size: int  #: bytes of the compressed archive
    uncompressed_size: int  #: bytes of file contents in the archive
    files: int  #: number of archive entries
    roles: tuple[str, ...]
    python_modules: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.path}: {self.size / 2**20:.1f} MiB compressed, "
            f"{self.uncompressed_size / 2**20:.1f} MiB unpacked, {self.files} entries, "
            f"{len(self.python_modules)} Python modules, roles {','.join(self.roles)}, "
            f"built in {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------
# The archive tree

class _Tree:
    """Entries of the archive: path (no leading slash) → (kind, data)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            kind = self.entries.get(d, (None,))[0]
            if kind is None:
                self.entries[d] = ("dir", 0o755)
            elif kind == "symlink":
                raise InitramfsError(f"initramfs: {d} is a symlink, cannot hold {path}")

    def _norm(self, path: str) -> str:
        path = os.path.normpath("/" + path).lstrip("/")
        # merged /usr: /bin/x is stored as usr/bin/x
        head, _, rest = path.partition("/")
        if head in _MERGED_USR and self.entries.get(head, (None,))[0] == "symlink" and rest:
            path = f"usr/{head}/{rest}"
        return path

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        path = self._norm(path)
        self._parents(path)
        self.entries.setdefault(path, ("dir", mode))

    def add_file(self, path: str, *, src: str | None = None, data: bytes | None = None,
                 mode: int = 0o644) -> None:
        path = self._norm(path)
        self._parents(path)
        self.entries[path] = ("file", mode, src, data)

    def add_symlink(self, path: str, target: str) -> None:
        path = self._norm(path) if "/" in path.strip("/") else path.strip("/")
        self._parents(path)
        self.entries[path] = ("symlink", target)

    def add_node(self, path: str, mode: int, major: int, minor: int) -> None:
        path = self._norm(path)
        self._parents(path)
        self.entries[path] = ("node", mode, major, minor)

    def has(self, path: str) -> bool:
        return self._norm(path) in self.entries

    def add_host_file(self, path: str) -> None:
        """Copy a host file (following symlinks, keeping them as links)."""
        seen = 0
        while True:
            seen += 1
            if seen > 40:
                raise InitramfsError(f"initramfs: symlink loop at {path}")
            path = os.path.abspath(path)
            # canonical directory on the host (merged /usr etc.), same file name
            canon = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
            if os.path.islink(canon):
                target = os.readlink(canon)
                self.add_symlink(canon, target)
                path = os.path.join(os.path.dirname(canon), target)
                continue
            if not os.path.isfile(canon):
                raise InitramfsError(f"initramfs: {path} is missing on this system")
            if not self.has(canon):
                self.add_file(canon, src=canon, mode=stat.S_IMODE(os.stat(canon).st_mode))
            return


def _write_cpio(tree: _Tree, out: io.BufferedIOBase, mtime: int) -> tuple[int, int]:
    """Write the tree as a newc cpio; return (entries, content bytes)."""
    ino = 1
    total = 0

    def entry(name: str, mode: int, data: bytes = b"", nlink: int = 1,
              rmaj: int = 0, rmin: int = 0) -> None:
        nonlocal ino
        name_b = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rmaj, rmin, len(name_b), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(hdr + name_b)
        out.write(b"\0" * ((4 - (len(hdr) + len(name_b)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))
        ino += 1

    for path in sorted(tree.entries, key=lambda p: (p.count("/"), p)):
        e = tree.entries[path]
        kind = e[0]
        if kind == "dir":
            entry(path, stat.S_IFDIR | e[1], nlink=2)
        elif kind == "symlink":
            entry(path, stat.S_IFLNK | 0o777, e[1].encode())
        elif kind == "node":
            entry(path, e[1], rmaj=e[2], rmin=e[3])
        else:
            _, mode, src, data = e
            if data is None:
                with open(src, "rb") as f:
                    data = f.read()
            total += len(data)
            entry(path, stat.S_IFREG | mode, data)
    count = ino - 1
    entry("TRAILER!!!", 0, nlink=1)
    return count, total


# --------------------------------------------------------------------------
# Finding what to put in

def _ldd(paths: Iterable[str]) -> list[str]:
    """Shared libraries (and the ELF interpreter) the given ELF files need."""
    libs: set[str] = set()
    for path in paths:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        proc = subprocess.run(["ldd", path], capture_output=True, text=True)
        if proc.returncode != 0:
            if "not a dynamic executable" in proc.stdout + proc.stderr:
                continue
            raise InitramfsError(f"initramfs: ldd {path} failed: {proc.stderr.strip()}")
        for line in proc.stdout.splitlines():
            line = line.strip()
            if "=> not found" in line:
                raise InitramfsError(f"initramfs: {path} needs a missing library: {line}")
            if "=>" in line:
                lib = line.split("=>", 1)[1].split("(", 1)[0].strip()
            else:
                lib = line.split("(", 1)[0].strip()
            if lib.startswith("/"):
                libs.add(lib)
    return sorted(libs)


def _package_root() -> Path:
    """The directory that holds the running ``kjumpd`` package."""
    return Path(__file__).resolve().parent.parent


_PROBE = r"""
import importlib, json, sys
want = json.loads(sys.argv[1])
failed = {}
for name in want:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # optional imports may be missing
        failed[name] = f"{type(exc).__name__}: {exc}"
files = {}
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if f:
        files[name] = f
json.dump({"files": files, "failed": failed, "version": list(sys.version_info[:2]),
           "stdlib": sys.path}, sys.stdout)
"""


def _probe_modules(python: str, pkg_parent: Path, names: Iterable[str]) -> dict:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
           "PYTHONPATH": f"{pkg_parent}{os.pathsep}{SITE_DIR}",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([python, "-S", "-c", _PROBE, json.dumps(sorted(set(names)))],
                          capture_output=True, text=True, env=env, cwd="/")
    if proc.returncode != 0:
        raise InitramfsError(f"initramfs: probing modules with {python} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# /init and the fallback jump back: files of kjumpd.boot (they run in B and R)

INIT_SCRIPT = "init.sh"
#: the first line of /init (the package's copy has none: it is data there, not a program)
INIT_INTERPRETER = b"#!/bin/busybox sh\n"
JUMPBACK_SCRIPT = "jumpback.py"


def _boot_file(name: str) -> bytes:
    """One of the boot stage's data files (``kjumpd/boot/init.sh``, ``jumpback.py``)."""
    return importlib.resources.files("kjumpd.boot").joinpath(name).read_bytes()


# --------------------------------------------------------------------------

def build(
    output: str,
    *,
    roles: Iterable[str] = ("save", "restore"),
    python: str = DEFAULT_PYTHON,
    busybox: str = DEFAULT_BUSYBOX,
    kexec: str | None = DEFAULT_KEXEC,
    extra_modules: Iterable[str] = (),
    exclude_modules: Iterable[str] = EXCLUDE_MODULES,
    extra_files: Mapping[str, str] | None = None,
    package_dir: str | None = None,
    compress: str = "gzip",
    compresslevel: int = 6,
    mtime: int | None = None,
    log=None,
) -> BuildResult:
    """Build the hibernate kernel's initramfs at ``output`` (written atomically).

    ``roles``: which ``kjump.role=`` values the archive can serve (``save``,
    ``restore``); each pulls in its program (:data:`ROLE_PROGRAMS`).
    ``python``: the interpreter to copy (its version's ``.pyc`` are built).
    ``kexec``: kexec-tools binary to include, or ``None`` to leave it out.
    ``extra_modules``: more modules to import and include.
    ``exclude_modules``: modules to leave out even when imported (they must be
    optional for their importers; see :data:`EXCLUDE_MODULES`).
    ``extra_files``: archive path → host path, copied as they are.
    ``package_dir``: the ``kjumpd`` package directory to include (default:
    the one this module belongs to).
    ``compress``: ``gzip`` or ``none``. ``mtime``: timestamp of every entry
    (default ``SOURCE_DATE_EPOCH`` or 0), so equal inputs give equal bytes.

    Raises :class:`InitramfsError` when a tool, module or library is missing.
    """
    started = time.monotonic()
    say = log or (lambda msg: None)
    roles = tuple(roles)
    for r in roles:
        if r not in ROLE_PROGRAMS:
            raise InitramfsError(f"initramfs: unknown role {r!r} (known: {', '.join(ROLE_PROGRAMS)})")
    if compress not in ("gzip", "none"):
        raise InitramfsError(f"initramfs: unknown compression {compress!r}")
    if mtime is None:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    pkg = Path(package_dir).resolve() if package_dir else _package_root()
    if not (pkg / "__init__.py").exists():
        raise InitramfsError(f"initramfs: {pkg} is not the kjumpd package")
    for tool, what in ((python, "python"), (busybox, "busybox")):
        if not os.access(tool, os.X_OK):
            raise InitramfsError(f"initramfs: {what} not found at {tool}")
    if kexec and not os.access(kexec, os.X_OK):
        raise InitramfsError(f"initramfs: kexec-tools not found at {kexec} (install kexec-tools)")

    tree = _Tree()
    for d in _MERGED_USR:  # same /usr layout as the host
        if os.path.islink(f"/{d}"):
            tree.add_symlink(d, os.readlink(f"/{d}"))
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "etc", "usr/bin", "usr/sbin"):
        tree.add_dir(d)
    tree.add_node("dev/console", stat.S_IFCHR | 0o600, 5, 1)
    tree.add_node("dev/null", stat.S_IFCHR | 0o666, 1, 3)
    tree.add_node("dev/ttyS0", stat.S_IFCHR | 0o600, 4, 64)

    # busybox and its applets (real files added later win over applet links)
    tree.add_host_file(busybox)
    bb_path = "/" + tree._norm(os.path.realpath(busybox))
    elves = [os.path.realpath(busybox)]
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True).stdout.split()

    if kexec:
        tree.add_host_file(kexec)
        elves.append(os.path.realpath(kexec))

    # Python: the interpreter and what the programs import
    tree.add_host_file(python)
    elves.append(os.path.realpath(python))
    programs = [ROLE_PROGRAMS[r] for r in roles]
    try:
        kj_modules, external = closure.boot_closure(pkg, programs)
    except closure.BoundaryError as exc:
        raise InitramfsError(f"initramfs: {exc}") from exc
    say(f"kjumpd modules reached from {', '.join(programs)}: {len(kj_modules)}")
    probe = _probe_modules(python, pkg.parent, [*programs, *external, *BASE_MODULES, *extra_modules])
    missing_required = {n: e for n, e in probe["failed"].items()
                        if n in programs or n in BASE_MODULES or n in set(extra_modules)}
    if missing_required:
        raise InitramfsError("initramfs: required modules failed to import with "
                             f"{python}: " + "; ".join(f"{k}: {v}" for k, v in missing_required.items()))
    for name, err in sorted(probe["failed"].items()):
        say(f"optional import {name} not available, left out ({err})")
    pyver = "python{}.{}".format(*probe["version"])
    stdlib = f"/usr/lib/{pyver}"
    modules: list[str] = []
    excluded = set(exclude_modules)
    for name, f in sorted(probe["files"].items()):
        if name in excluded:
            continue
        real = os.path.realpath(f)
        if real.startswith(str(pkg) + os.sep):
            continue  # kjumpd itself: copied whole below
        if not (real.startswith(stdlib + "/") or real.startswith(SITE_DIR + "/")
                or real.startswith("/usr/local/lib/")):
            raise InitramfsError(f"initramfs: module {name} comes from {f}, outside the "
                                 f"system Python ({stdlib}, {SITE_DIR})")
        modules.append(name)
        if real.endswith((".py", ".so")):
            tree.add_host_file(real)
            if real.endswith(".so"):
                elves.append(real)
        elif real.endswith(".pyc"):
            tree.add_host_file(real)
    # Python needs os.py in place to find its prefix (it is in sys.modules anyway)
    tree.add_host_file(f"{stdlib}/os.py")
    tree.add_dir(f"{stdlib}/lib-dynload")

    # the kjumpd package (sources only)
    for path in sorted(pkg.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(pkg.parent)
        tree.add_file(f"{SITE_DIR}/{rel}", src=str(path))

    # shared libraries
    libs = _ldd(elves)
    for lib in libs:
        tree.add_host_file(lib)
        if os.path.basename(lib).startswith("libcrypto.so.3"):
            # OpenSSL 3 dlopens its providers (cryptography loads "legacy" when
            # it starts, and fails without it): ldd cannot see them
            providers = os.path.join(os.path.dirname(os.path.realpath(lib)), "ossl-modules")
            for provider in sorted(os.listdir(providers)) if os.path.isdir(providers) else ():
                tree.add_host_file(os.path.join(providers, provider))

    for name in applets:
        if not tree.has(name):
            tree.add_symlink(tree._norm(name), bb_path)

    tree.add_file("init", data=INIT_INTERPRETER + _boot_file(INIT_SCRIPT).replace(b"@SITE_DIR@", SITE_DIR.encode()),
                  mode=0o755)
    tree.add_file("usr/lib/kjumpd/jumpback.py", data=_boot_file(JUMPBACK_SCRIPT))
    tree.add_file("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    tree.add_file("etc/group", data=b"root:x:0:\n")
    tree.add_file("etc/kjumpd-initramfs", data=json.dumps(
        {"roles": list(roles), "python": pyver, "modules": modules}, indent=1).encode())
    for dest, src in (extra_files or {}).items():
        tree.add_file(dest, src=src, mode=stat.S_IMODE(os.stat(src).st_mode))

    # Compile every .py to unchecked-hash .pyc with the target interpreter.
    with tempfile.TemporaryDirectory(prefix="kjumpd-initramfs-") as tmp:
        stage = Path(tmp)
        pyfiles = []
        for path, e in tree.entries.items():
            if e[0] == "file" and path.endswith(".py") and path.startswith("usr/lib/"):
                dst = stage / path
                dst.parent.mkdir(parents=True, exist_ok=True)
                if e[3] is not None:
                    dst.write_bytes(e[3])
                else:
                    shutil.copyfile(e[2], dst)
                pyfiles.append(path)
        proc = subprocess.run(
            [python, "-S", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
             "unchecked-hash", "-s", str(stage), "-p", "/", str(stage / "usr")],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise InitramfsError(f"initramfs: compileall failed:\n{proc.stdout}{proc.stderr}")
        for pyc in stage.rglob("*.pyc"):
            rel = str(pyc.relative_to(stage))
            tree.add_file(rel, data=pyc.read_bytes())

        out_path = Path(output)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # a fresh file (O_EXCL, random name, never through a link), renamed over the output when complete
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
        tmp_out = Path(tmp_name)
        try:
            with open(fd, "wb") as raw:
                os.fchmod(raw.fileno(), 0o644)
                if compress == "gzip":
                    with gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                       compresslevel=compresslevel, mtime=mtime) as gz:
                        count, total = _write_cpio(tree, gz, mtime)
                else:
                    count, total = _write_cpio(tree, raw, mtime)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp_out, out_path)
        finally:
            if tmp_out.exists():
                tmp_out.unlink()

    result = BuildResult(
        path=str(out_path), size=out_path.stat().st_size, uncompressed_size=total,
        files=count, roles=roles, python_modules=sorted(modules + kj_modules),
        libraries=libs, seconds=time.monotonic() - started)
    say(result.summary())
    return result


def main(argv: list[str] | None = None) -> int:
    """``python3 -m kjumpd.host.initramfs OUTPUT [--role save --role restore]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m kjumpd.host.initramfs",
                                     description="Build the hibernate kernel's initramfs.")
    parser.add_argument("output")
    parser.add_argument("--role", action="append", choices=sorted(ROLE_PROGRAMS))
    parser.add_argument("--python", default=DEFAULT_PYTHON)
    parser.add_argument("--no-kexec", action="store_true")
    parser.add_argument("--module", action="append", default=[], help="extra module to include")
    parser.add_argument("--compress", choices=("gzip", "none"), default="gzip")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        res = build(args.output, roles=args.role or ("save", "restore"), python=args.python,
                    kexec=None if args.no_kexec else DEFAULT_KEXEC, extra_modules=args.module,
                    compress=args.compress,
                    log=(lambda m: print(m, file=sys.stderr)) if args.verbose else None)
    except KjumpError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(res.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
