"""The Debian package and the RPM spec (issue 7).

What is checked, against the real tools:

* ``make deb`` builds one binary package from a clean copy of the tree, and
  lintian finds no errors in it;
* the package installs with apt into a minimal Debian root made by
  debootstrap: its files are in place and its units enabled, ``systemd-analyze
  verify`` accepts the installed units and the drop-ins, ``kjumpctl`` runs
  from the installed package with the commands its man page documents, and
  ``mkinitramfs`` builds an initramfs that carries the resume check, whose
  boot script runs ``kjumpctl resume-check`` inside that initramfs;
* purging the package leaves no file behind;
* ``rpmspec -P`` expands packaging/rpm/kjumpd.spec, and its %files list
  matches what the shared install script installs.

The debootstrap root is slow to make (a few minutes), so its tarball is cached
outside the work tree in ``$KJUMPD_TEST_CACHE`` (default
``/var/cache/kjumpd-test``), keyed by suite, mirror and package list. The
tests skip only when a tool or Debian's archive is truly out of reach; then
the reason says which.

The root's tests share one installed root and run in file order: the purge
test comes last because it removes the package.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KJUMPD_TEST_CACHE", "/var/cache/kjumpd-test"))

# Installed in the root on top of packaging/deps/runtime.txt, so that a warm
# run needs no download: the tools the checks run there, and the package's
# dependencies that runtime.txt does not list (polkitd: the daemon authorizes
# every call with polkit; procps: kjumpd.service reloads with /bin/kill).
ROOT_PACKAGES = ("systemd", "dbus", "polkitd", "procps", "initramfs-tools", "zstd", "cpio")

# Files every build of the package must carry (the units and policies are
# written by other parts of the project; their names are fixed by the design).
REQUIRED_FILES = (
    "/usr/bin/kjumpd",
    "/usr/bin/kjumpctl",
    "/usr/lib/python3/dist-packages/kjumpd/__init__.py",
    "/lib/systemd/system/kjumpd.service",
    "/lib/systemd/system/kjumpd-prepare.service",
    "/usr/lib/kjumpd/kjumpd-sleep",
    "/usr/lib/kjumpd/kjumpd-sleep-hooks",
    "/lib/systemd/system/systemd-suspend-then-hibernate.service.d/50-kjumpd.conf",
    "/usr/share/dbus-1/system.d/org.kjump.Hibernate1.conf",
    "/usr/share/dbus-1/system-services/org.kjump.Hibernate1.service",
    "/usr/share/dbus-1/interfaces/org.kjump.Hibernate1.xml",
    "/usr/share/polkit-1/actions/org.kjump.policy",
    "/usr/share/initramfs-tools/hooks/kjumpd",
    "/usr/share/initramfs-tools/scripts/local-premount/kjumpd",
    "/etc/kjumpd/kjumpd.conf",
    "/usr/share/man/man8/kjumpd.8.gz",
    "/usr/share/man/man1/kjumpctl.1.gz",
    "/usr/share/man/man5/kjumpd.conf.5.gz",
)

# No single step (debootstrap included) takes this long unless it hangs.
COMMAND_TIMEOUT = 1200

# A kernel release for the fake modules tree mkinitramfs needs in the root.
FAKE_KERNEL = "0.0.0-kjumpd-test"

# Paths whose content changes with any install/remove (package manager
# bookkeeping, logs, caches): not files the package leaves behind.
BOOKKEEPING = re.compile(
    r"^/(var/lib/(dpkg|apt|systemd/deb-systemd-helper-[^/]*|initramfs-tools)|var/cache|var/log|tmp|run|proc|root)(/|$)"
)


def clean_env() -> dict[str, str]:
    """Environment for the package tools: no LD_PRELOAD (make check runs
    under umockdev-wrapper, whose preload library does not exist inside the
    root), no virtualenv, so Debian's tools see the system Python, and none
    of the outer make's settings (its jobserver is not ours)."""
    dropped = ("LD_PRELOAD", "UMOCKDEV_DIR", "VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["LC_ALL"] = "C.UTF-8"
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


def run(cmd: list[str], *, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with the clean environment; on failure the assertion
    message carries its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=COMMAND_TIMEOUT)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc


def need_tools(*tools: str) -> None:
    """Skip when a build tool is missing (make deb installs them through
    packaging/deps/deb.txt, so this only happens outside make)."""
    missing = [t for t in tools if shutil.which(t, path=clean_env()["PATH"]) is None]
    if missing:
        pytest.skip(f"missing tools {missing}: install packaging/deps/deb.txt (make deb does)")


def package_list(path: Path) -> list[str]:
    """Package names from one of packaging/deps/*.txt ('#' starts a comment)."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        names.extend(line.split("#", 1)[0].split())
    return names


def apt_mirror() -> tuple[str, str]:
    """The Debian archive and suite this machine's apt uses (debootstrap
    must reach the same archive the build dependencies came from)."""
    suite = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            suite = line.split("=", 1)[1].strip('"')
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        if not src.is_file():
            continue
        text = src.read_text()
        # deb822 stanzas (URIs: …) and one-line entries (deb URI suite …)
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return uri, suite
    pytest.skip("no Debian archive found in /etc/apt/sources.list*")


def base_root_tarball() -> Path:
    """The cached tarball of a minimal Debian root with the package's
    run-time dependencies and the tools the checks use; made with
    debootstrap on first use."""
    mirror, suite = apt_mirror()
    include = sorted(set(package_list(REPO / "packaging/deps/runtime.txt")) | set(ROOT_PACKAGES))
    key = hashlib.sha256(f"{suite} {mirror} {' '.join(include)}".encode()).hexdigest()[:16]
    tarball = CACHE / f"root-{suite}-{key}.tar.zst"
    if tarball.exists():
        return tarball
    need_tools("debootstrap", "zstd")
    try:
        urllib.request.urlopen(f"{mirror.rstrip('/')}/dists/{suite}/Release", timeout=20).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"Debian archive {mirror} unreachable ({exc}) and no cached root in {CACHE}")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"root-{suite}-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", suite, str(work), mirror])
    # debootstrap's own resolver ignores virtual packages (python3-zstandard
    # needs python3-cffi-backend-api-*), so the rest is installed with apt.
    shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")
    in_root(work, "apt-get", "install", "-y", "-q", "--no-install-recommends", *include)
    # apt's package lists are kept so that a dependency added later still
    # resolves; the downloaded .debs are not needed.
    in_root(work, "apt-get", "clean")
    run(["tar", "--zstd", "-C", str(work), "-cf", f"{tarball}.part", "."])
    os.replace(f"{tarball}.part", tarball)
    shutil.rmtree(work)
    # roots made for an older package list are of no further use
    for old in CACHE.glob(f"root-{suite}-*.tar.zst"):
        if old != tarball:
            old.unlink()
    return tarball


def in_root(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside the test root."""
    return run(["chroot", str(root), *cmd], check=check)


