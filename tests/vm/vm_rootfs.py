"""A's root file system for the VM test: an ext4 image made with ``mkfs.ext4 -d``.

The staged tree holds busybox (static) as the base system, the host's Python
3.11 (whole standard library, and from dist-packages only the packages kjumpd
and its tools import: pydbus, gi with the GLib/GObject/Gio typelibs, lz4,
zstandard, xxhash, systemd, pyudev), a real ``dbus-daemon`` with the host's
system-bus configuration, kexec-tools, the kjumpd package from the work tree,
and the hibernate kernel with the initramfs built by
``kjumpd.host.initramfs.build``. ``/sbin/init`` is ``guest/init.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST = HERE / "guest"
PYTHON = "/usr/bin/python3"
SITE = "/usr/lib/python3/dist-packages"
#: where the packaging (and kjumpd.boot.resume's defaults) keep the hibernate kernel
HIBERNATE_DIR = "/usr/lib/kjumpd/hibernate"
TYPELIB_DIR = "/usr/lib/x86_64-linux-gnu/girepository-1.0"
TYPELIBS = ("GLib-2.0", "GObject-2.0", "Gio-2.0", "GModule-2.0")
#: libraries loaded with dlopen (ldd cannot see them): pyudev's ctypes
#: libudev, what the typelibs name, and the OpenSSL 3 provider cryptography
#: loads when it starts (kjumpd.seal; without it every import of kjumpd.image fails)
DLOPENED = ("libudev.so.1", "libgio-2.0.so.0", "libgobject-2.0.so.0", "libglib-2.0.so.0",
            "libgmodule-2.0.so.0", "libgirepository-1.0.so.1", "ossl-modules/legacy.so")
LIBDIR = "/usr/lib/x86_64-linux-gnu"
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "config-3.11-x86_64-linux-gnu", "distutils", "unittest", "venv"}

#: modules the guest programs import (the probe copies their whole top-level packages)
GUEST_IMPORTS = (
    "pydbus", "gi", "gi.repository.GLib", "gi.repository.GObject", "gi.repository.Gio",
    "systemd.daemon", "systemd.journal", "pyudev", "lz4.frame", "lz4.block", "zstandard", "xxhash",
)

# kjumpd modules A and C run; missing ones (not written yet) are reported, not fatal here
KJUMPD_MODULES = (
    "kjumpd.daemon.main", "kjumpd.daemon.dbus_service", "kjumpd.ctl", "kjumpd.ctl.bus", "kjumpd.ctl.image",
    "kjumpd.ctl.boot", "kjumpd.ctl.devices", "kjumpd.daemon.hibernator", "kjumpd.boot.resume",
    "kjumpd.machine.real", "kjumpd.daemon.devices",
)

KJUMPD_CONF = """\
# kjumpd in the VM test: the real machine, image on the second virtio disk.
[Machine]
Type=real

[Image]
Target=/dev/vdb
Compression={compression}

[HibernateKernel]
Kernel={hdir}/vmlinuz
Initrd={hdir}/initrd.img
RegionSize={region}
KernelArguments=console=ttyS0 {kargs}
"""

POLKIT_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- VM test only: guest/polkit-root.py stands in for polkitd (root is authorized) -->
<busconfig>
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
</busconfig>
"""


class RootfsError(Exception):
    pass


