"""One volume set up: observe, plan, and (unless a dry run) apply."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cfncluster_node import logs
from cfncluster_node.config import StorageSettings
from cfncluster_node.storage import StorageError
from cfncluster_node.storage.apply import apply
from cfncluster_node.storage.devices import mounts, probe, resolve
from cfncluster_node.storage.plan import Step, Volume, fstab_mount_points, plan_volume


async def set_up_volume(
    volume: Volume, *, fstab: Path, destroy: bool = False, dry_run: bool = False
) -> list[Step]:
    """Make the volume formatted (only if blank), mounted and in fstab; return the plan."""
    path = resolve(volume.device)
    if not await asyncio.to_thread(os.path.exists, path):
        raise StorageError(
            f"{volume.device}: no such device; check that the volume is attached "
            "(on Nitro instances EBS volumes are NVMe devices)"
        )
    device = await probe(path)
    text = await asyncio.to_thread(_read, fstab)
    steps = plan_volume(volume, device, await mounts(), fstab_mount_points(text), destroy=destroy)
    logs.get().info(
        "storage_planned",
        device=device.path,
        mount_point=volume.mount_point,
        steps=[type(step).__name__ for step in steps],
        dry_run=dry_run,
    )
    if not dry_run:
        await apply(steps, fstab=fstab)
    return steps


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def set_up_all(
    settings: StorageSettings, *, destroy: bool = False, dry_run: bool = False
) -> list[Step]:
    """Every configured volume, one after the other; the first failure stops the rest."""
    steps: list[Step] = []
    for shared in settings.shared:
        volume = Volume(shared.device, shared.mount_point, shared.fs_type, shared.label)
        steps += await set_up_volume(volume, fstab=settings.fstab, destroy=destroy, dry_run=dry_run)
    return steps
