"""What this machine's block devices hold and where they are mounted, asked of blkid,
findmnt, /dev and /sys.

``blkid -p`` probes the device itself: no cache and no udev needed, so it is right on a
freshly booted instance and in a container alike.
"""

from __future__ import annotations

from pathlib import Path

from cfncluster_node import commands
from cfncluster_node.storage.devices import Device, Mount, parse_blkid, parse_findmnt

_TIMEOUT_S = 30.0
_NOTHING_FOUND = 2  # blkid's exit code for a device without any signature


async def probe(path: str) -> Device:
    result = await commands.run(
        ["blkid", "-p", "-o", "export", path], timeout=_TIMEOUT_S, check=False
    )
    if result.returncode == _NOTHING_FOUND:
        return Device(path)
    if result.returncode != 0:
        raise commands.CommandError(result.argv, f"exited with {result.returncode}", result.stderr)
    return parse_blkid(path, result.stdout)


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
