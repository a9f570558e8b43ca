"""A's side of one hibernation: pre-flight checks, staging B, the handoff,
freezing, the jump, the restart point and the result (docs/restart-points.md).

The daemon runs :meth:`Hibernator.hibernate` in a worker thread; it blocks
until A runs again. What happened is read from the image superblock after
control comes back, never from kexec's exit status: a superblock carrying
this jump's sequence number says SAVED (B saved and jumped back), RESTORED
(A was resumed from disk after a power cycle) or neither (the save failed,
with B's reason).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .. import image, kexec, seal
from ..errors import FormatError, ImageError, KjumpError, MachineError, RefusedError
from ..format import RESTART_POINTS, RESULT_OK, Compression, Handoff, State, Superblock
from ..kexec import KernelParameters, LoadSpec
from ..machine import Machine, MachineLostError
from ..memmap import DEFAULT_LOW, PAGE_SIZE, MemoryMap, Range, choose_region, save_map
from ..target import ImageTarget

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
TARGET_ID_MAX = 64      # the handoff's and superblock's target id field

# The image target must hold what the next image is expected to need, not
# every page of RAM stored raw (docs/restart-points.md, "How large the image
# target must be"): the memory map at the last image's ratio (its chunk
# stream over the memory it saved) times RATIO_MARGIN plus RATIO_SLACK of the
# memory, or FIRST_IMAGE_RATIO before any image was saved. A guess that is
# too low costs a clean failed save (B finds the target full, A carries on).
FIRST_IMAGE_RATIO = 0.5
RATIO_MARGIN = 1.25
RATIO_SLACK = 0.02


@dataclass
class HibernateSettings:
    """Where the image goes and which hibernate kernel saves it."""

    image_target: str            # path or stable id (/dev/disk/by-uuid/…), or a file
    image_offset: int = 0
    compression: str = "lz4"
    kernel: str = ""             # hibernate kernel (bzImage)
    initrd: str = ""             # its initramfs
    region_size: int = 256 << 20
    kernel_arguments: str = ""   # extra arguments for B/R
    encryption: str = "auto"     # auto: seal images when the public key exists; on: always; off: never
    public_key: str = seal.PUBLIC_KEY_PATH


class Cancellation:
    """A request to cancel one hibernation, refused once the hibernation is past its point of no return.

    The daemon calls :meth:`request` (from the main loop); the worker thread
    calls :meth:`commit` just before it freezes and jumps. Whichever comes
    first wins, under one lock: a cancel that ``request`` accepted is always
    honoured, one it refused never was.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._committed = False

    def request(self) -> bool:
        """Ask to cancel; False when it is too late (the jump is under way or over)."""
        with self._lock:
            if not self._committed:
                self._requested = True
            return self._requested

    def is_set(self) -> bool:
        """True once a cancel was accepted (``threading.Event``'s name, so an Event works too)."""
        return self._requested

    def commit(self) -> bool:
        """Pass the point of no return; False when a cancel came first."""
        with self._lock:
            if not self._requested:
                self._committed = True
            return self._committed


class JumpParticipant(Protocol):
    """Something that must act around the jump (the udev device tracker)."""

    def problems(self, *, force: bool) -> list[str]: ...
    def before_jump(self) -> None: ...
    def after_jump(self) -> dict[str, object]: ...   # merged into the result details