class Stage:
    """A directory tree being filled with host files (same paths as on the host)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.elves: set[str] = set()
        root.mkdir(parents=True, exist_ok=True)
        for d in ("bin", "sbin", "lib", "lib64"):
            if os.path.islink(f"/{d}") and not os.path.lexists(root / d):
                os.symlink(os.readlink(f"/{d}"), root / d)

    def path(self, p: str) -> Path:
        p = os.path.normpath("/" + p)
        head, _, rest = p.lstrip("/").partition("/")
        if head in ("bin", "sbin", "lib", "lib64") and os.path.islink(f"/{head}") and rest:
            p = f"/usr/{head}/{rest}"
        return self.root / p.lstrip("/")

    def _target(self, dst: Path) -> Path:
        """A path to create inside the stage. The stage holds absolute symlinks
        (busybox applets, /var/run): never write through one, it would land
        on the host."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        root = os.path.realpath(self.root)
        if not os.path.realpath(dst.parent).startswith(root + os.sep) and os.path.realpath(dst.parent) != root:
            raise RootfsError(f"{dst} would be written outside the stage")
        if os.path.islink(dst):
            os.unlink(dst)
        return dst

    def write(self, p: str, data: str | bytes, mode: int = 0o644) -> None:
        dst = self._target(self.path(p))
        if isinstance(data, str):
            data = data.encode()
        dst.write_bytes(data)
        dst.chmod(mode)

    def copy_file(self, src: str, dst: str | None = None) -> None:
        """Copy one host file, recreating symlinks on its way."""
        for _ in range(40):
            src = os.path.abspath(src)
            canon = os.path.join(os.path.realpath(os.path.dirname(src)), os.path.basename(src))
            target = self.path(dst or canon)
            if os.path.islink(canon):
                link = os.readlink(canon)
                if not os.path.lexists(target):
                    os.symlink(link, self._target(target))
                src, dst = os.path.join(os.path.dirname(canon), link), None
                continue
            if not os.path.lexists(target):
                shutil.copy2(canon, self._target(target), follow_symlinks=True)
            with open(canon, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    self.elves.add(canon)
            return
        raise RootfsError(f"symlink loop at {src}")

    def copy_tree(self, src: str, dst: str | None = None, skip: set[str] = frozenset()) -> None:
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in skip]
            elif "__pycache__" in skip:
                dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if name.endswith((".pyc",)) and "__pycache__" not in dirpath:
                    continue
                s = os.path.join(dirpath, name)
                d = os.path.join(dst or src, rel, name)
                self.copy_file(s, d) if not os.path.islink(s) else self._link(s, d)
            for name in dirnames:
                s = os.path.join(dirpath, name)
                if os.path.islink(s):
                    self._link(s, os.path.join(dst or src, rel, name))

    def _link(self, src: str, dst: str) -> None:
        target = self.path(dst)
        if not os.path.lexists(target):
            os.symlink(os.readlink(src), self._target(target))

    def copy_libraries(self) -> list[str]:
        libs: set[str] = set()
        for elf in sorted(self.elves):
            out = subprocess.run(["ldd", elf], capture_output=True, text=True)
            for line in out.stdout.splitlines():
                if "not found" in line:
                    raise RootfsError(f"{elf}: {line.strip()}")
                part = line.split("=>", 1)[1] if "=>" in line else line
                lib = part.split("(", 1)[0].strip()
                if lib.startswith("/"):
                    libs.add(lib)
        for lib in sorted(libs):
            self.copy_file(lib)
        return sorted(libs)


def probe(modules: tuple[str, ...], package_parent: Path = REPO) -> dict:
    code = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    try: importlib.import_module(n)\n"
        "    except BaseException as e: failed[n] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'files': {k: getattr(m, '__file__', None) for k, m in list(sys.modules.items())},"
        " 'failed': failed}))\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": f"{package_parent}:{SITE}", "LC_ALL": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([PYTHON, "-S", "-c", code, json.dumps(modules)], capture_output=True, text=True,
                          env=env, cwd="/")
    if proc.returncode:
        raise RootfsError(f"probe failed: {proc.stderr}")
    return json.loads(proc.stdout)


def busybox_applets(stage: Stage, busybox: str = "/bin/busybox") -> None:
    stage.copy_file(busybox)
    real = "/" + str(stage.path(os.path.realpath(busybox)).relative_to(stage.root))
    names = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        dst = stage.path(name)
        if os.path.lexists(dst):
            continue
        os.symlink(real, stage._target(dst))


