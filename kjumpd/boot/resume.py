"""The resume hook: runs early in an ordinary boot C (``kjumpctl resume-check``).

It looks for a hibernation image on the configured target, checks that it is
complete, not consumed, whole (superblock, handoff and trailer agree: R checks
each chunk as it writes it) and made on this machine with this RAM layout,
then loads R into the B region the image records and jumps.

One image, one chance (docs/format.md, "States"): the first boot that finds a
SAVED image either resumes from it or makes it unusable before the root file
system can be written. Before R is loaded the image is marked RESUMING,
durably, so that a restore that fails before R can mark the image (an I/O
error, a panic in R, R never starting) ends in a normal boot instead of a
boot loop: a boot that finds a RESUMING image discards it. Every refusal
(another machine, layout or disk, corrupt, ``noresume``/``kjump.noresume``,
``kexec_load`` failing, R not starting) marks the image DISCARDED with the
reason, and the hook exits 0 so the normal boot carries on.

Where the image is: ``--target``/``--offset`` or ``kjump.resume=`` and
``kjump.resume_offset=`` on the kernel command line. The hibernate kernel
and its initramfs: ``--kernel``/``--initrd``, ``kjump.kernel=``/``kjump.initrd=``,
or the defaults below (the initramfs hook copies them there).

Exit codes: 0 the normal boot continues (no image, or why not on the
console); 2 usage error; 3 a SAVED image is on the target and cannot be made
unusable (the target cannot be written): the caller must not boot on
silently (docs/initramfs.md, "When C cannot write the target"). On success
the process does not return.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import image, kexec, seal
from ..errors import FormatError, KjumpError
from ..format import State, Superblock
from ..kexec import KernelParameters, LoadSpec
from ..machine import Machine, machine_from_command_line
from ..memmap import Range
from ..target import ImageTarget
from .common import command_line_text

DEFAULT_KERNEL = "/usr/lib/kjumpd/hibernate/vmlinuz"
DEFAULT_INITRD = "/usr/lib/kjumpd/hibernate/initrd.img"

EXIT_CONTINUE = 0
EXIT_USAGE = 2
EXIT_UNSAFE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hook's options (shared by ``python -m kjumpd.boot.resume`` and ``kjumpctl resume-check``)."""
    parser.add_argument("--cmdline", help="kernel command line to use instead of /proc/cmdline")
    parser.add_argument("--target", help="image target (default: kjump.resume= on the command line)")
    parser.add_argument("--offset", type=int, help="offset of the image on the target in bytes")
    parser.add_argument("--kernel", help=f"hibernate kernel to load as R (default {DEFAULT_KERNEL})")
    parser.add_argument("--initrd", help=f"its initramfs (default {DEFAULT_INITRD})")
    parser.add_argument("--dry-run", action="store_true", help="check the image but do not load or jump")
    parser.add_argument("--secret-key", default=seal.SECRET_KEY_PATH,
                        help=f"passphrase-protected image key (default {seal.SECRET_KEY_PATH}); where it "
                        "exists only encrypted images are resumed")


def restore_spec(machine: Machine, consoles: list[str], target_id: str, offset: int, region: Range,
                 kernel: str, initrd: str) -> LoadSpec:
    """R's load spec: the B region of the image, ``kjump.role=restore``, C's checked console settings.

    Nothing of C's command line reaches R but the ``console=``/``earlyprintk=``
    words :func:`kjumpd.kexec.console_words` rebuilt from plain values; the
    target and offset are the ones this check opened.
    """
    command_line = kexec.kernel_command_line(KernelParameters(
        ram=machine.system_ram(), region=region, role=kexec.ROLE_RESTORE, target=target_id,
        offset=offset, extra=" ".join(consoles)))
    return LoadSpec(kernel, initrd, command_line, region, preserve_context=False)


NORESUME = ("noresume", "kjump.noresume")
# States a boot must not leave behind: a later boot could resume a SAVED
# image, and RESUMING / RESTORING ones are finished off with their reason.
OUTLIVES_NO_BOOT = (State.SAVED, State.RESUMING, State.RESTORING)


