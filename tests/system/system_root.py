"""The system test's guest: an installed Debian 12 with systemd as PID 1.

Made in two stages, both in a chroot on the host (inside the TCG guest
``update-initramfs`` alone takes five minutes):

1. :func:`base_tarball`: ``debootstrap --variant=minbase`` of the host's suite
   from the host's Debian archive, plus :data:`GUEST_PACKAGES` (systemd,
   udevd, logind, dbus, polkitd, initramfs-tools, kjumpd's run-time
   dependencies, Debian's stock kernel). Cached in ``CACHE/system-base-KEY.tar.zst``,
   keyed by suite, archive and package list: made once (a few minutes).
2. :func:`install_guest`: unpacks that, installs A's kernel from its Debian
   package and kjumpd from its ``.deb`` with ``apt-get install ./…deb`` (apt
   resolves the dependencies; they are already in the base, so nothing is
   downloaded), configures kjumpd the documented way, builds B/R's initramfs
   with ``kjumpctl initramfs build`` and A's with ``update-initramfs``, and
   adds the test's users, workloads and console agent (the files under
   ``guest/``). Per run; about a minute.

:func:`make_disks` turns the tree into the three virtio disks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from test_packaging import apt_mirror, clean_env

HERE = Path(__file__).resolve().parent
GUEST_FILES = HERE / "guest"
CACHE = Path(os.environ.get("KJUMPD_TEST_CACHE", "/var/cache/kjumpd-test"))

# What an installed desktop-less Debian with systemd has, plus what the test
# drives it with. kjumpd's own dependencies come from its .deb (apt resolves
# them); they are listed here only so that the per-run install needs no
# download.
GUEST_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "libpam-systemd", "polkitd", "pkexec",
    "initramfs-tools", "zstd", "e2fsprogs", "kmod", "procps", "util-linux", "login", "passwd",
    "kexec-tools", "busybox-static", "cpio",
    "python3", "python3-gi", "gir1.2-glib-2.0", "python3-pydbus", "python3-systemd", "python3-pyudev",
    "python3-lz4", "python3-zstandard", "python3-xxhash", "python3-cryptography",
    # the stock kernel (no CONFIG_KEXEC_JUMP) for the scenario that boots it
    "linux-image-amd64",
)

USER = "alice"           # autologin on tty1: an active logind session on seat0
OTHER_USER = "bob"       # no session at all
ROOT_LABEL, HOME_LABEL = "kjroot", "kjhome"
IMAGE_PARTLABEL = "kjump-image"
HIBERNATE_INITRD = "/boot/kjumpd-initrd.img"
STEP_TIMEOUT = 30 * 60

Log = Callable[[str], None]


class RootError(AssertionError):
    """A step of making the guest failed (an assertion for pytest)."""


def run(cmd: list[str], *, log: Log | None = None, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a host command; its output goes to ``log``; RootError on failure."""
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env or clean_env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if log:
        log(f"$ {' '.join(cmd)}  [{time.monotonic() - started:.1f} s, status {proc.returncode}]\n{proc.stdout}")
    if check and proc.returncode != 0:
        raise RootError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


# The device nodes a chroot gets on its own tmpfs /dev: (name, major, minor).
# The host's /dev is never bind-mounted in: a tree removed while a mount was
# left behind (a killed run) would take the host's device nodes with it.
CHROOT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                  ("tty", 5, 0))


@contextmanager
def chroot_mounts(root: Path):
    """A fresh /proc and a tmpfs /dev with the basic device nodes in the root
    while the block runs (apt, update-initramfs and kjumpctl's initramfs
    builder need them)."""
    mounted: list[Path] = []
    try:
        for fstype, target in (("proc", "proc"), ("tmpfs", "dev")):
            where = root / target
            where.mkdir(exist_ok=True)
            run(["mount", "-t", fstype, fstype, str(where)])
            mounted.append(where)
        (root / "dev/shm").mkdir(mode=0o1777)       # POSIX semaphores (compileall's process pool)
        (root / "dev/shm").chmod(0o1777)
        for name, major, minor in CHROOT_DEVICES:
            os.mknod(root / "dev" / name, 0o20666, os.makedev(major, minor))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            (root / "dev" / name).symlink_to(target)
        yield
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], check=False)