def build_stage(stage_dir: Path, *, kernel: Path, initramfs: Path, compression: str = "lz4",
                region: str = "256M", kernel_args: str = "", package_dir: str | None = None) -> dict:
    """Fill ``stage_dir`` with A's root file system; returns a report dict."""
    st = Stage(stage_dir)
    report: dict = {}
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "mnt", "var/lib/work", "var/log",
              "etc/dbus-1/system.d", "usr/share/dbus-1/system.d", "var/lib/dbus"):
        st.path(d).mkdir(parents=True, exist_ok=True)
    os.chmod(st.path("tmp"), 0o1777)
    if not os.path.lexists(st.path("var/run")):
        os.symlink("/run", st.path("var/run"))

    # real binaries first, busybox applets fill the gaps
    for binary in ("/sbin/kexec", "/usr/bin/dbus-daemon", "/usr/bin/python3", "/usr/bin/python3.11",
                   "/sbin/e2fsck"):
        if os.path.exists(binary):
            st.copy_file(binary)
    busybox_applets(st)

    # Python: whole stdlib (minus tests and GUI), selected dist-packages
    st.copy_tree("/usr/lib/python3.11", skip=STDLIB_SKIP)
    for _dirpath, _, files in os.walk(st.path("/usr/lib/python3.11/lib-dynload")):
        for f in files:
            st.elves.add(os.path.join("/usr/lib/python3.11/lib-dynload", f))
    info = probe(GUEST_IMPORTS + KJUMPD_MODULES,
                 Path(package_dir).resolve().parent if package_dir else REPO)
    report["missing_modules"] = {k: v for k, v in info["failed"].items()}
    tops: set[str] = set()
    for f in info["files"].values():
        if f and os.path.realpath(f).startswith(SITE + "/"):
            rel = os.path.relpath(os.path.realpath(f), SITE)
            tops.add(rel.split("/", 1)[0])
    for top in sorted(tops):
        src = f"{SITE}/{top}"
        if os.path.isdir(src):
            st.copy_tree(src)
            for dirpath, _, files in os.walk(src):
                st.elves.update(os.path.join(dirpath, f) for f in files if f.endswith(".so"))
        else:
            st.copy_file(src)
    report["dist_packages"] = sorted(tops)
    for lib in TYPELIBS:
        st.copy_file(f"{TYPELIB_DIR}/{lib}.typelib")
    for lib in DLOPENED:
        st.copy_file(f"{LIBDIR}/{lib}")

    # kjumpd from the work tree
    st.copy_tree(package_dir or str(REPO / "kjumpd"), f"{SITE}/kjumpd", skip={"__pycache__"})
    for tool, mod in (("kjumpd", "kjumpd.daemon.main"), ("kjumpctl", "kjumpd.ctl")):
        st.write(f"/usr/bin/{tool}", f"#!/usr/bin/python3\nimport sys\nfrom {mod} import main\nsys.exit(main())\n",
                 0o755)

    # dbus: the host's system bus configuration, kjumpd's policy, the polkit stand-in
    st.copy_file("/usr/share/dbus-1/system.conf")
    for pol in sorted((REPO / "dbus-policy").glob("*.conf")):
        st.write(f"/usr/share/dbus-1/system.d/{pol.name}", pol.read_bytes())
    st.write("/etc/dbus-1/system.d/kjvm-polkit.conf", POLKIT_POLICY)
    report["dbus_policies"] = sorted(p.name for p in (REPO / "dbus-policy").glob("*.conf"))

    # users, identity
    st.write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
             "messagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n")
    st.write("/etc/group", "root:x:0:\nmessagebus:x:101:\n")
    st.write("/etc/machine-id", uuid.uuid4().hex + "\n")
    os.symlink("/etc/machine-id", st.path("/var/lib/dbus/machine-id"))
    st.write("/etc/hostname", "kjvm\n")

    # guest programs
    st.write("/sbin/init", (GUEST / "init.sh").read_bytes(), 0o755)
    st.write("/usr/lib/kjvm/workload.sh", (GUEST / "workload.sh").read_bytes(), 0o755)
    st.write("/usr/lib/kjvm/polkit-root.py", (GUEST / "polkit-root.py").read_bytes(), 0o755)
    st.write("/etc/kjumpd/kjumpd.conf", KJUMPD_CONF.format(compression=compression, region=region,
                                                           kargs=kernel_args, hdir=HIBERNATE_DIR))

    # the hibernate kernel and its initramfs
    shutil.copyfile(kernel, st._target(st.path(f"{HIBERNATE_DIR}/vmlinuz")))
    shutil.copyfile(initramfs, st._target(st.path(f"{HIBERNATE_DIR}/initrd.img")))

    report["libraries"] = st.copy_libraries()
    return report


def build_c_initramfs(output: Path, stage_dir: Path, *, package_dir: str | None = None):
    """A's/C's early initramfs: kjumpd.host.initramfs.build() with the resume hook
    as the extra program, guest/c-init.sh as /init, and what the hook needs
    from the root file system (the hibernate kernel and its initramfs, the
    machine id, the configuration) copied in, as an initramfs-tools hook would."""
    from kjumpd.host import initramfs

    extra = {"init": str(GUEST / "c-init.sh")}
    for path in (f"{HIBERNATE_DIR}/vmlinuz", f"{HIBERNATE_DIR}/initrd.img", "/etc/machine-id",
                 "/etc/kjumpd/kjumpd.conf", "/usr/bin/kjumpctl"):
        extra[path.lstrip("/")] = str(stage_dir / path.lstrip("/"))
    return initramfs.build(str(output), roles=("restore",),
                           extra_modules=("site", "kjumpd.boot.resume", "kjumpd.ctl", "kjumpd.ctl.boot",
                                          "kjumpd.ctl.image"),
                           extra_files=extra, package_dir=package_dir)


def make_image(stage_dir: Path, image: Path, size: str = "1G") -> None:
    """``mkfs.ext4 -d``: the staged tree becomes the image (sparse)."""
    if image.exists():
        image.unlink()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "kjroot", "-d", str(stage_dir), str(image), size],
                   check=True, capture_output=True, text=True)


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.stat(p).st_size
    return total


if __name__ == "__main__":  # manual use: python3 vm_rootfs.py STAGE KERNEL INITRAMFS IMAGE
    stage, kernel, initrd, image = map(Path, sys.argv[1:5])
    rep = build_stage(stage, kernel=kernel, initramfs=initrd)
    make_image(stage, image)
    print(json.dumps(rep, indent=1))