def check(machine: Machine, params: dict[str, str], target: ImageTarget, name: str,
          superblock: Superblock) -> tuple[Range, str]:
    """Decide whether this boot resumes a SAVED image: returns (region, target id) or raises
    KjumpError saying why not (this boot's refusal first, then the image's identity and records)."""
    reason = refusal(params, superblock) or superblock.identity.mismatch(machine.identity())
    if reason:
        raise KjumpError(reason)
    found_on = machine.stable_target_id(name)
    if superblock.target_id and superblock.target_id != found_on:
        raise KjumpError(f"the image was written to {superblock.target_id} but found on {found_on}: "
                         "it belongs to another disk")
    image.check_headers(target)   # ImageError: incomplete, consumed, discarded or corrupt
    region = Range(superblock.region_base, superblock.region_base + superblock.region_size)
    return region, superblock.target_id or name


def refusal(params: dict[str, str], superblock: Superblock) -> str:
    """Why this boot must not resume from the image whatever it holds, or ""."""
    skip = next((word for word in NORESUME if word in params), "")
    if skip:
        return f"{skip} on the kernel command line"
    if superblock.state == State.RESUMING:
        return "a boot already tried to resume from this image and the restore did not complete"
    if superblock.state == State.RESTORING:
        return "its restore was interrupted"
    return ""


def _discard(machine: Machine, target: ImageTarget, name: str, offset: int, reason: str) -> int:
    """Make the image unusable with ``reason``; the exit code for the boot."""
    try:
        image.discard(target, reason)
    except KjumpError as exc:
        return _unsafe(machine, name, offset, f"marking it discarded failed: {exc}")
    machine.console(f"not resuming: {reason}; the image on {name} is discarded; normal boot")
    return EXIT_CONTINUE


def _unsafe(machine: Machine, name: str, offset: int, why: str) -> int:
    """Say that a SAVED image outlives this boot; EXIT_UNSAFE."""
    where = f"{name} --offset {offset}" if offset else name
    machine.console(f"DANGER: the hibernation image on {name} cannot be made unusable ({why}). "
                    "A later boot could resume it over file systems this boot changes. Fix the device "
                    f"or run `kjumpctl image discard {where}`, then continue the boot")
    return EXIT_UNSAFE


def _read_only_look(machine: Machine, name: str, offset: int, error: KjumpError) -> int:
    """The target cannot be opened for writing: decide whether the boot may go on."""
    try:
        with machine.open_target(name, offset=offset, writable=False) as target:
            state = image.read_superblock(target).state
    except KjumpError as exc:
        machine.console(f"not resuming: {error}; no image can be read there either ({exc}); normal boot")
        return EXIT_CONTINUE
    if state != State.SAVED:
        machine.console(f"not resuming: {error}; the target holds no saved image ({state.name}); normal boot")
        return EXIT_CONTINUE
    return _unsafe(machine, name, offset, f"it cannot be opened for writing: {error}")


def _dry_run(machine: Machine, params: dict[str, str], name: str, offset: int) -> int:
    """Check as a boot would, touching nothing; say what the boot would do."""
    with machine.open_target(name, offset=offset, writable=False) as target:
        superblock = image.read_superblock(target)
        if superblock.state not in OUTLIVES_NO_BOOT:
            machine.console(f"no resumable image on {name} ({superblock.state.name})")
            return EXIT_CONTINUE
        try:
            region, _ = check(machine, params, target, name, superblock)
        except KjumpError as exc:
            machine.console(f"a boot would discard the image on {name}: {exc}")
            return EXIT_CONTINUE
    machine.console(f"image on {name} is valid; a boot would load R into {region} and resume")
    return EXIT_CONTINUE


