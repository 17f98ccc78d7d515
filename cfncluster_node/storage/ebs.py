"""The EBS shared volume: attached through the EC2 API, then found among the devices.

On Nitro instances an EBS volume is an NVMe device whose serial is the volume id without
its dash (``vol0123...``); on Xen instances ``/dev/sdf`` appears as ``/dev/xvdf``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cfncluster_node.aws import Aws
from cfncluster_node.storage import StorageError
from cfncluster_node.storage.machine import mapped_device

_ATTACH_TIMEOUT_S = 120.0
_POLL_S = 0.5


def find_device(
    volume_id: str,
    requested: str,
    *,
    sys_block: Path = Path("/sys/block"),
    dev: Path = Path("/dev"),
) -> str | None:
    """The device node of the attached volume, or None while it has not appeared."""
    serial = volume_id.replace("-", "")
    for block in sorted(sys_block.glob("nvme*")):
        serial_file = block / "device" / "serial"
        if serial_file.exists() and serial_file.read_text().strip() == serial:
            return str(dev / block.name)
    return mapped_device(requested, dev)


async def attach(aws: Aws, volume_id: str, instance_id: str, requested: str) -> None:
    """Attach the volume to this instance unless it is; wait until EC2 says attached."""
    deadline = time.monotonic() + _ATTACH_TIMEOUT_S
    asked = False
    while True:
        volume = (await aws.call("ec2", "describe_volumes", VolumeIds=[volume_id]))["Volumes"][0]
        attachments = volume.get("Attachments", [])
        elsewhere = [a for a in attachments if a["InstanceId"] != instance_id]
        if elsewhere:
            raise StorageError(
                f"{volume_id}: attached to {elsewhere[0]['InstanceId']}, not this instance "
                f"({instance_id}); detach it there first"
            )
        if any(a.get("State") == "attached" for a in attachments):
            return
        if not attachments and not asked:
            await aws.call(
                "ec2",
                "attach_volume",
                VolumeId=volume_id,
                InstanceId=instance_id,
                Device=requested,
            )
            asked = True
            continue
        if time.monotonic() > deadline:
            raise StorageError(
                f"{volume_id}: not attached after {_ATTACH_TIMEOUT_S:g} s (state "
                f"{volume.get('State')}); check the volume is in this instance's zone"
            )
        await asyncio.sleep(_POLL_S)


async def wait_for_device(
    volume_id: str,
    requested: str,
    *,
    timeout: float = _ATTACH_TIMEOUT_S,
    sys_block: Path = Path("/sys/block"),
    dev: Path = Path("/dev"),
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(
            find_device, volume_id, requested, sys_block=sys_block, dev=dev
        )
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise StorageError(
                f"{volume_id}: attached, but no device appeared within {timeout:g} s "
                f"(looked for NVMe serial {volume_id.replace('-', '')} and {requested}); "
                "check the instance's block devices (lsblk)"
            )
        await asyncio.sleep(_POLL_S)
