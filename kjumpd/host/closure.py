"""What a boot-stage program imports: the one check of the boundary between the stages.

B's save program, R's restore program and C's resume check run in an
initramfs that holds the shared top of the package and ``kjumpd.boot``, but
not the daemon side (``kjumpd.daemon``: GLib, D-Bus, udev) nor the host
tools. ``boot_closure`` walks every import statement reachable from the
programs (also those inside functions) and refuses a program that reaches a
forbidden module. The initramfs builder (``kjumpd.host.initramfs``) and the
Debian initramfs hook (``packaging/initramfs-tools/kjumpd-initramfs-files.py``)
both call it, so the boundary is checked the same way wherever an initramfs
is made, and the tests call it for every boot program.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from ..errors import KjumpError

#: the boot programs: B's, R's and C's
BOOT_PROGRAMS: tuple[str, ...] = ("kjumpd.boot.save", "kjumpd.boot.restore", "kjumpd.boot.resume")

#: packages and modules no boot program may import (prefixes)
FORBIDDEN: tuple[str, ...] = ("kjumpd.daemon", "kjumpd.host", "kjumpd.ctl.bus", "kjumpd.ctl.devices",
                              "gi", "pydbus", "pyudev", "systemd")


class BoundaryError(KjumpError):
    """A boot-stage program imports something its initramfs does not hold."""


def _module_file(pkg_root: Path, name: str) -> Path | None:
    """The source file of module ``name`` (``kjumpd.x.y``) under ``pkg_root`` (the kjumpd directory)."""
    base = pkg_root.joinpath(*name.split(".")[1:])
    if base.is_dir() and (base / "__init__.py").exists():
        return base / "__init__.py"
    py = base.with_suffix(".py")
    return py if py.exists() else None


def _imports(path: Path, name: str) -> Iterable[str]:
    """Every module named by an import statement of the module at ``path``, relative ones resolved."""
    parts = name.split(".")
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module and module != "__future__":
                yield module
                if module.split(".")[0] == "kjumpd":  # "from . import x" may name a module
                    yield from (f"{module}.{alias.name}" for alias in node.names)


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def boot_closure(pkg_root: Path, programs: Iterable[str]) -> tuple[list[str], set[str]]:
    """(the kjumpd modules reachable from ``programs``, the other modules they import).

    Raises BoundaryError when a program is missing or reaches a forbidden
    module, naming the chain of imports that leads there.
    """
    programs = list(programs)
    todo: list[tuple[str, tuple[str, ...]]] = [(p, (p,)) for p in programs]
    seen: set[str] = set()
    external: set[str] = set()
    while todo:
        name, chain = todo.pop()
        if _forbidden(name):
            raise BoundaryError(f"boot-stage program {chain[0]} imports {name} "
                                f"({' -> '.join(chain)}), which its initramfs does not hold")
        if name in seen:
            continue
        path = _module_file(pkg_root, name)
        if path is None:
            if name in programs:
                raise BoundaryError(f"boot-stage program {name} is not in {pkg_root}")
            continue  # "from .x import Name" also yields "kjumpd.x.Name", which is no module
        seen.add(name)
        parts = name.split(".")
        todo.extend((".".join(parts[:i]), chain) for i in range(1, len(parts)))  # parent packages run first
        for module in _imports(path, name):
            if module.split(".")[0] == "kjumpd":
                todo.append((module, chain + (module,)))
            elif _forbidden(module):
                raise BoundaryError(f"boot-stage program {chain[0]} imports {module} "
                                    f"({' -> '.join(chain + (module,))}), which its initramfs does not hold")
            else:
                external.add(module)
    return sorted(seen), external
