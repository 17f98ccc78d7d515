"""The instance-store (ephemeral) disks of this instance, wherever the hypervisor puts them.

On Nitro instances they are NVMe devices whose model says so; on Xen instances the
instance metadata's block-device mapping names them (``ephemeral0`` -> ``sdb``), and the
kernel shows ``sdb`` as ``xvdb``.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from cfncluster_node import imds
from cfncluster_node.storage import StorageError
from cfncluster_node.storage.machine import mapped_device

NVME_MODEL = "Amazon EC2 NVMe Instance Storage"
_EPHEMERAL = re.compile(r"^ephemeral(\d+)$")
_MAPPING = "block-device-mapping/"


def nvme_disks(sys_block: Path, dev: Path) -> list[str]:
    disks = []
    for block in sorted(sys_block.glob("nvme*n1")):
        model = block / "device" / "model"
        if model.exists() and model.read_text().strip() == NVME_MODEL:
            disks.append(str(dev / block.name))
    return disks


def xen_disks(mapping: dict[str, str], dev: Path) -> list[str]:
    """``mapping``: ephemeralN -> the name the metadata gives (sdb, xvdb, /dev/sdb)."""
    found = (mapped_device(mapping[key], dev) for key in sorted(mapping, key=_ephemeral_index))
    return [disk for disk in found if disk is not None]


def _ephemeral_index(key: str) -> int:
    # ephemeral10 after ephemeral9, not after ephemeral1
    match = _EPHEMERAL.match(key)
    return int(match.group(1)) if match else -1


async def discover(*, sys_block: Path = Path("/sys/block"), dev: Path = Path("/dev")) -> list[str]:
    nvme = await asyncio.to_thread(nvme_disks, sys_block, dev)
    if nvme:
        return nvme
    try:
        listing = (await imds.read([_MAPPING])).get(_MAPPING, "")
        ephemeral = [key for key in listing.split() if _EPHEMERAL.match(key)]
        names = await imds.read([f"{_MAPPING}{key}" for key in ephemeral])
    except imds.MetadataError as exc:
        raise StorageError(f"instance-store disks: {exc}") from None
    mapping = {key.removeprefix(_MAPPING): value for key, value in names.items()}
    return await asyncio.to_thread(xen_disks, mapping, dev)