def tree(root: Path) -> set[str]:
    """Every path in the root except package-manager bookkeeping."""
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" if dirpath == str(root) else "/" + os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if not BOOKKEEPING.match(os.path.join(rel, d))]
        paths.update(p for p in (os.path.join(rel, n) for n in dirnames + filenames) if not BOOKKEEPING.match(p))
    return paths


# --------------------------------------------------------------------------
# build


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the package with ``make deb`` and return the .deb. The build
    directory is private to this test run, so that runs in the same work
    tree (and the developer's own ``make deb``) do not disturb each other."""
    need_tools("make", "dpkg-buildpackage")
    build_dir = tmp_path_factory.mktemp("deb")
    run(["make", "-C", str(REPO), "deb", f"DEB_BUILD_DIR={build_dir}"])
    debs = sorted(build_dir.glob("kjumpd_*_all.deb"))
    assert len(debs) == 1, f"expected one kjumpd_*_all.deb in {build_dir}, found {debs}"
    return debs[0]


def test_changelog_version_matches_pyproject() -> None:
    """The Debian version (native package) is the project's version."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (REPO / "packaging/debian/changelog").read_text().splitlines()[0]
    assert re.match(rf"^kjumpd \({re.escape(version)}\) ", first), first


def test_package_contents(deb: Path) -> None:
    """The package carries every file the system needs, and nothing in
    places Debian forbids."""
    listing = run(["dpkg-deb", "--contents", str(deb)]).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    files |= {line.split()[-3].removeprefix(".") for line in listing.splitlines() if " -> " in line}
    missing = [f for f in REQUIRED_FILES if f not in files]
    assert not missing, f"missing from {deb.name}: {missing}"
    assert any(f.startswith("/lib/systemd/system/systemd-hibernate.service.d/") for f in files)
    assert any(f.startswith("/lib/systemd/system/systemd-logind.service.d/") for f in files)
    assert not [f for f in files if f.startswith(("/usr/local", "/home"))]


def test_package_metadata(deb: Path) -> None:
    """Depends names what the programs use, and the initramfs trigger and
    the unit handling were generated by debhelper."""
    depends = run(["dpkg-deb", "--field", str(deb), "Depends"]).stdout
    for name in package_list(REPO / "packaging/deps/runtime.txt"):
        assert re.search(rf"(^|[ ,|]){re.escape(name)}([ ,:(]|$)", depends), f"{name} not in Depends: {depends}"
    control = deb.parent / "control-check"
    run(["dpkg-deb", "--control", str(deb), str(control)])
    assert "update-initramfs" in (control / "triggers").read_text()
    assert "kjumpd.service" in (control / "postinst").read_text()
    assert "/etc/kjumpd/kjumpd.conf" in (control / "conffiles").read_text().split()


def test_lintian_has_no_errors(deb: Path) -> None:
    """lintian reports no error; the remaining warnings are listed and
    explained in packaging/README.md."""
    need_tools("lintian")
    out = run(["lintian", "--no-cfg", "--tag-display-limit", "0", str(deb)], check=False).stdout
    errors = [line for line in out.splitlines() if line.startswith("E:")]
    assert not errors, out
    readme = (REPO / "packaging/README.md").read_text()
    for tag in {line.split()[2] for line in out.splitlines() if line.startswith("W:")}:
        assert tag in readme, f"lintian warning {tag} is not explained in packaging/README.md:\n{out}"


# --------------------------------------------------------------------------
# install into a debootstrap root


@dataclass(frozen=True)
class DebRoot:
    """A Debian root with the package installed."""

    path: Path
    before: frozenset[str]  # every path (bookkeeping aside) before the install


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebRoot]:
    """A fresh minimal Debian root with the package installed by apt; /proc
    is mounted for the tools that need it."""
    need_tools("chroot", "tar", "zstd", "mount")
    tarball = base_root_tarball()
    rootdir = tmp_path_factory.mktemp("debroot") / "root"
    rootdir.mkdir()
    run(["tar", "--zstd", "-C", str(rootdir), "-xf", str(tarball)])
    run(["mount", "-t", "proc", "proc", str(rootdir / "proc")])
    try:
        shutil.copy("/etc/resolv.conf", rootdir / "etc/resolv.conf")
        # no daemon may start inside the root
        policy = rootdir / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        # mkinitramfs needs a modules tree for the kernel it builds for
        modules = rootdir / "lib/modules" / FAKE_KERNEL
        modules.mkdir(parents=True)
        for name in ("modules.order", "modules.builtin"):
            (modules / name).touch()
        # ... and the kernel's config, to check it can unpack the archive
        (rootdir / f"boot/config-{FAKE_KERNEL}").write_text("CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n")
        in_root(rootdir, "depmod", FAKE_KERNEL)
        before = frozenset(tree(rootdir))
        shutil.copy(deb, rootdir / "tmp" / deb.name)
        in_root(rootdir, "apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}")
        yield DebRoot(rootdir, before)
    finally:
        run(["umount", "--lazy", str(rootdir / "proc")], check=False)
        shutil.rmtree(rootdir, ignore_errors=True)


def test_installed_files_in_place(root: DebRoot) -> None:
    """Every required file exists in the root after apt installed the
    package, the units are enabled, and the default configuration sets
    nothing."""
    missing = [f for f in REQUIRED_FILES if not (root.path / f.lstrip("/")).exists()]
    assert not missing
    assert (root.path / "usr/share/initramfs-tools/hooks/kjumpd").stat().st_mode & 0o111
    assert (root.path / "usr/share/initramfs-tools/scripts/local-premount/kjumpd").stat().st_mode & 0o111
    # enabled by the maintainer scripts (deb-systemd-helper), not started
    # kjumpd-prepare only for the hibernating targets (docs/units.md): a plain suspend never waits for it
    for link in ("multi-user.target.wants/kjumpd.service", "dbus-org.kjump.Hibernate1.service",
                 "hibernate.target.wants/kjumpd-prepare.service", "hybrid-sleep.target.wants/kjumpd-prepare.service",
                 "suspend-then-hibernate.target.wants/kjumpd-prepare.service"):
        assert (root.path / "etc/systemd/system" / link).is_symlink(), f"{link} not enabled"
    assert not (root.path / "etc/systemd/system/sleep.target.wants/kjumpd-prepare.service").exists()
    conf = (root.path / "etc/kjumpd/kjumpd.conf").read_text()
    active = [line for line in conf.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";", "["))]
    assert not active, f"the default kjumpd.conf sets options: {active}"


def test_systemd_analyze_verify_installed_units(root: DebRoot) -> None:
    """systemd-analyze verify (run inside the root, against the installed
    unit files and the commands they name) accepts every kjumpd unit."""
    units = sorted(p.name for p in (root.path / "lib/systemd/system").glob("kjumpd*.service"))
    assert units
    # the sleep services and logind are verified with our drop-ins applied
    dropped_in = sorted(p.name.removesuffix(".d") for p in (root.path / "lib/systemd/system").glob("*.service.d")
                        if any(f.name.endswith(".conf") and "kjump" in f.name for f in p.iterdir()))
    assert {"systemd-hibernate.service", "systemd-hybrid-sleep.service", "systemd-logind.service"} <= set(dropped_in)
    # --man=no: the minimal root has no man pages for systemd's own units;
    # our units' Documentation= links are checked below instead
    out = in_root(root.path, "systemd-analyze", "verify", "--man=no",
                  *[f"/lib/systemd/system/{u}" for u in units + dropped_in], check=False)
    assert out.returncode == 0, out.stdout
    assert not [line for line in out.stdout.splitlines() if "kjump" in line], out.stdout
    for unit in units:
        text = (root.path / "lib/systemd/system" / unit).read_text()
        for link in re.findall(r"^Documentation=(.*)$", text, re.M):
            for uri in link.split():
                if uri.startswith("file:"):
                    assert (root.path / uri.removeprefix("file:").lstrip("/")).is_file(), f"{unit}: {uri} missing"
                elif uri.startswith("man:"):
                    page, section = re.fullmatch(r"man:(.+)\((\w+)\)", uri).groups()
                    assert (root.path / f"usr/share/man/man{section[0]}/{page}.{section}.gz").is_file(), f"{unit}: {uri}"


def man_commands(page: Path) -> set[str]:
    """The kjumpctl commands kjumpctl.1 documents: the first word of each
    .TP entry in its *COMMANDS sections."""
    commands: set[str] = set()
    section = ""
    lines = page.read_text().splitlines()
    for previous, line in zip(lines, lines[1:], strict=False):
        if line.startswith(".SH"):
            section = line
        elif previous == ".TP" and section.endswith("COMMANDS"):
            words = line.split(None, 1)[1].replace("\\-", "-").strip('"').split()
            commands.add(words[0].strip('"'))
    return commands


def test_kjumpctl_runs_from_installed_package(root: DebRoot) -> None:
    """The installed kjumpctl starts with the system Python and the
    Debian-packaged dependencies only, and has exactly the commands its man
    page documents."""
    out = in_root(root.path, "kjumpctl", "--help").stdout
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version in in_root(root.path, "kjumpctl", "--version").stdout
    commands = set(re.findall(r"^    (\S+)", out, re.M))
    assert {"status", "hibernate", "image", "resume-check"} <= commands, out
    assert man_commands(REPO / "packaging/man/kjumpctl.1") == commands, out


def test_initramfs_carries_resume_check(root: DebRoot) -> None:
    """mkinitramfs (with the package's hook) builds an initramfs with the
    boot script, the configured hibernate kernel, initrd and image target,
    and a kjumpctl that runs inside it; nothing while kjumpd is not
    configured."""
    # not configured yet: no resume is possible, so the hook adds nothing
    in_root(root.path, "mkinitramfs", "-o", "/tmp/initrd.img", FAKE_KERNEL)
    listing = in_root(root.path, "lsinitramfs", "/tmp/initrd.img").stdout.split()
    assert "scripts/local-premount/kjumpd" in listing
    assert not [p for p in listing if "kjumpctl" in p or "python3" in p], listing
    boot = root.path / "boot"
    (boot / "kjump-vmlinuz").write_bytes(b"kernel " * 100)
    (boot / "kjump-initrd").write_bytes(b"initrd " * 100)
    dropin = root.path / "etc/kjumpd/kjumpd.conf.d/test.conf"
    dropin.parent.mkdir()
    dropin.write_text("[Image]\nTarget=/dev/disk/by-partlabel/kjump-test\nOffset=1M\n"
                      "[HibernateKernel]\nKernel=/boot/kjump-vmlinuz\nInitrd=/boot/kjump-initrd\n")
    try:
        in_root(root.path, "mkinitramfs", "-o", "/tmp/initrd.img", FAKE_KERNEL)
    finally:
        # the purge test must find only what the package itself made
        shutil.rmtree(dropin.parent)
        for name in ("kjump-vmlinuz", "kjump-initrd"):
            (boot / name).unlink()
    # unpacked with the root's own initramfs-tools, inside the root
    in_root(root.path, "unmkinitramfs", "/tmp/initrd.img", "/tmp/initrd")
    (root.path / "tmp/initrd.img").unlink()
    extracted = root.path / "tmp/initrd"
    main = extracted / "main" if (extracted / "main").is_dir() else extracted
    try:
        assert (main / "scripts/local-premount/kjumpd").stat().st_mode & 0o111
        assert "/scripts/local-premount/kjumpd" in (main / "scripts/local-premount/ORDER").read_text()
        assert (main / "usr/lib/kjumpd/hibernate/vmlinuz").read_bytes() == b"kernel " * 100
        assert (main / "usr/lib/kjumpd/hibernate/initrd.img").read_bytes() == b"initrd " * 100
        conf = (main / "conf/conf.d/kjumpd-target").read_text()
        assert "export KJUMPD_TARGET=/dev/disk/by-partlabel/kjump-test\n" in conf
        assert f"export KJUMPD_OFFSET={1 << 20}\n" in conf
        assert (main / "usr/sbin/kexec").exists()
        # The boot script runs kjumpctl resume-check inside the initramfs
        # (python, the package and its compiled dependencies are all there)
        # with the configured target; that device does not exist here, so
        # the check says why and the boot goes on.
        out = run_boot_script(main, "ro quiet")
        assert out.returncode == 0, out.stdout
        assert "kjumpd: checking for a hibernation image" in out.stdout
        assert "/dev/disk/by-partlabel/kjump-test" in out.stdout, out.stdout
        assert "resume check failed" not in out.stdout, out.stdout
        # kjump.noresume on the command line still runs the check, which
        # discards any image it finds (one image, one chance); none here
        out = run_boot_script(main, "ro kjump.noresume")
        assert out.returncode == 0 and "kjumpd: checking for a hibernation image" in out.stdout, out.stdout
        assert "resume check failed" not in out.stdout, out.stdout
    finally:
        shutil.rmtree(extracted)


def run_boot_script(initramfs: Path, cmdline: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/local-premount/kjumpd in an unpacked initramfs under
    chroot, as its /init would (quiet exported, conf.d sourced), with
    ``cmdline`` as /proc/cmdline."""
    fake = initramfs / "cmdline"
    fake.write_text(cmdline + "\n")
    (initramfs / "proc").mkdir(exist_ok=True)
    run(["mount", "-t", "proc", "proc", str(initramfs / "proc")])
    try:
        run(["mount", "--bind", str(fake), str(initramfs / "proc/cmdline")])
        script = "export quiet=n; for c in /conf/conf.d/*; do . $c; done; exec /scripts/local-premount/kjumpd"
        return run(["chroot", str(initramfs), "/bin/sh", "-c", script], check=False)
    finally:
        run(["umount", "--lazy", "--recursive", str(initramfs / "proc")], check=False)


def test_purge_leaves_nothing_behind(root: DebRoot) -> None:
    """Purging the package removes everything it installed or created
    (conffiles, byte-code, generated files); runs last."""
    owned = [p for p in in_root(root.path, "dpkg", "-L", "kjumpd").stdout.splitlines() if p.startswith("/")]
    # what the daemon leaves at run time: its state directory
    state = root.path / "var/lib/kjumpd"
    state.mkdir(exist_ok=True)
    (state / "image").write_bytes(b"\0" * 4096)
    in_root(root.path, "apt-get", "purge", "-y", "-q", "kjumpd")
    in_root(root.path, "apt-get", "autoremove", "--purge", "-y", "-q")
    left = sorted(tree(root.path) - root.before)
    assert not left, f"left behind after purge: {left}"
    assert not [p for p in owned if (root.path / p.lstrip("/")).is_file()]


# --------------------------------------------------------------------------
# RPM


# What Fedora's systemd-rpm-macros define; Debian's rpm lacks that package.
RPM_DEFINES = {"_unitdir": "/usr/lib/systemd/system", "_udevrulesdir": "/usr/lib/udev/rules.d"}


def rpm_files_section(spec_text: str) -> list[tuple[str, bool]]:
    """The entries of the expanded spec's main %files section as (path,
    is %dir), without directives (%config(...), %attr(...)); %doc and
    %license lines, which name files of the source tree, are left out."""
    paths: list[tuple[str, bool]] = []
    in_files = False
    for line in spec_text.splitlines():
        line = line.strip()
        if line.startswith("%files"):
            in_files = True
            continue
        if in_files and re.match(r"^%(changelog|package|description|post|pre|check|install|build)\b", line):
            break
        if not in_files or not line or line.startswith(("#", "%doc", "%license")):
            continue
        directives = re.match(r"^(%(dir|config|attr|ghost)(\([^)]*\))?\s+)*", line).group(0)
        paths.append((line[len(directives):], "%dir" in directives))
    return paths


def test_rpm_spec_parses_and_lists_what_is_installed(tmp_path: Path) -> None:
    """rpmspec expands the spec; its %files list matches what the shared
    install script puts into a staging root with Fedora's directories,
    file for file (the Python package and entry points come from
    %pyproject_install and are not part of that comparison)."""
    need_tools("rpmspec")
    defines = [arg for name, value in RPM_DEFINES.items() for arg in ("--define", f"{name} {value}")]
    out = run(["rpmspec", "-P", *defines, str(REPO / "packaging/rpm/kjumpd.spec")]).stdout
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(rf"^Version:\s*{re.escape(version)}$", out, re.M)
    assert "%systemd_post kjumpd.service" in out or "systemctl" in out
    stage = tmp_path / "stage"
    run(["packaging/install-data.sh", str(stage), RPM_DEFINES["_unitdir"], RPM_DEFINES["_udevrulesdir"]], cwd=REPO)
    staged = {"/" + str(p.relative_to(stage)) for p in stage.rglob("*") if not p.is_dir()}
    entries = [(p, d) for p, d in rpm_files_section(out) if not p.startswith("/usr/bin/")]
    assert entries and not [p for p, _ in entries if "%" in p], entries
    dirs = [p.rstrip("/") + "/" for p, is_dir in entries if is_dir]
    patterns = [p for p, is_dir in entries if not is_dir]

    def covers(pattern: str, path: str) -> bool:
        return path.startswith(pattern) if pattern.endswith("/") else fnmatch.fnmatch(path, pattern)

    unused = [p for p in patterns + dirs if not any(f.startswith(p) if p in dirs else covers(p, f) for f in staged)]
    assert not unused, f"in %files but not installed: {unused}"
    unlisted = [f for f in staged if not any(covers(p, f) for p in patterns)]
    assert not unlisted, f"installed but not in %files: {unlisted}"
