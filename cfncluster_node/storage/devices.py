"""What the block devices hold and where they are mounted, asked of blkid and findmnt.

``blkid -p`` probes the device itself: no cache and no udev needed, so it is right on a
freshly booted instance and in a container alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cfncluster_node import commands

_TIMEOUT_S = 30.0
_NOTHING_FOUND = 2  # blkid's exit code for a device without any signature


@dataclass(frozen=True)
class Device:
    path: str
    fs_type: str | None = None
    uuid: str | None = None
    label: str | None = None
    partition_table: str | None = None
    usage: str | None = None  # "filesystem", "raid", "crypto", ...

    @property
    def blank(self) -> bool:
        return not (self.fs_type or self.partition_table or self.usage)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fs_type: str


def parse_blkid(path: str, text: str) -> Device:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return Device(
        path=path,
        fs_type=fields.get("TYPE"),
        uuid=fields.get("UUID"),
        label=fields.get("LABEL"),
        partition_table=fields.get("PTTYPE"),
        usage=fields.get("USAGE"),
    )


async def probe(path: str) -> Device:
    result = await commands.run(
        ["blkid", "-p", "-o", "export", path], timeout=_TIMEOUT_S, check=False
    )
    if result.returncode == _NOTHING_FOUND:
        return Device(path)
    if result.returncode != 0:
        raise commands.CommandError(result.argv, f"exited with {result.returncode}", result.stderr)
    return parse_blkid(path, result.stdout)


def parse_findmnt(text: str) -> list[Mount]:
    if not text.strip():
        return []
    return [
        Mount(entry["source"], entry["target"], entry["fstype"])
        for entry in json.loads(text).get("filesystems", [])
    ]


async def mounts() -> list[Mount]:
    result = await commands.run(
        ["findmnt", "-J", "-l", "-n", "-o", "SOURCE,TARGET,FSTYPE"], timeout=_TIMEOUT_S
    )
    return parse_findmnt(result.stdout)


def resolve(path: str) -> str:
    """/dev/disk/by-id/... and /dev/xvdb links to the device node they name."""
    return str(Path(path).resolve())


def first_partition(device: str, *, sys_block: Path = Path("/sys/block")) -> str | None:
    """The device node of a disk's first partition (sdf1, nvme1n1p1), if the kernel has one."""
    disk = Path(device)
    for name in (f"{disk.name}1", f"{disk.name}p1"):
        if (sys_block / disk.name / name / "partition").exists():
            return str(disk.parent / name)
    return None
