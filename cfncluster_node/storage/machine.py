"""What this machine's block devices hold and where they are mounted, asked of blkid,
findmnt, /dev and /sys.

``blkid -p`` probes the device itself: no cache and no udev needed, so it is right on a
freshly booted instance and in a container alike.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cfncluster_node import commands
from cfncluster_node.storage.devices import Device, Mount, parse_blkid, parse_findmnt

_TIMEOUT_S = 30.0
_NOTHING_FOUND = 2  # blkid's exit code for a device without any signature


async def probe(path: str) -> Device:
    """What the device holds; CommandError if it cannot be read.

    blkid exits 2 both for "no signature" and for a device it could not open (with a
    message, or none for a missing node): blank is believed only of a device this
    process can read itself, so nothing unreadable is ever planned for formatting.
    """
    result = await commands.run(
        ["blkid", "-p", "-o", "export", path], timeout=_TIMEOUT_S, check=False
    )
    if result.returncode == _NOTHING_FOUND and not result.stderr.strip():
        try:
            await asyncio.to_thread(_read_first_block, path)
        except OSError as exc:
            raise commands.CommandError(result.argv, f"cannot read {path}", str(exc)) from exc
        return Device(path)
    if result.returncode != 0:
        raise commands.CommandError(result.argv, f"exited with {result.returncode}", result.stderr)
    return parse_blkid(path, result.stdout)


def _read_first_block(path: str) -> None:
    with open(path, "rb") as device:
        device.read(4096)


def holder(device: str, *, sys_block: Path = Path("/sys/block")) -> str | None:
    """The md array that holds the disk already (``/dev/md127``), if the kernel has one:
    at boot udev assembles arrays by itself, under names of its choosing."""
    holders = sys_block / Path(device).name / "holders"
    try:
        names = sorted(entry.name for entry in holders.iterdir() if entry.name.startswith("md"))
    except OSError:
        return None
    return f"/dev/{names[0]}" if names else None


async def mounts() -> list[Mount]:
    result = await commands.run(
        ["findmnt", "-J", "-l", "-n", "-o", "SOURCE,TARGET,FSTYPE"], timeout=_TIMEOUT_S
    )
    return parse_findmnt(result.stdout)


def resolve(path: str) -> str:
    """/dev/disk/by-id/... and /dev/xvdb links to the device node they name."""
    return str(Path(path).resolve())


def mapped_device(name: str, dev: Path = Path("/dev")) -> str | None:
    """The device node a block-device mapping's name (``sdf``, ``/dev/sdf``) appears as, if
    it has appeared: the name itself, or on Xen instances ``xvdf`` for ``sdf``."""
    base = Path(name).name
    candidates = [base, f"xvd{base[2:]}"] if base.startswith("sd") else [base]
    for candidate in candidates:
        if (dev / candidate).exists():
            return str(dev / candidate)
    return None


def first_partition(device: str, *, sys_block: Path = Path("/sys/block")) -> str | None:
    """The device node of a disk's first partition (sdf1, nvme1n1p1), if the kernel has one."""
    disk = Path(device)
    for name in (f"{disk.name}1", f"{disk.name}p1"):
        if (sys_block / disk.name / name / "partition").exists():
            return str(disk.parent / name)
    return None
