"""One volume set up: observe, plan, and (unless a dry run) apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cfncluster_node import logs
from cfncluster_node.storage.apply import apply
from cfncluster_node.storage.devices import mounts, probe, resolve
from cfncluster_node.storage.plan import Step, Volume, fstab_mount_points, plan_volume


async def set_up_volume(
    volume: Volume, *, fstab: Path, destroy: bool = False, dry_run: bool = False
) -> list[Step]:
    """Make the volume formatted (only if blank), mounted and in fstab; return the plan."""
    device = await probe(resolve(volume.device))
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
