"""Steps carried out: real mkfs, mkdir, mount and an fstab line, each one logged."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cfncluster_node import commands, files, logs
from cfncluster_node.storage import StorageError
from cfncluster_node.storage.machine import probe
from cfncluster_node.storage.plan import (
    FSTAB_OPTIONS,
    AttachVolume,
    Export,
    Format,
    FstabEntry,
    MakeDir,
    MountArray,
    MountDevice,
    OpenToAll,
    RunCommands,
    Step,
    with_entry,
)

_MKFS_TIMEOUT_S = 600.0  # a large volume
_TIMEOUT_S = 60.0


async def apply(
    steps: list[Step], *, fstab: Path | None = None, exports: Path | None = None
) -> None:
    log = logs.get()
    for step in steps:
        try:
            await _apply(step, fstab, exports)
        except commands.CommandError as exc:
            raise StorageError(f"{_describe(step)} failed: {exc}") from exc
        log.info("storage_step_done", step=type(step).__name__, detail=_describe(step))


async def _apply(step: Step, fstab: Path | None, exports: Path | None) -> None:
    match step:
        case Export(path, clients):
            if exports is None:
                raise StorageError(f"{path}: an export was planned but no exports file given")
            await asyncio.to_thread(_export_line, exports, path, clients)
            await commands.run(["exportfs", "-ra"], timeout=_TIMEOUT_S)
        case AttachVolume(volume_id, _):
            raise StorageError(f"{volume_id}: attaching is storage setup's, not a step to apply")
        case Format(device, fs_type, label):
            labelled = ["-L", label] if label else []
            # -F: a whole device, not a partition, is what we mean (blank, checked by the plan).
            force = ["-F"] if fs_type.startswith("ext") else []
            await commands.run(
                [f"mkfs.{fs_type}", "-q", *force, *labelled, device], timeout=_MKFS_TIMEOUT_S
            )
        case MakeDir(path):
            await commands.run(["mkdir", "-p", path], timeout=_TIMEOUT_S)
        case MountDevice(device, mount_point):
            await commands.run(["mount", device, mount_point], timeout=_TIMEOUT_S)
        case RunCommands(_, argvs):
            for argv in argvs:
                await commands.run(list(argv), timeout=_MKFS_TIMEOUT_S)
        case MountArray(argv):
            await commands.run(list(argv), timeout=_TIMEOUT_S)
        case OpenToAll(path):
            await commands.run(["chmod", "1777", path], timeout=_TIMEOUT_S)
        case FstabEntry(device, mount_point):
            if fstab is None:
                raise StorageError(f"{mount_point}: an fstab entry was planned but no fstab given")
            found = await probe(device)
            if not found.uuid or not found.fs_type:
                raise StorageError(f"{device}: no filesystem UUID to put in {fstab}")
            line = f"UUID={found.uuid} {mount_point} {found.fs_type} {FSTAB_OPTIONS} 0 2"
            await asyncio.to_thread(_replace_entry, fstab, line, key=1)


def _export_line(exports: Path, path: str, clients: str) -> None:
    """This path's line, replacing any older one for it."""
    _replace_entry(exports, f"{path} {clients}", key=0)


def _replace_entry(path: Path, line: str, *, key: int) -> None:
    old = path.read_text() if path.exists() else ""
    files.write_atomically(path, with_entry(old, line, key=key))


def _describe(step: Step) -> str:
    match step:
        case AttachVolume(volume_id, device):
            return f"attach {volume_id} as {device}"
        case Export(path, clients):
            return f"export {path} to {clients}"
        case Format(device, fs_type, _):
            return f"mkfs.{fs_type} {device}"
        case MakeDir(path):
            return f"mkdir {path}"
        case MountDevice(device, mount_point):
            return f"mount {device} {mount_point}"
        case FstabEntry(device, mount_point):
            return f"fstab {device} {mount_point}"
        case RunCommands(what, argvs):
            return f"{what}: " + "; ".join(" ".join(argv) for argv in argvs)
        case MountArray(argv):
            return " ".join(argv)
        case OpenToAll(path):
            return f"chmod 1777 {path}"