def remove_tree(path: Path) -> None:
    """Remove a work directory, never crossing into a mount (a killed run may
    have left its chroot's /proc or /dev mounted): those are unmounted first,
    and ``rm --one-file-system`` stops at any that remain."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(real + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", real], check=False)


def in_root(root: Path, *cmd: str, log: Log | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the guest tree (chroot), non-interactively."""
    env = clean_env() | {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    return run(["chroot", str(root), *cmd], log=log, check=check, env=env)


def base_tarball(log: Log | None = None) -> Path:
    """The cached minimal Debian root with :data:`GUEST_PACKAGES` (made on first use)."""
    mirror, suite = apt_mirror()
    key = hashlib.sha256(f"{suite} {mirror} {' '.join(sorted(GUEST_PACKAGES))}".encode()).hexdigest()[:16]
    tarball = CACHE / f"system-base-{suite}-{key}.tar.zst"
    if tarball.exists():
        return tarball
    try:
        urllib.request.urlopen(f"{mirror.rstrip('/')}/dists/{suite}/Release", timeout=20).close()
    except (urllib.error.URLError, OSError) as exc:
        raise RootError(f"Debian archive {mirror} unreachable ({exc}) and no cached {tarball}") from exc
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"system-base-{suite}-{key}.tmp"
    remove_tree(work)
    run(["debootstrap", "--variant=minbase", suite, str(work), mirror], log=log)
    shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")
    # kexec-tools must not take over reboots (it would load the stock kernel on
    # every reboot); the initramfs is made later, once.
    selections = "kexec-tools kexec-tools/load_kexec boolean false\n"
    (work / "tmp/selections").write_text(selections)
    in_root(work, "debconf-set-selections", "/tmp/selections", log=log)
    with chroot_mounts(work):
        in_root(work, "apt-get", "install", "-y", "-q", "--no-install-recommends", *GUEST_PACKAGES, log=log)
    in_root(work, "apt-get", "clean", log=log)
    (work / "etc/resolv.conf").unlink()
    run(["tar", "--zstd", "--numeric-owner", "-C", str(work), "-cf", f"{tarball}.part", "."], log=log)
    os.replace(f"{tarball}.part", tarball)
    remove_tree(work)
    for old in CACHE.glob(f"system-base-{suite}-*.tar.zst"):
        if old != tarball:
            old.unlink()
    return tarball


@dataclass
class Guest:
    """The installed guest tree and what the boots need from it."""

    root: Path                 # the tree (its /home is empty: a mount point)
    home: Path                 # the tree of the /home file system
    kernel_release: str        # A's kernel (from the kernel package)
    stock_release: str         # Debian's stock kernel (no CONFIG_KEXEC_JUMP)

    def boot_files(self, release: str) -> tuple[Path, Path]:
        """(vmlinuz, initrd.img) of an installed kernel, as the firmware loads them."""
        return self.root / f"boot/vmlinuz-{release}", self.root / f"boot/initrd.img-{release}"


def _install_file(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def kjumpd_settings(kernel_release: str) -> str:
    """The local kjumpd configuration, as docs/config.md tells a user to write it."""
    return (
        "# kjumpd system test: the image partition and the hibernate kernel\n"
        "[Image]\n"
        f"Target=/dev/disk/by-partlabel/{IMAGE_PARTLABEL}\n"
        "[HibernateKernel]\n"
        f"Kernel=/boot/vmlinuz-{kernel_release}\n"
        f"Initrd={HIBERNATE_INITRD}\n"
        "KernelArguments=console=ttyS0\n"
    )


def install_guest(work: Path, kernel_deb: Path, kjumpd_deb: Path, log: Log | None = None) -> Guest:
    """Unpack the base root into ``work/root`` and install and configure everything (see the module doc)."""
    root, home = work / "root", work / "home"
    for path in (root, home):
        remove_tree(path)
        path.mkdir(parents=True)
    run(["tar", "--zstd", "--numeric-owner", "-C", str(root), "-xf", str(base_tarball(log))], log=log)
    stock = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(stock) != 1:
        raise RootError(f"expected one stock kernel in the base root, found {stock}")

    # The machine: host name, file systems, a persistent journal, a small
    # initramfs for the stock kernel (its virtio drivers are modules).
    (root / "etc/hostname").write_text("kjs\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 kjs\n")
    (root / "etc/fstab").write_text(
        f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n"
        f"LABEL={HOME_LABEL} /home ext4 defaults 0 2\n")
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    (root / "etc/initramfs-tools/conf.d/kjs-modules.conf").write_text("MODULES=list\n")
    with open(root / "etc/initramfs-tools/modules", "a") as modules:
        modules.write("virtio_pci\nvirtio_blk\next4\n")

    for name in (kernel_deb, kjumpd_deb):
        shutil.copy(name, root / "tmp" / name.name)
    with chroot_mounts(root):
        # A's kernel and kjumpd, each from its package; apt resolves kjumpd's dependencies.
        in_root(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                f"/tmp/{kernel_deb.name}", log=log)
        release = in_root(root, "dpkg-deb", "--field", f"/tmp/{kernel_deb.name}", "Package").stdout.strip()
        release = release.removeprefix("linux-image-")
        conf = root / "etc/kjumpd/kjumpd.conf.d/50-local.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(kjumpd_settings(release))
        in_root(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                f"/tmp/{kjumpd_deb.name}", log=log)
        # B/R's initramfs, then A's (and the stock kernel's) with kjumpd's hook.
        in_root(root, "kjumpctl", "initramfs", "build", HIBERNATE_INITRD, log=log)
        in_root(root, "update-initramfs", "-u", "-k", "all", log=log)

        # The users: alice logged in on tty1 with a workload in her session, bob never logged in.
        for user in (USER, OTHER_USER):
            in_root(root, "useradd", "--create-home", "--shell", "/bin/bash", user, log=log)
        # The test's own pieces: the agent on ttyS0, the system workload, autologin.
        for name in ("agent", "workload", "session-agent"):
            _install_file(GUEST_FILES / name, root / "usr/local/lib/kjs" / name, 0o755)
        for unit in ("kjs-agent.service", "kjs-workload.service"):
            _install_file(GUEST_FILES / unit, root / "etc/systemd/system" / unit)
        _install_file(GUEST_FILES / "autologin.conf", root / "etc/systemd/system/getty@tty1.service.d/autologin.conf")
        _install_file(GUEST_FILES / "bash_profile", root / f"home/{USER}/.bash_profile")
        in_root(root, "chown", f"{USER}:{USER}", f"/home/{USER}/.bash_profile")
        in_root(root, "systemctl", "enable", "kjs-agent.service", "kjs-workload.service", "getty@tty1.service",
                log=log)
        # ttyS0 is the agent's, not a login prompt's
        in_root(root, "systemctl", "mask", "serial-getty@ttyS0.service", log=log)
    for name in (kernel_deb, kjumpd_deb):
        (root / "tmp" / name.name).unlink()
    # /home becomes its own file system
    for entry in (root / "home").iterdir():
        shutil.move(str(entry), str(home / entry.name))
    return Guest(root, home, release, stock[0])


def make_disks(guest: Guest, work: Path, log: Log | None = None) -> dict[str, Path]:
    """The guest's disks: vda root (ext4), vdb the image disk (GPT, one
    partition named :data:`IMAGE_PARTLABEL`, zeroed: no image), vdc /home (ext4)."""
    disks = {"root": work / "root.img", "image": work / "image.img", "home": work / "home.img"}
    for path, size in ((disks["root"], "4G"), (disks["image"], "2G"), (disks["home"], "256M")):
        path.unlink(missing_ok=True)
        run(["truncate", "-s", size, str(path)])
    run(["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-d", str(guest.root), str(disks["root"])], log=log)
    run(["mkfs.ext4", "-q", "-L", HOME_LABEL, "-d", str(guest.home), str(disks["home"])], log=log)
    proc = subprocess.run(["sfdisk", "-q", "--label", "gpt", str(disks["image"])], input=f"name={IMAGE_PARTLABEL}\n",
                          text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RootError(f"sfdisk of the image disk failed: {proc.stderr}")
    return disks
