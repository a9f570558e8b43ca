"""Fixtures of the system test (``make system-test``; every test is ``pytest.mark.system``).

* ``system_logdir``: serial logs, journals and the ladder of one run,
  ``tests/system/logs/<date-time>/`` (gitignored; ``latest`` points at it);
* ``ladder``: the rungs of the run with their times (the VM test's Ladder);
* ``kernel_deb``: A's kernel as a Debian package, from the VM test's kernel
  build tree (``tests/vm/build-kernel.sh --deb``: one build serves both tests);
* ``kjumpd_deb``: ``make deb`` into a private directory;
* ``guest_tree``: the installed Debian tree (system_root.install_guest) and
  ``machine``: its disks and the QEMU command line (system_vm.SystemVM).

Environment: KJUMPD_SYS_MEM (default 1G), KJUMPD_SYS_SMP (2),
KJUMPD_SYS_KEEP=1 keeps the disks under /var/tmp/kjumpd-sys-*,
KJUMPD_SYS_LOGS (default tests/system/logs), KJUMPD_SYS_DEB=PATH (diagnosis:
install that kjumpd .deb instead of building one from the work tree).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VM_TESTS = REPO / "tests" / "vm"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(VM_TESTS))
sys.path.insert(0, str(REPO / "tests"))

KERNEL_BUILD_TIMEOUT = 90 * 60


def _vm_conftest():
    """The VM test's conftest as a module of its own (for its Ladder)."""
    spec = importlib.util.spec_from_file_location("kjumpd_vm_conftest", VM_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_VM = _vm_conftest()
Ladder = _VM.Ladder
_LADDER = Ladder()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _VM.show_ladder(terminalreporter, _LADDER, "kjumpd system test: the ladder", "serial logs and journals")


@pytest.fixture(scope="session")
def system_logdir() -> Path:
    return _VM.new_run_logdir(Path(os.environ.get("KJUMPD_SYS_LOGS", HERE / "logs")))


@pytest.fixture(scope="session")
def ladder(system_logdir: Path):
    _LADDER.logdir = system_logdir
    return _LADDER


@pytest.fixture(scope="session")
def system_workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kjumpd-sys-", dir="/var/tmp"))
    yield path
    if os.environ.get("KJUMPD_SYS_KEEP") == "1":
        print(f"\nkjumpd system test: disks kept in {path}")
    else:
        from system_root import remove_tree
        remove_tree(path)


def _require_tools() -> None:
    missing = [t for t in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "sfdisk", "zstd", "dpkg-buildpackage")
               if shutil.which(t) is None]
    from system_vm import OVMF_CODE
    if not OVMF_CODE.exists():
        missing.append(str(OVMF_CODE))
    if missing:
        pytest.fail(f"the system test needs {', '.join(missing)}: install packaging/deps/system.txt", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the system test builds root file systems and must run as root", pytrace=False)


@pytest.fixture(scope="session")
def kernel_deb(system_logdir: Path, ladder) -> Path:
    """A's kernel package (CONFIG_KEXEC_JUMP), made from the VM test's kernel build tree."""
    _require_tools()
    log = system_logdir / "kernel-build.log"
    with ladder.step("0.1 kernel package (bindeb-pkg)") as rung, open(log, "w") as out:
        try:
            proc = subprocess.run([str(VM_TESTS / "build-kernel.sh"), "--deb"], stdout=subprocess.PIPE, stderr=out,
                                  text=True, timeout=KERNEL_BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kernel build took more than {KERNEL_BUILD_TIMEOUT // 60} min; see {log}", pytrace=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            pytest.fail(f"kernel package build failed (status {proc.returncode}); {log}:\n{tail}", pytrace=False)
        rung.note = Path(lines[-1]).name
        return Path(lines[-1])


@pytest.fixture(scope="session")
def kjumpd_deb(system_workdir: Path, system_logdir: Path, ladder) -> Path:
    """kjumpd's own package, built from the work tree with ``make deb``."""
    if os.environ.get("KJUMPD_SYS_DEB"):
        with ladder.step("0.2 kjumpd package (KJUMPD_SYS_DEB)") as rung:
            deb = Path(os.environ["KJUMPD_SYS_DEB"]).resolve()
            assert deb.is_file(), f"KJUMPD_SYS_DEB={deb} does not exist"
            rung.note = str(deb)
            return deb
    build = system_workdir / "deb"
    with ladder.step("0.2 kjumpd package (make deb)") as rung:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        proc = subprocess.run(["make", "-C", str(REPO), "deb", f"DEB_BUILD_DIR={build}"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20 * 60, check=False)
        (system_logdir / "deb-build.log").write_text(proc.stdout)
        debs = sorted(build.glob("kjumpd_*_all.deb"))
        assert proc.returncode == 0 and len(debs) == 1, f"make deb failed:\n{proc.stdout[-3000:]}"
        rung.note = debs[0].name
        return debs[0]


@pytest.fixture(scope="session")
def guest_tree(system_workdir: Path, system_logdir: Path, kernel_deb: Path, kjumpd_deb: Path, ladder):
    """The installed guest tree (debootstrap base cached; the rest per run)."""
    import system_root

    with open(system_logdir / "guest-build.log", "w") as log_file:
        def log(text: str) -> None:
            log_file.write(text + "\n")
            log_file.flush()

        with ladder.step("0.3 guest base (debootstrap, cached)") as rung:
            rung.note = system_root.base_tarball(log).name
        with ladder.step("0.4 guest install (kernel .deb, kjumpd .deb, initramfs)") as rung:
            result = system_root.install_guest(system_workdir, kernel_deb, kjumpd_deb, log)
            rung.note = f"A={result.kernel_release} stock={result.stock_release}"
    return result


@pytest.fixture(scope="session")
def machine(guest_tree, system_workdir: Path, system_logdir: Path, ladder):
    """The guest's disks and its QEMU machine (fresh disks once per session)."""
    import system_root
    import system_vm

    with ladder.step("0.5 disks (mkfs.ext4 -d, GPT image disk)") as rung:
        disks = system_root.make_disks(guest_tree, system_workdir)
        rung.note = ", ".join(f"{k}={v.name}" for k, v in disks.items())
    vm = system_vm.SystemVM(guest=guest_tree, disks=disks, workdir=system_workdir, logdir=system_logdir,
                            memory=os.environ.get("KJUMPD_SYS_MEM", "1G"),
                            smp=int(os.environ.get("KJUMPD_SYS_SMP", "2")))
    yield vm
    # a clean shutdown first, so that the journal is on the disk
    if vm.boots and vm.boots[-1].alive():
        from vm_qemu import Agent
        try:
            Agent(vm.boots[-1]).start("journalctl --flush; systemctl poweroff")
            vm.boots[-1].wait_exit(180)
        except Exception as exc:           # the guest may be hung: kill it then
            print(f"\nkjumpd system test: the guest did not power off ({exc}); killed")
    vm.close()
    # the guest's whole journal, read off its root disk
    (system_logdir / "journal.txt").write_text(vm.journal(system_logdir / "journal"))
