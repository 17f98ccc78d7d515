"""One volume set up: observe, plan, and (unless a dry run) apply."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

from cfncluster_node import imds, logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import StorageSettings
from cfncluster_node.storage import StorageError, ebs, instancestore
from cfncluster_node.storage.apply import apply
from cfncluster_node.storage.devices import Device
from cfncluster_node.storage.machine import first_partition, holder, mounts, probe, resolve
from cfncluster_node.storage.plan import (
    AttachVolume,
    Scratch,
    Step,
    Volume,
    exports_of,
    fstab_sources,
    plan_scratch,
    plan_volume,
)


async def set_up_volume(
    volume: Volume,
    *,
    fstab: Path,
    exports: Path | None = None,
    destroy: bool = False,
    dry_run: bool = False,
    sys_block: Path = Path("/sys/block"),
) -> list[Step]:
    """Make the volume formatted (only if blank), mounted, in fstab and exported; return
    the plan. A partitioned volume (from a snapshot of one) is its first partition."""
    device = await _probe_existing(volume.device)
    if device.partition_table and not destroy:
        partition = await asyncio.to_thread(first_partition, volume.device, sys_block=sys_block)
        if partition is not None:
            device = await _probe_existing(partition)
    fstab_text = await asyncio.to_thread(_read, fstab)
    exports_text = await asyncio.to_thread(_read, exports) if exports else ""
    steps = plan_volume(
        volume,
        device,
        await mounts(),
        fstab_sources(fstab_text),
        exported=exports_of(exports_text),
        destroy=destroy,
    )
    logs.get().info(
        "storage_planned",
        device=device.path,
        mount_point=volume.mount_point,
        steps=[type(step).__name__ for step in steps],
        dry_run=dry_run,
    )
    if not dry_run:
        await apply(steps, fstab=fstab, exports=exports)
    return steps


async def set_up_scratch(
    scratch: Scratch,
    *,
    destroy: bool = False,
    dry_run: bool = False,
    sys_block: Path = Path("/sys/block"),
) -> list[Step]:
    """Instance-store disks as one volume at the mount point; return the plan."""
    if not scratch.devices:
        logs.get().info("scratch_skipped", reason="no_instance_store_disks")
        return []
    devices = [
        replace(found, holder=holder(found.path, sys_block=sys_block))
        for found in [await _probe_existing(path) for path in scratch.devices]
    ]
    steps = plan_scratch(scratch, devices, await mounts(), destroy=destroy)
    logs.get().info(
        "storage_planned",
        devices=list(scratch.devices),
        mount_point=scratch.mount_point,
        steps=[type(step).__name__ for step in steps],
        dry_run=dry_run,
    )
    if not dry_run:
        await apply(steps)
    return steps


async def _probe_existing(device: str) -> Device:
    path = resolve(device)
    if not await asyncio.to_thread(os.path.exists, path):
        raise StorageError(
            f"{device}: no such device; check that the volume is attached "
            "(on Nitro instances EBS volumes and instance-store disks are NVMe devices)"
        )
    return await probe(path)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def set_up_all(
    settings: StorageSettings,
    *,
    aws: Aws | None = None,
    destroy: bool = False,
    dry_run: bool = False,
    sys_block: Path = Path("/sys/block"),
    dev: Path = Path("/dev"),
) -> list[Step]:
    """Every configured volume, one after the other; the first failure stops the rest.

    A shared volume given by ``volume_id`` is attached to this instance first (``aws``).
    """
    steps: list[Step] = []
    if settings.scratch is not None:
        disks = settings.scratch.devices or await instancestore.discover(
            sys_block=sys_block, dev=dev
        )
        scratch = Scratch(
            tuple(disks),
            settings.scratch.mount_point,
            settings.scratch.fs_type,
            settings.scratch.raid,
        )
        steps += await set_up_scratch(
            scratch, destroy=destroy, dry_run=dry_run, sys_block=sys_block
        )
    for shared in settings.shared:
        device = shared.device
        if shared.volume_id is not None:
            found = await _attached(shared.volume_id, shared.device, aws, dry_run, sys_block, dev)
            if found is None:  # a dry run: nothing attached, nothing more to plan
                steps.append(AttachVolume(shared.volume_id, shared.device))
                continue
            device = found
        volume = Volume(
            device,
            shared.mount_point,
            shared.fs_type,
            shared.label,
            export_to=tuple(str(network) for network in shared.export_to),
            root_squash=shared.root_squash,
        )
        steps += await set_up_volume(
            volume,
            fstab=settings.fstab,
            exports=settings.exports,
            destroy=destroy,
            dry_run=dry_run,
            sys_block=sys_block,
        )
    return steps


async def _attached(
    volume_id: str, requested: str, aws: Aws | None, dry_run: bool, sys_block: Path, dev: Path
) -> str | None:
    if dry_run:
        return await asyncio.to_thread(
            ebs.find_device, volume_id, requested, sys_block=sys_block, dev=dev
        )
    if aws is None:
        raise StorageError(f"{volume_id}: attaching a volume needs AWS credentials and a region")
    instance_id = (await imds.read(["instance-id"])).get("instance-id")
    if not instance_id:
        raise StorageError(f"{volume_id}: this instance's id is not in its metadata")
    await ebs.attach(aws, volume_id, instance_id, requested)
    return await ebs.wait_for_device(volume_id, requested, sys_block=sys_block, dev=dev)
