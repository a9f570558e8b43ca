"""The real path in QEMU: hibernate through a kexec jump, power off, resume from disk.

Run with ``make vm-test`` (``pytest -m vm tests/vm``). The tests run in file
order and share one VM (two disks kept across QEMU processes); a step whose
predecessor failed is skipped and says which step it needed. Every wait is
bounded. The ladder of steps with their times is printed at the end and
written to ``tests/vm/logs/<run>/ladder.txt`` beside the serial logs.

Steps (issue 6):
  1 A boots, kjumpd ready            6 the VM starts again, same disks
  2 B staged (kjumpctl prepare)      7 C's resume hook finds the image, loads R
  3 hibernate: A jumps to B          8 R restores A's memory
  4 B saves A's memory               9 R jumps into A (hibernate --wait returns)
  5 the VM powers off               10 the workload carries on, kjumpd reports it
 11 a second full cycle (2-10)      12 restart point "resume": A->B->A, no power cycle
 13 a corrupted image: C refuses it, the machine boots normally
 13b the refused image, repaired, is not resumed by the next boot (it was discarded)
 13c noresume: a normal boot that discards the image; the next boot does not resume it
 14 clean shutdown: fsck clean, the workload's file intact on disk
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import vm_rootfs
from vm_qemu import Agent, Boot, VMConfig, VMError

from kjumpd.target import ImageTarget

pytestmark = pytest.mark.vm

SMP = int(os.environ.get("KJUMPD_VM_SMP", "2"))
MEM = os.environ.get("KJUMPD_VM_MEM", "1G")
COMPRESSION = os.environ.get("KJUMPD_VM_COMPRESSION", "lz4")
# Diagnosis only: where the workload appends its file (default: the root fs).
# KJUMPD_VM_WORKDIR=/run/work keeps every writer off A's root file system.
WORKDIR = os.environ.get("KJUMPD_VM_WORKDIR", "/var/lib/work")
# Diagnosis only: run the VM with another copy of the kjumpd package (a fix
# being tried) instead of the work tree's.
PACKAGE = os.environ.get("KJUMPD_VM_PACKAGE")
# Where C's resume check runs: "initramfs" (default; before / is mounted at
# all, as a real initramfs hook does) or "rootfs" (A's /sbin/init, with /
# mounted read-only by the kernel: only safe while A freezes its file systems).
CSTAGE = os.environ.get("KJUMPD_VM_CSTAGE", "initramfs")
IMAGE_DISK_SIZE = 1536 << 20
ROOT_DISK_SIZE = "1G"

# Fatal for any step. (A "Call Trace:" alone is not: B prints the known, harmless
# vmcore_init WARNING on every boot: A never crashed, so its crash notes are empty.)
PANIC = r"Kernel panic - not syncing|BUG: |general protection fault|Oops: |Freezing user space processes failed"
# what the guest prints (tests/vm/guest/init.sh, kjumpd.host.initramfs, kjumpd.machine)
AGENT_READY = r"KJVM\[[\d.]+\] agent: ready"
RESUME_CHECK = r"KJVM\[[\d.]+\] resume-check: start"
B_INIT = r"kjump-init: role save"
R_INIT = r"kjump-init: role restore"
LINUX_BANNER = r"Linux version \d"


@dataclass
class Run:
    """State shared by the steps: the disks, the current QEMU process, the workload."""

    config: VMConfig
    boots: int = 0
    boot: Boot | None = None
    failed: dict = field(default_factory=dict)   # step key -> reason
    done: set = field(default_factory=set)
    workload: tuple[str, int] | None = None       # (token, counter) last seen
    pending: tuple[str, int] | None = None        # hibernate command still running (id, pos)
    tokens: list = field(default_factory=list)
    flipped: int | None = None                    # where step 13 corrupted the image
    a_ready: bool = False                         # the current QEMU runs A, idle, agent answering

    @property
    def agent(self) -> Agent:
        return Agent(self.boot)

    def start(self, label: str, append: str = "") -> Boot:
        self.a_ready = False
        if self.boot is not None:
            self.boot.close()
        self.boots += 1
        cfg = self.config
        if append:
            cfg = VMConfig(**{**cfg.__dict__, "append": f"{cfg.append} {append}"})
        self.boot = Boot(cfg, f"boot{self.boots}-{label}")
        return self.boot

    def need(self, *keys: str) -> None:
        for key in keys:
            if key in self.failed:
                pytest.skip(f"needs step {key}, which failed: {self.failed[key]}")
            if key not in self.done:
                pytest.skip(f"needs step {key}, which did not run")


@pytest.fixture(scope="module")
def run(vm_kernel, vm_workdir, vm_logdir, ladder):
    """Build B's initramfs and A's root file system, make the disks."""
    from kjumpd.host import initramfs

    with ladder.step("0 build: B's initramfs, A's root fs, disks") as rung:
        try:
            res = initramfs.build(str(vm_workdir / "initramfs.img"), package_dir=PACKAGE)
        except Exception as exc:  # a missing tool or module: say which, without a traceback
            pytest.fail(f"B/R initramfs cannot be built: {exc}", pytrace=False)
        rung.note = f"initramfs {res.size / 2**20:.1f} MiB ({res.uncompressed_size / 2**20:.1f} MiB unpacked)"
        stage = vm_workdir / "stage"
        report = vm_rootfs.build_stage(stage, kernel=vm_kernel, initramfs=vm_workdir / "initramfs.img",
                                       compression=COMPRESSION, package_dir=PACKAGE)
        missing = report["missing_modules"]
        (vm_logdir / "rootfs.json").write_text(json.dumps(report, indent=1))
        if any(m.startswith("kjumpd.") for m in missing):
            pytest.fail(f"kjumpd modules the guest needs do not import: {missing}", pytrace=False)
        c_initrd = None
        if CSTAGE == "initramfs":
            c_initrd = vm_workdir / "c-initramfs.img"
            cres = vm_rootfs.build_c_initramfs(c_initrd, stage, package_dir=PACKAGE)
            rung.note += f", C's initramfs {cres.size / 2**20:.1f} MiB"
        root = vm_workdir / "root.img"
        vm_rootfs.make_image(stage, root, ROOT_DISK_SIZE)
        image = vm_workdir / "image.img"
        with open(image, "wb") as f:
            f.truncate(IMAGE_DISK_SIZE)
        with ImageTarget.open_unclaimed(str(image)) as target:
            target.initialise()         # kjumpctl target init: the guest's kjumpd accepts only its own target
        rung.note += f", root fs {vm_rootfs.tree_size(stage) / 2**20:.0f} MiB staged"
    cfg = VMConfig(kernel=vm_kernel, root_disk=root, image_disk=image, logdir=vm_logdir, memory=MEM, smp=SMP,
                   # no_timer_check: under TCG on a loaded host the IO-APIC timer check can
                   # fail ("IO-APIC + timer doesn't work!" panic, seen once)
                   append=f"kjump.resume=/dev/vdb kjvm.workdir={WORKDIR} kjvm.cstage={CSTAGE} no_timer_check",
                   initrd=c_initrd)
    r = Run(cfg)
    yield r
    if r.boot is not None:
        r.boot.close()


def step(run: Run, ladder, key: str, title: str, *needs: str):
    """Ladder rung + dependency bookkeeping for one step."""
    try:
        run.need(*needs)
    except pytest.skip.Exception as exc:
        ladder.skip(f"{key} {title}", str(exc))
        raise

    class _Ctx:
        def __enter__(self):
            self.cm = ladder.step(f"{key} {title}")
            self.rung = self.cm.__enter__()
            return self.rung

        def __exit__(self, et, ev, tb):
            if et is None:
                run.done.add(key)
            elif not issubclass(et, pytest.skip.Exception):
                run.a_ready = False     # the VM is in an unknown state: later steps boot afresh
                detail = str(ev).splitlines()[0] if str(ev) else et.__name__
                run.failed[key] = detail[:200]
                # the console and kjumpd's log say why; keep the tail in the failure text
                if run.boot is not None:
                    tail = "\n".join(run.boot.text.splitlines()[-25:])
                    if isinstance(ev, AssertionError) and tail:
                        ev.args = (f"{ev}\n--- last console lines ({run.boot.log_path}):\n{tail}",)
            return self.cm.__exit__(et, ev, tb)

    return _Ctx()


# --- helpers ---------------------------------------------------------------------------------

def workload(run: Run) -> tuple[str, int]:
    _, out = run.agent.run("cat /run/work.state", 30)
    m = re.search(r"^([0-9a-f]{16}) (\d+)$", out, re.M)
    assert m, f"workload state unreadable: {out!r}"
    return m.group(1), int(m.group(2))


def status(run: Run) -> dict:
    rc, out = run.agent.run("kjumpctl status --json", 120, check=False)
    assert rc == 0, f"kjumpctl status failed ({rc}): {out}"
    start = out.find("{")
    return json.loads(out[start:])


def superblock(run: Run):
    from kjumpd.format import SUPERBLOCK_SIZE, Superblock

    with open(run.config.image_disk, "rb") as f:
        return Superblock.unpack(f.read(SUPERBLOCK_SIZE))


def fsck(image: Path) -> tuple[int, str]:
    proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def boot_a(run: Run, label: str, rung, append: str = "") -> None:
    boot = run.start(label, append)
    boot.wait_for(AGENT_READY, 300, what="A's init: agent ready", fail=PANIC)
    run.agent.handshake(60)
    deadline = time.monotonic() + 240
    while True:
        rc, out = run.agent.run("kjumpctl status --json >/dev/null 2>&1", 60, check=False)
        if rc == 0:
            break
        assert time.monotonic() < deadline, f"kjumpd did not answer on the bus within 240 s (last status {rc})"
        time.sleep(3)
    st = status(run)
    run.workload = workload(run)
    run.tokens.append(run.workload[0])
    run.a_ready = True
    rung.note = f"state {st.get('State')}, problems: {'; '.join(st.get('Problems', [])) or 'none'}"


def save_and_power_off(run: Run):
    """A hibernates with restart point shutdown: B saves the image and powers off; returns its SAVED superblock."""
    run.agent.run("kjumpctl prepare", 600)
    run.a_ready = False
    ident, pos = run.agent.start("kjumpctl hibernate --wait --restart-point=shutdown")
    run.boot.wait_for(r"kjump: image saved: .*", 1200, start=pos, what="B: image saved",
                      fail=r"kjump: saving the image failed.*|" + Agent.MARK.format(id=ident) + "|" + PANIC)
    assert run.boot.wait_exit(180) == 0
    sb = superblock(run)
    assert sb.state.name == "SAVED"
    return sb


def ensure_a(run: Run, rung) -> None:
    """A running, idle A for a step that does not continue the previous one:
    after a failure, power the VM off, initialise the image target afresh (so
    C does not resume a stale image) and boot A afresh."""
    if run.a_ready and run.boot is not None and run.boot.alive():
        return
    if run.boot is not None:
        run.boot.close()
    with open(run.config.image_disk, "r+b") as f:
        f.write(bytes(8 << 20))
    with ImageTarget.open_unclaimed(str(run.config.image_disk)) as target:
        target.initialise()         # blank, but kjumpd's: kjumpd accepts only an initialised target
    boot_a(run, "fresh", rung)
    rung.note = "fresh boot of A"

def hibernate_to_b(run: Run, rung, restart_point: str) -> None:
    before = workload(run)
    run.workload = before
    run.a_ready = False
    ident, pos = run.agent.start(f"kjumpctl hibernate --wait --restart-point={restart_point}")
    run.pending = (ident, pos)
    marker = Agent.MARK.format(id=re.escape(ident))
    try:
        run.boot.wait_for(B_INIT, 300, start=pos, what="B's init", fail=f"{marker}|{PANIC}")
    except VMError:
        time.sleep(2)     # the kernel prints the stuck task's line right after
        text = run.boot.text[pos:]
        why = re.search(r"Freezing user space processes failed.*|^kjumpctl: .*|^hibernation: .*", text, re.M)
        if why:
            rung.note = why.group(0)[:110].rstrip(":")
        # which task the kernel's freezer could not freeze, and where it sleeps
        task = re.search(r"task:(\S+)\s+state:(\S)", text)
        if task:
            where = "on a frozen file system (percpu_rwsem_wait)" if "percpu_rwsem_wait" in text else ""
            rung.note += f"; {task.group(1)} stuck in state {task.group(2)} {where}".rstrip()
        raise
    banner = re.search(LINUX_BANNER, run.boot.text[pos:])
    rung.note = f"workload {before[1]} before the jump" + ("" if banner else "; no B banner seen")


def b_saves(run: Run, rung) -> None:
    ident, pos = run.pending
    m = run.boot.wait_for(r"kjump: image saved: .*|kjump: saving the image failed: .*", 900, start=pos,
                          what="B: image saved", fail=PANIC)
    assert "failed" not in m.group(0), m.group(0)
    rung.note = m.group(0).replace("kjump: ", "")


def power_off(run: Run, rung) -> None:
    rc = run.boot.wait_exit(180)
    assert rc == 0, f"QEMU exit status {rc}"
    assert re.search(r"reboot: Power down", run.boot.text), "no 'reboot: Power down' on the console"
    sb = superblock(run)
    assert sb.state.name == "SAVED", f"image superblock state {sb.state.name} after the power-off"
    code, out = fsck(run.config.root_disk)
    rung.note = (f"image {sb.image_bytes >> 20} MiB, {sb.pages_total} pages ({sb.pages_zero} zero), "
                 f"save {sb.save_duration_ns / 1e9:.1f} s; root fs at hibernation: e2fsck -fn "
                 + ("clean" if code == 0 else f"status {code}"))
    if code:
        (run.config.logdir / f"fsck-after-hibernation-{run.boots}.txt").write_text(out)


def resume_hook(run: Run, rung) -> None:
    boot = run.boot
    boot.wait_for(RESUME_CHECK, 300, what="C: resume-check starts", fail=PANIC)
    m = boot.wait_for(r"kjump: resuming the hibernated system.*", 900, what="C: image found, loading R",
                      fail=r"kjump: not resuming: .*|kjump: cannot start the restore kernel.*|" + AGENT_READY
                      + "|" + PANIC)
    c_text = boot.text[:m.start()]
    # C must not have written to A's root fs: a journal replay would (read-only mount or not)
    assert not re.search(r"EXT4-fs \(vda\): recovery complete|EXT4-fs \(vda\): INFO: recovery required",
                         c_text), "C replayed the journal of A's root fs: A's frozen state was not clean on disk"
    boot.wait_for(R_INIT, 300, start=m.end(), what="R's init", fail=PANIC + "|" + AGENT_READY)
    rung.note = "image verified in C, R started"


def r_restores(run: Run, rung) -> None:
    m = run.boot.wait_for(r"kjump: memory restored; jumping .*", 900, what="R: memory restored",
                          fail=r"kjump: resume failed: .*|" + PANIC)
    rung.note = m.group(0).replace("kjump: ", "")


def back_in_a(run: Run, rung) -> None:
    ident, pos = run.pending
    rc, out = run.agent.wait(ident, pos, 300, boot=run.boot, fail=AGENT_READY + "|" + PANIC)
    run.pending = None
    rung.note = (out.splitlines() or [""])[-1][:160]
    assert rc == 0, f"kjumpctl hibernate --wait exited {rc}: {out}"


def workload_continues(run: Run, rung, expect: str) -> None:
    token0, n0 = run.workload
    token1, n1 = workload(run)
    assert token1 == token0, f"the workload's token changed: {token0} -> {token1} (A was not resumed)"
    assert n1 >= n0, f"the counter went back: {n0} -> {n1}"
    time.sleep(3)
    token2, n2 = workload(run)
    assert n2 > n1, f"the workload does not run any more (counter stuck at {n1})"
    # the file: every line of this token, counting 1, 2, 3... without a gap
    _, out = run.agent.run(
        f"awk -v t={token0} '$1==t{{ if ($2!=n+1) {{print \"GAP after\", n, \"at\", $2; exit 1}} n=$2 }} "
        "END{print \"lines\", n}' $(cat /run/work.file)", 60)
    assert out.startswith("lines") and int(out.split()[1]) >= n1, f"workload file: {out}"
    st = status(run)
    last = st.get("LastResult", {})
    assert last.get("success") is True, f"kjumpd's LastResult: {last}"
    text = json.dumps(last)
    assert expect in text, f"kjumpd's LastResult does not say {expect!r}: {last}"
    _, online = run.agent.run("cat /sys/devices/system/cpu/online", 30)
    run.workload = (token2, n2)
    run.a_ready = True
    rung.note = f"token same, counter {n0} -> {n2}, cpus {online.strip()}, LastResult {last.get('result')}"
    if SMP > 1:
        assert online.strip() == f"0-{SMP - 1}", f"CPUs online after the resume: {online}"


def full_cycle(run: Run, ladder, prefix: str, first_needs: tuple[str, ...]) -> None:
    with step(run, ladder, f"{prefix}.2", "B staged (kjumpctl prepare)", *first_needs) as rung:
        run.agent.run("kjumpctl prepare", 600)
        st = status(run)
        assert st.get("Staged") is True, f"not staged after prepare: {st.get('Problems')}"
        base, size = st.get("Region", (0, 0))
        rung.note = f"B region {size >> 20} MiB at {base:#x}"
    with step(run, ladder, f"{prefix}.3", "hibernate: A jumps to B", f"{prefix}.2") as rung:
        hibernate_to_b(run, rung, "shutdown")
    with step(run, ladder, f"{prefix}.4", "B saves A's memory", f"{prefix}.3") as rung:
        b_saves(run, rung)
    with step(run, ladder, f"{prefix}.5", "the VM powers off", f"{prefix}.4") as rung:
        power_off(run, rung)
    with step(run, ladder, f"{prefix}.6", "the VM starts again (same disks)", f"{prefix}.5") as rung:
        run.start(f"resume{prefix}")
        run.boot.wait_for(LINUX_BANNER, 120, what="kernel C starts")
    with step(run, ladder, f"{prefix}.7", "C's resume hook finds the image, loads R", f"{prefix}.6") as rung:
        resume_hook(run, rung)
    with step(run, ladder, f"{prefix}.8", "R restores A's memory", f"{prefix}.7") as rung:
        r_restores(run, rung)
    with step(run, ladder, f"{prefix}.9", "R jumps into A: hibernate --wait returns", f"{prefix}.8") as rung:
        back_in_a(run, rung)
    with step(run, ladder, f"{prefix}.10", "the workload carries on; kjumpd reports it",
              f"{prefix}.9") as rung:
        workload_continues(run, rung, "shutdown")


# --- the steps -------------------------------------------------------------------------------

def test_01_a_boots_kjumpd_ready(run, ladder):
    with step(run, ladder, "1", "A boots, kjumpd ready") as rung:
        boot_a(run, "a", rung)
        assert re.search(r"kjump: (no hibernation image|not resuming)", run.boot.text) or \
            "resume-check: exit status 0" in run.boot.text, "C's resume check did not report the blank image"


def test_02_to_10_hibernate_power_cycle_resume(run, ladder):
    full_cycle(run, ladder, "c1", ("1",))
    run.need("c1.10")


def test_11_second_full_cycle(run, ladder):
    full_cycle(run, ladder, "c2", ("c1.10",))
    run.need("c2.10")


def test_12_restart_point_resume(run, ladder):
    with step(run, ladder, "12", "restart point resume: A->B->A, no power cycle", "1") as rung:
        ensure_a(run, rung)
        run.agent.run("kjumpctl prepare", 600)
        run.a_ready = False
        before = workload(run)
        run.workload = before
        ident, pos = run.agent.start("kjumpctl hibernate --wait --restart-point=resume")
        run.boot.wait_for(B_INIT, 300, start=pos, what="B's init", fail=Agent.MARK.format(id=ident) + "|" + PANIC)
        run.boot.wait_for(r"kjump: image saved: .*", 900, start=pos, what="B: image saved",
                          fail=r"kjump: saving the image failed.*|" + PANIC)
        rc, out = run.agent.wait(ident, pos, 300, fail=PANIC)
        assert rc == 0, f"kjumpctl hibernate --wait exited {rc}: {out}"
        assert run.boot.alive(), "QEMU exited: the resume restart point powered off"
        workload_continues(run, rung, "resume")
        sb = superblock(run)
        assert sb.state.name != "SAVED", ("the image is still SAVED after A carried on: the next boot would "
                                          "resume stale memory over newer disks")
        rung.note = (rung.note + "; " if rung.note else "") + f"image state {sb.state.name}"


def test_13_corrupted_image_refused(run, ladder):
    from kjumpd.format import DATA_OFFSET

    with step(run, ladder, "13", "corrupted image: C refuses it, normal boot", "1") as rung:
        ensure_a(run, rung)
        sb = save_and_power_off(run)
        where = DATA_OFFSET + sb.stream_bytes // 2
        flip_bytes(run, where)
        run.flipped = where
        old_token = run.workload[0] if run.workload else None
        boot = run.start("corrupt")
        m = boot.wait_for(r"kjump: not resuming: .*|kjump: resume failed: .*", 900, what="C or R refuses",
                          fail=r"kjump: memory restored|" + PANIC)
        refusal = m.group(0)
        if "resume failed" in refusal:
            # R refused (after C let it through): it reboots; with -no-reboot QEMU exits
            boot.wait_exit(180)
            boot = run.start("after-refusal")
        boot.wait_for(AGENT_READY, 300, what="A's init after the refusal", fail=PANIC)
        run.agent.handshake(60)
        assert "kjump: memory restored" not in boot.text
        run.workload = None
        boot_ok_deadline = time.monotonic() + 240
        while run.agent.run("kjumpctl status --json >/dev/null 2>&1", 60, check=False)[0] != 0:
            assert time.monotonic() < boot_ok_deadline, "kjumpd not ready after the refusal"
            time.sleep(3)
        token, n = workload(run)
        assert token != old_token, "the workload kept its token: the corrupted image was resumed"
        run.workload = (token, n)
        run.tokens.append(token)
        run.a_ready = True
        refusal = re.split(r"\[\s*\d+\.\d+\]", refusal)[0].replace("kjump: ", "")
        rung.note = (rung.note + "; " if rung.note else "") + f"{refusal[:120]} (bytes flipped at {where:#x})"


def flip_bytes(run: Run, where: int) -> None:
    """Invert 64 bytes of the image disk (a second call undoes it)."""
    with open(run.config.image_disk, "r+b") as f:
        f.seek(where)
        data = f.read(64)
        f.seek(where)
        f.write(bytes(b ^ 0xFF for b in data))


def power_off_a(run: Run) -> None:
    """A clean power-off of a running A: the workload stopped, / read-only, then poweroff -f."""
    run.a_ready = False
    run.agent.start("kill $(cat /run/work.pid); sync; mount -o remount,ro /; sync; poweroff -f")
    assert run.boot.wait_exit(180) == 0


def not_resumed_again(run: Run, label: str, rung) -> None:
    """Power A off, boot again without any refusal reason: the discarded image is not resumed."""
    power_off_a(run)
    boot_a(run, label, rung)
    assert "kjump: resuming the hibernated system" not in run.boot.text, "a discarded image was resumed"
    assert re.search(r"kjump: not resuming: /dev/vdb holds a discarded image", run.boot.text), \
        "C did not report the discarded image"


def test_13b_refused_image_not_resumed_on_the_next_boot(run, ladder):
    """One image, one chance (issue 10 §1): the refused image was made unusable, so even
    with the corruption undone the next boot does not resume it."""
    with step(run, ladder, "13b", "refused image, repaired: the next boot does not resume it", "13") as rung:
        sb = superblock(run)
        assert sb.state.name == "DISCARDED", f"the refused image is {sb.state.name}, not DISCARDED"
        flip_bytes(run, run.flipped)
        not_resumed_again(run, "after-repair", rung)
        rung.note = f"DISCARDED ({sb.reason[:90]}); repaired and booted again: not resumed"


def test_13c_noresume_discards(run, ladder):
    with step(run, ladder, "13c", "noresume: normal boot, image discarded, not resumed later", "1") as rung:
        ensure_a(run, rung)
        save_and_power_off(run)
        old_token = run.workload[0] if run.workload else None
        boot_a(run, "noresume", rung, append="noresume")
        assert "kjump: resuming the hibernated system" not in run.boot.text
        assert run.workload[0] != old_token, "the workload kept its token: the image was resumed"
        assert re.search(r"kjump: not resuming: noresume on the kernel command line; the image on /dev/vdb "
                         r"is discarded", run.boot.text), "C did not say it discarded the image"
        sb = superblock(run)
        assert sb.state.name == "DISCARDED" and "noresume" in sb.reason, f"{sb.state.name}: {sb.reason}"
        not_resumed_again(run, "after-noresume", rung)
        rung.note = f"noresume: {sb.state.name} ({sb.reason}); next boot: not resumed"


def test_14_clean_shutdown_fsck_and_file(run, ladder):
    with step(run, ladder, "14", "clean shutdown: fsck clean, workload file intact", "1") as rung:
        ensure_a(run, rung)
        run.agent.start("kill $(cat /run/work.pid); sync; mount -o remount,ro /; sync; poweroff -f")
        run.boot.wait_exit(180)
        code, out = fsck(run.config.root_disk)
        assert code == 0, f"e2fsck -fn: status {code}\n{out}"
        if not WORKDIR.startswith("/var/"):
            rung.note = f"e2fsck clean; workload file in {WORKDIR} (not on disk): not checked"
            return
        log = subprocess.run(["debugfs", "-R", f"cat {WORKDIR}/log", str(run.config.root_disk)],
                             capture_output=True, text=True, timeout=120).stdout
        last: dict[str, int] = {}
        for line in log.splitlines():
            token, n, _ = line.split()
            assert int(n) == last.get(token, 0) + 1, f"workload file: {token} jumps from {last.get(token)} to {n}"
            last[token] = int(n)
        assert list(last) == run.tokens, f"tokens in the file {list(last)} != boots {run.tokens}"
        rung.note = "e2fsck clean; " + ", ".join(f"{t[:6]}…:1-{n}" for t, n in last.items())