@dataclass
class HibernateResult:
    """The outcome of one :meth:`Hibernator.hibernate` call."""

    restart_point: str
    success: bool
    result: str
    reason: str
    resumed_from_disk: bool
    image_bytes: int
    memory_bytes: int
    durations: dict[str, float] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The result with D-Bus style (dashed) keys, as ``LastResult`` shows it."""
        return {
            "restart-point": self.restart_point, "success": self.success, "result": self.result,
            "reason": self.reason, "resumed-from-disk": self.resumed_from_disk,
            "image-bytes": self.image_bytes, "memory-bytes": self.memory_bytes,
            "durations": dict(self.durations), "details": dict(self.details),
        }


# Restart points after which A runs again before the machine sleeps (it enters
# S3 or S4 itself): its user space is stopped (the cgroup freezer) and its
# filesystems are frozen (FIFREEZE) across the jump so nothing written in that
# window makes the disks newer than the image. For
# the others a sync is enough: inside the jump the kernel freezes every task
# and suspends the disks, as swsusp does, and A runs again only after the
# image was discarded (resume) or restored (shutdown, reboot). Freezing them
# anyway breaks the jump: a task writing to a frozen filesystem waits in an
# uninterruptible state that the task freezer cannot stop (seen in QEMU).
FREEZE_FILESYSTEMS_FOR = ("suspend", "platform")

# Values of HibernateResult.result (LastResult["result"] on the bus); not the superblock's result codes.
OUTCOME_SAVED = "saved"                  # restart point resume: image written, then discarded
OUTCOME_WOKE = "woke-from-suspend"       # suspend: back from S3, image discarded
OUTCOME_RESUMED = "resumed-from-disk"    # A came back through R after a power cycle
OUTCOME_CANCELLED = "cancelled"
OUTCOME_FAILED = "failed"


@dataclass(frozen=True)
class _Plan:
    """Everything one jump needs, computed from the settings and the machine."""

    ram: list[Range]
    region: Range
    low: Range
    memmap: MemoryMap
    target_id: str
    spec: LoadSpec


class Hibernator:
    """Hibernates A on ``machine`` with ``settings``; see the module documentation."""

    def __init__(self, machine: Machine, settings: HibernateSettings,
                 participants: Sequence[JumpParticipant] = ()) -> None:
        self.machine = machine
        self.settings = settings
        self.participants = tuple(participants)
        self._staged: LoadSpec | None = None
        self._lock = threading.Lock()
        self._wake_after: float | None = None    # this hibernation's suspend-then-hibernate delay
        self._last_ratio: float | None = None    # the last saved image's chunk stream over its memory

    # --- planning ---------------------------------------------------------

    def _plan(self) -> _Plan:
        """The layout, memory map and B's load spec now; KjumpError saying what is wrong."""
        settings = self.settings
        try:
            Compression.parse(settings.compression)
        except FormatError as exc:
            raise RefusedError(str(exc)) from exc
        if settings.region_size <= 0:
            raise RefusedError("the B region size must be positive")
        ram = self.machine.system_ram()
        region = choose_region(ram, settings.region_size)
        low = Range(DEFAULT_LOW[0], DEFAULT_LOW[0] + DEFAULT_LOW[1])
        target_id = self.machine.stable_target_id(settings.image_target)
        if len(target_id.encode()) > TARGET_ID_MAX:
            raise RefusedError(f"the image target's stable name {target_id} is longer than the "
                               f"{TARGET_ID_MAX} bytes the image format records")
        command_line = kexec.kernel_command_line(KernelParameters(
            ram=ram, region=region, role=kexec.ROLE_SAVE, target=target_id,
            offset=settings.image_offset, extra=settings.kernel_arguments, low=low))
        spec = LoadSpec(settings.kernel, settings.initrd, command_line, region, preserve_context=True)
        return _Plan(ram, region, low, save_map(ram, region, low), target_id, spec)

    def region(self) -> tuple[int, int]:
        """(base, size) of the B region; (0, 0) while it cannot be placed."""
        try:
            ram = self.machine.system_ram()
            region = choose_region(ram, self.settings.region_size)
        except (KjumpError, ValueError):
            return (0, 0)
        return (region.start, region.size)

    def _open_target(self, *, writable: bool) -> ImageTarget:
        if not self.settings.image_target:
            raise ImageError("no image target is configured: set [Image] Target= in kjumpd.conf to a partition "
                             "or file made kjumpd's with `kjumpctl target init`")
        return self.machine.open_target(self.settings.image_target, offset=self.settings.image_offset,
                                        writable=writable)

    def image_capacity(self) -> int:
        """Bytes the image target can hold; 0 while it is missing."""
        try:
            with self._open_target(writable=False) as target:
                return target.capacity
        except KjumpError:
            return 0

    def estimated_image_size(self) -> int:
        """The size the next image is expected to need (what the target must hold); 0 when unknown."""
        try:
            memmap = self._plan().memmap
            with self._open_target(writable=False) as target:
                return image.expected_capacity(memmap, self._expected_ratio(target))
        except (KjumpError, ValueError):
            return 0

    def _expected_ratio(self, target: ImageTarget) -> float:
        """The share of the memory's size the next image is expected to take, margin included.

        The last image's ratio comes from the target's superblock while it
        still describes a completed save (a resumed or discarded image keeps
        its counts), else from the last one this daemon saw.
        """
        try:
            last = image.read_superblock(target)
        except FormatError:
            last = None
        if last is not None and last.result == RESULT_OK and last.stream_bytes and last.pages_total:
            self._last_ratio = last.stream_bytes / (last.pages_total * PAGE_SIZE)
        if self._last_ratio is None:
            return FIRST_IMAGE_RATIO
        return min(1.0, self._last_ratio * RATIO_MARGIN + RATIO_SLACK)

    def recipient(self) -> bytes:
        """The public key images are sealed to (docs/encryption.md), b"" for plain images.

        KjumpError when encryption is on but the key is missing, or a key
        file exists but is not valid (never silently plain then).
        """
        mode = self.settings.encryption
        if mode == "off" or (mode == "auto" and not os.path.exists(self.settings.public_key)):
            return b""
        return seal.load_public_key(self.settings.public_key)

    def problems(self, *, force: bool = False) -> list[str]:
        """Why hibernation is not possible now; [] when it is."""
        problems: list[str] = list(self.machine.kernel_problems())
        try:
            self.recipient()
        except KjumpError as exc:
            problems.append(f"images are to be encrypted, but {exc}")
        problems.extend(self.machine.secret_memory_problems())
        try:
            with self._open_target(writable=True) as target:
                capacity = target.capacity
                ratio = self._expected_ratio(target)
        except KjumpError as exc:
            problems.append(str(exc))
        else:
            try:
                plan = self._plan()
                kexec.check_files(plan.spec)
                need = image.expected_capacity(plan.memmap, ratio)
                if capacity < need:
                    problems.append(
                        f"image target {self.settings.image_target} is too small: it holds {capacity} bytes, "
                        f"an image of {plan.memmap.total_bytes >> 20} MiB of memory is expected to need "
                        f"{need} bytes ({ratio:.0%} of the memory)")
            except (KjumpError, ValueError) as exc:
                problems.append(str(exc))
        for participant in self.participants:
            problems.extend(participant.problems(force=force))
        return problems

    def thaw_left_frozen(self) -> list[str]:
        """At daemon start: thaw the file systems a daemon that died mid-hibernation left frozen."""
        return self.machine.thaw_left_frozen()

    def fallback_problems(self) -> list[str]:
        """Why the kernel's own hibernation could not stand in for kjumpd here; [] when it looks usable."""
        return self.machine.swsusp_problems()

    def discard_stale_image(self) -> str:
        """At daemon start: discard an image no boot may resume any more; returns the reason ("": none).

        A SAVED image that a running A finds was not resumed by this boot (a
        boot whose initramfs lacks kjumpd's hook, a dracut boot, a hook that
        could not run), and this boot has been writing to the disks since: a
        later boot that resumed it would write old memory over them. No
        hibernation is under way when the daemon starts, so an image of this
        very boot is just as stale (a daemon that died after B saved). A
        RESUMING or RESTORING image is finished off too (its reason says why).
        """
        try:
            with self._open_target(writable=True) as target:
                superblock = image.read_superblock(target)
                if superblock.state not in (*image.RESUMABLE, State.RESTORING):
                    return ""
                running = self.machine.identity().boot_id
                whose = ("this boot" if superblock.identity.boot_id == running
                         else f"boot {superblock.identity.boot_id.hex()}")
                reason = (f"found {superblock.state.name} by kjumpd at start of boot {running.hex()} "
                          f"(saved by {whose}), which did not resume it")
                image.discard(target, reason)
        except KjumpError as exc:
            log.error("cannot check the image target for a stale image: %s", exc)
            return ""
        log.warning("image discarded: %s", reason)
        return reason

    # --- staging ----------------------------------------------------------

    def is_staged(self) -> bool:
        """True when B is loaded with the spec the current settings and layout give."""
        if self._staged is None:
            return False
        try:
            return self.machine.kexec_loaded() and self._staged == self._plan().spec
        except (KjumpError, ValueError):
            return False

    def stage(self) -> None:
        """(Re)load B; KjumpError with the reason when it cannot be loaded."""
        with self._lock:
            self._stage(self._plan())

    def _stage(self, plan: _Plan) -> float:
        started = time.monotonic()
        self._staged = None
        if self.machine.kexec_loaded():
            self.machine.kexec_unload()
        self.machine.kexec_load(plan.spec)
        self._staged = plan.spec
        log.info("hibernate kernel staged in %s", plan.region)
        return time.monotonic() - started

    # --- hibernation ------------------------------------------------------

    def hibernate(self, restart_point: str, *, force: bool = False, progress: Progress | None = None,
                  cancel: Cancellation | threading.Event | None = None,
                  wake_after: float | None = None) -> HibernateResult:
        """Hibernate with ``restart_point``; blocks until A runs again.

        RefusedError (nothing touched) when it cannot be done now; otherwise
        a HibernateResult, also for a failed save (A carries on). ``cancel``
        is looked at before each step up to the point of no return (just
        before freezing); a :class:`Cancellation` then refuses later requests.
        ``wake_after`` (seconds, restart point ``suspend`` only) makes it
        suspend-then-hibernate: an alarm ends the suspend after that long, and
        A then powers off, leaving the saved image to be resumed.
        """
        if restart_point not in RESTART_POINTS:
            raise RefusedError(f"unknown restart point {restart_point!r}; expected one of {', '.join(RESTART_POINTS)}")
        if wake_after is not None and (restart_point != "suspend" or wake_after <= 0):
            raise RefusedError("a wake alarm needs restart point suspend and a positive delay")
        if not self._lock.acquire(blocking=False):
            raise RefusedError("a hibernation or staging is already in progress")
        self._wake_after = wake_after
        try:
            return self._hibernate(restart_point, force, progress or (lambda phase, fraction: None), cancel)
        finally:
            self._lock.release()

    def _hibernate(self, restart_point: str, force: bool, progress: Progress,
                   cancel: Cancellation | threading.Event | None) -> HibernateResult:
        started = time.monotonic()
        durations: dict[str, float] = {}
        progress("checking", 0.0)
        problems = self.problems(force=force)
        if problems:
            raise RefusedError("; ".join(problems))
        plan = self._plan()

        def outcome(success: bool, result: str, reason: str = "", **extra: object) -> HibernateResult:
            durations["total"] = time.monotonic() - started
            return HibernateResult(restart_point, success, result, reason, bool(extra.pop("resumed", False)),
                                   int(extra.pop("image_bytes", 0)), plan.memmap.total_bytes, durations,
                                   dict(extra.pop("details", {})))

        def cancelled() -> bool:
            return cancel is not None and cancel.is_set()

        if cancelled():
            return outcome(False, OUTCOME_CANCELLED, "cancelled before the jump")
        if not (self._staged == plan.spec and self.machine.kexec_loaded()):
            progress("staging", 0.1)
            try:
                durations["stage"] = self._stage(plan)
            except KjumpError as exc:
                raise RefusedError(f"cannot stage the hibernate kernel: {exc}") from exc
        if cancelled():
            return outcome(False, OUTCOME_CANCELLED, "cancelled before the jump")

        progress("handoff", 0.3)
        sequence = secrets.randbits(63) | 1
        try:
            identity = self.machine.identity()
        except KjumpError as exc:
            raise RefusedError(f"cannot identify this machine: {exc}") from exc
        handoff = Handoff(identity, restart_point, Compression.parse(self.settings.compression),
                          plan.region.start, plan.region.size, plan.low.start, plan.low.size, plan.memmap,
                          sequence, time.time_ns(), plan.target_id, self.recipient())
        with self._open_target(writable=True) as target:
            try:
                # A blank superblock first (sequence 0): only B writes this
                # jump's sequence, so an earlier result, or a jump that never
                # happened, can never pass for this jump's.
                image.write_superblock(target, Superblock(reason="hibernation starting"))
                image.write_handoff(target, handoff)
            except KjumpError as exc:
                return outcome(False, OUTCOME_FAILED, f"writing the handoff failed: {exc}")
            if cancelled() or (isinstance(cancel, Cancellation) and not cancel.commit()):
                return outcome(False, OUTCOME_CANCELLED, "cancelled before the jump")
            return self._jump(target, restart_point, sequence, progress, outcome, durations)

    def _jump(self, target: ImageTarget, restart_point: str, sequence: int, progress: Progress,
              outcome: Callable[..., HibernateResult], durations: dict[str, float]) -> HibernateResult:
        """Freeze, jump, dispatch the restart point, thaw; the part nothing may interrupt."""
        progress("freezing", 0.5)
        units: list[str] = []
        try:
            if restart_point in FREEZE_FILESYSTEMS_FOR:
                # user space first: a process blocked writing to a frozen file
                # system is one the kernel's task freezer cannot stop
                units = self.machine.freeze_user_space()
                frozen = self.machine.freeze_filesystems()
            else:
                self.machine.sync_filesystems()
                frozen = []
        except MachineError as exc:
            self.machine.thaw_user_space(units)
            return outcome(False, OUTCOME_FAILED, str(exc))
        details: dict[str, object] = {}
        ready: list[JumpParticipant] = []
        failure = ""
        for participant in self.participants:
            try:
                participant.before_jump()
            except Exception as exc:  # a participant's failure must not leave A frozen
                failure = f"preparing for the jump failed: {exc}"
                break
            ready.append(participant)
        resumed = False
        result = ""
        superblock: Superblock | None = None
        lost = False    # the simulated machine booted without A: nothing of A is left to thaw
        try:
            if not failure:
                progress("jump", 0.6)
                jumped = time.monotonic()
                said = ""
                try:
                    said = self.machine.kexec_execute()
                except MachineLostError:
                    lost = True
                    raise
                except MachineError as exc:
                    failure = str(exc)
                durations["away"] = time.monotonic() - jumped
                if not failure:
                    superblock, resumed, failure, result = self._after_jump(target, sequence, said)
        finally:  # whatever happened after the freeze, nothing stays frozen or unbound
            if not lost:
                thaw_problems = self.machine.thaw_filesystems(frozen) + self.machine.thaw_user_space(units)
                if thaw_problems:
                    details["thaw-problems"] = thaw_problems
                for participant in reversed(ready):
                    try:
                        details.update(participant.after_jump())
                    except Exception as exc:  # report, but every participant gets its call
                        details.setdefault("after-jump-problems", []).append(str(exc))  # type: ignore[union-attr]
        progress("done", 1.0)
        if superblock is not None:
            details["encrypted"] = bool(superblock.seal)       # as B wrote it (docs/encryption.md)
            durations["save"] = superblock.save_duration_ns / 1e9
            if superblock.restore_duration_ns:
                durations["restore"] = superblock.restore_duration_ns / 1e9
        if resumed:
            self._staged = None     # the pages holding B are garbage after a resume from disk
            try:
                durations["stage"] = self._stage(self._plan())
            except KjumpError as exc:
                details["restage-error"] = str(exc)
                log.error("staging again after the resume failed: %s", exc)
        image_bytes = superblock.image_bytes if superblock is not None else 0
        if failure:
            log.error("hibernation (%s) failed: %s", restart_point, failure)
            return outcome(False, OUTCOME_FAILED, failure, image_bytes=image_bytes, details=details)
        return outcome(True, result, "", resumed=resumed, image_bytes=image_bytes, details=details)

    def _read(self, target: ImageTarget) -> Superblock:
        try:
            return image.read_superblock(target)
        except FormatError as exc:
            return Superblock(reason=f"the superblock is unreadable after the jump: {exc}")

    def _after_jump(self, target: ImageTarget, sequence: int, said: str) -> tuple[Superblock, bool, str, str]:
        """Read what happened and carry out the restart point.

        Returns (superblock, resumed from disk, failure reason or "", result).
        """
        superblock = self._read(target)
        if superblock.sequence != sequence:
            if superblock.state == State.DISCARDED and superblock.reason:
                why = f": {superblock.reason}"
            elif said:
                why = f"; kexec -e said: {said} (the kernel may have failed to freeze a task: see its log)"
            else:
                why = ""
            return superblock, False, f"the hibernate kernel did not record this jump (did it run?){why}", ""
        if superblock.state == State.RESTORED:
            return superblock, True, "", OUTCOME_RESUMED
        if superblock.state == State.DISCARDED and superblock.result == RESULT_OK:
            # B saved, then made the image unusable before A ran again: A
            # carries on (resume), or B could not power off or reboot.
            if superblock.restart_point == "resume":
                return superblock, False, "", OUTCOME_SAVED
            return superblock, False, superblock.reason, ""
        if superblock.state != State.SAVED:
            reason = superblock.reason or f"the save did not complete (image state {superblock.state.name})"
            if superblock.state == State.SAVING:
                image.discard(target, reason)
            return superblock, False, f"saving the image failed: {reason}", ""
        point = superblock.restart_point
        log.info("image saved (%d pages); restart point %s", superblock.pages_total, point)
        if point in ("resume", "shutdown", "reboot"):
            # B discards before it returns; a SAVED image here means it could
            # not. A has been running (and writing) since the jump back: the
            # image is stale, and discarding it is the first thing to do.
            image.discard(target, "A carried on (restart point resume)" if point == "resume"
                          else f"A runs again after {point}: the hibernate kernel returned instead")
            if point == "resume":
                return superblock, False, "", OUTCOME_SAVED
            return superblock, False, (f"the hibernate kernel did not {point} and could not discard the image; "
                                       "A discarded it"), ""
        if point == "suspend":
            try:
                by_alarm = self.machine.suspend_to_ram(self._wake_after)
            except MachineError as exc:
                image.discard(target, f"suspend failed: {exc}")
                return superblock, False, str(exc), ""
            after = self._read(target)
            if after.state == State.RESTORED and after.sequence == sequence:
                return after, True, "", OUTCOME_RESUMED   # the power went while asleep
            if not by_alarm:
                image.discard(target, "woke from suspend to RAM")
                return superblock, False, "", OUTCOME_WOKE
            # suspend-then-hibernate: the delay ran out asleep. The image has
            # been on disk since before the sleep and A's file systems are
            # still frozen: powering off now is the hibernation.
            log.info("suspend-then-hibernate: %s s asleep, powering off (the image is on disk)", self._wake_after)
            try:
                self.machine.power_off()
            except MachineError as exc:
                image.discard(target, f"power off after the suspend failed: {exc}")
                return superblock, False, f"power off after the suspend failed: {exc}", ""
            return self._after_power(target, sequence, "suspend-then-hibernate")
        try:
            self.machine.hibernate_platform()
        except MachineError as exc:
            log.warning("%s; powering off instead (the image is on disk)", exc)
            try:
                self.machine.power_off()
            except MachineError as exc2:
                image.discard(target, f"power off failed: {exc2}")
                return superblock, False, f"{exc}; power off failed too: {exc2}", ""
        return self._after_power(target, sequence, point)

    def _after_power(self, target: ImageTarget, sequence: int, what: str) -> tuple[Superblock, bool, str, str]:
        """A runs again after it switched the machine off (``what``): resumed from the image, or not."""
        # A real machine only gets here through kexec_execute() after the
        # resume; the simulated one returns from the power call instead.
        after = self._read(target)
        if after.state == State.RESTORED and after.sequence == sequence:
            return after, True, "", OUTCOME_RESUMED
        if after.state == State.SAVED:
            image.discard(target, f"A runs again after {what} without a resume")
        return after, False, f"A runs again after {what} but the image was not restored (state {after.state.name})", ""