def run(options: argparse.Namespace) -> int:
    """Resume from a valid image, or make any image found unusable; the exit code for the boot."""
    try:
        words = kexec.split_command_line(command_line_text(options.cmdline))
        params = {word.name: word.value or "" for word in words}
        machine = machine_from_command_line(params, kernel="C")
    except (KjumpError, OSError) as exc:
        print(f"kjump: resume check failed: {exc}; normal boot", flush=True)
        return EXIT_CONTINUE
    name = options.target or params.get("kjump.resume", "")
    if not name:
        machine.console("no kjump.resume= image target configured; normal boot")
        return EXIT_CONTINUE
    try:
        offset = options.offset if options.offset is not None else int(params.get("kjump.resume_offset", "0"), 0)
    except ValueError:
        machine.console(f"kjump.resume_offset={params['kjump.resume_offset']} is not a number; normal boot")
        return EXIT_CONTINUE
    try:
        if options.dry_run:
            return _dry_run(machine, params, name, offset)
        return _resume(machine, options, words, name, offset)
    except (KjumpError, OSError) as exc:
        machine.console(f"resume check failed: {exc}; normal boot")
        return EXIT_CONTINUE


def _resume(machine: Machine, options: argparse.Namespace, words: list[kexec.Word], name: str, offset: int) -> int:
    """Claim, load R and jump; whatever stops it discards the image. Returns only without a resume."""
    params = {word.name: word.value or "" for word in words}
    try:
        target = machine.open_target(name, offset=offset, writable=True)
    except KjumpError as exc:
        return _read_only_look(machine, name, offset, exc)
    keyed: seal.KeyedInitrd | None = None
    with target:
        try:
            superblock = image.read_superblock(target)
        except FormatError as exc:
            machine.console(f"not resuming: the image superblock is unreadable: {exc}; normal boot")
            return EXIT_CONTINUE
        if superblock.state == State.EMPTY:
            machine.console(f"no hibernation image on {name}; normal boot")
            return EXIT_CONTINUE
        if superblock.state not in OUTLIVES_NO_BOOT:
            detail = f" ({superblock.reason})" if superblock.reason else ""
            machine.console(f"not resuming: {name} {image.state_description(superblock.state)}{detail}; normal boot")
            return EXIT_CONTINUE
        try:
            region, target_id = check(machine, params, target, name, superblock)
            consoles, refused = kexec.console_words(words)
            if refused:
                machine.console(f"not passed on to the restore kernel: {' '.join(refused)} (not a plain value)")
            spec = restore_spec(machine, consoles, target_id, offset, region,
                                options.kernel or params.get("kjump.kernel") or DEFAULT_KERNEL,
                                options.initrd or params.get("kjump.initrd") or DEFAULT_INITRD)
            # An encrypted image: its data key, unsealed with the passphrase and checked against
            # the records, goes to R inside R's initramfs, in memory (docs/encryption.md).
            key = seal.unlock_image_key(superblock.seal, options.secret_key, machine.ask_password,
                                        machine.console)
            if key is not None:
                image.authenticate(target, key)
                keyed = seal.KeyedInitrd(spec.initrd, key)
                key[:] = bytes(len(key))
                spec = dataclasses.replace(spec, initrd=keyed.path)
            # The attempt is recorded before R can run: if R fails before it
            # marks the image, the next boot finds RESUMING and discards it.
            image.set_state(target, State.RESUMING, reason=f"resume attempted by boot {machine.boot_id()}")
            machine.kexec_load(spec)
        except Exception as exc:  # whatever stops the resume, the image must not outlive this boot
            if keyed is not None:
                keyed.close()
            return _discard(machine, target, name, offset, str(exc) or type(exc).__name__)
    machine.console(f"resuming the hibernated system from {name}")
    try:
        machine.kexec_execute()
        reason = "kexec returned: the restore kernel did not start"
    except KjumpError as exc:
        reason = f"cannot start the restore kernel: {exc}"
    if keyed is not None:
        keyed.close()
    try:
        target = machine.open_target(name, offset=offset, writable=True)
    except KjumpError as exc:
        return _unsafe(machine, name, offset, f"{reason}; opening it again failed: {exc}")
    with target:
        return _discard(machine, target, name, offset, reason)


def main(argv: list[str] | None = None) -> int:
    """``python -m kjumpd.boot.resume``."""
    parser = argparse.ArgumentParser(prog="kjumpd.boot.resume", description="Resume a hibernated system (runs in C).")
    add_arguments(parser)
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_CONTINUE
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
