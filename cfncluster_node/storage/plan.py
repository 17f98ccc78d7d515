"""What a volume needs, as steps: pure, and refusing to format anything not blank."""

from __future__ import annotations

from dataclasses import dataclass

from cfncluster_node.storage import StorageError
from cfncluster_node.storage.devices import Device, Mount

# An fstab line that cannot hang a boot: a missing volume is skipped, not waited for.
FSTAB_OPTIONS = "defaults,_netdev,nofail"


@dataclass(frozen=True)
class Volume:
    """What the configuration asks for."""

    device: str
    mount_point: str
    fs_type: str = "ext4"
    label: str | None = None


@dataclass(frozen=True)
class Format:
    device: str
    fs_type: str
    label: str | None


@dataclass(frozen=True)
class MakeDir:
    path: str


@dataclass(frozen=True)
class MountDevice:
    device: str
    mount_point: str


@dataclass(frozen=True)
class FstabEntry:
    """By UUID, read from the device when applied (a new filesystem has a new one)."""

    device: str
    mount_point: str


Step = Format | MakeDir | MountDevice | FstabEntry


def plan_volume(
    volume: Volume,
    device: Device,
    mounts: list[Mount],
    fstab_mount_points: set[str],
    *,
    destroy: bool = False,
) -> list[Step]:
    """The steps that make ``volume`` formatted, mounted and in fstab; [] when it is."""
    at_mount_point = [m for m in mounts if m.target == volume.mount_point]
    if at_mount_point and at_mount_point[0].source != device.path:
        raise StorageError(
            f"{volume.mount_point}: {at_mount_point[0].source} is mounted there, not "
            f"{device.path}; unmount it or choose another mount point"
        )
    elsewhere = [m for m in mounts if m.source == device.path and m.target != volume.mount_point]
    if elsewhere:
        raise StorageError(
            f"{device.path}: already mounted at {elsewhere[0].target}; unmount it first"
        )
    steps: list[Step] = []
    if not at_mount_point:
        if destroy or device.blank:
            steps.append(Format(device.path, volume.fs_type, volume.label))
        elif device.fs_type is None:
            held = device.partition_table and f"a {device.partition_table} partition table"
            raise StorageError(
                f"{device.path}: holds {held or device.usage or 'data'} and no filesystem; "
                "refusing to format it. Name one of its partitions, or pass the explicit "
                "destructive flag to format the whole device"
            )
        steps += [MakeDir(volume.mount_point), MountDevice(device.path, volume.mount_point)]
    if volume.mount_point not in fstab_mount_points:
        steps.append(FstabEntry(device.path, volume.mount_point))
    return steps


def fstab_mount_points(text: str) -> set[str]:
    points = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            points.add(fields[1])
    return points
