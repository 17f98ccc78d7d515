"""What a volume needs, as steps: pure, and refusing to format anything not blank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cfncluster_node.storage import StorageError, raid
from cfncluster_node.storage.devices import Device, Mount
from cfncluster_node.storage.raid import Backend

# An fstab line that cannot hang a boot: a missing volume is skipped, not waited for. No
# _netdev: an EBS volume is a local disk to the kernel, mounted before the network.
FSTAB_OPTIONS = "defaults,nofail"
# Compute nodes write to a shared volume as their users; root on a compute node (any job
# that gets it, or an operator's hook there) becomes nobody unless the cluster asks.
_EXPORT_OPTIONS = "rw,sync,no_subtree_check"


@dataclass(frozen=True)
class Volume:
    """What the configuration asks for."""

    device: str
    mount_point: str
    fs_type: str = "ext4"
    label: str | None = None
    export_to: tuple[str, ...] = ()  # the networks (CIDRs) of the compute nodes
    root_squash: bool = True


@dataclass(frozen=True)
class Export:
    """The path's NFS export line (``clients``: each network with its options), then
    ``exportfs -ra``."""

    path: str
    clients: str


def export_clients(networks: Sequence[str], *, root_squash: bool) -> str:
    """What follows the path on its exports line: each network, read-write, with root
    squashed unless asked otherwise."""
    squash = "root_squash" if root_squash else "no_root_squash"
    return " ".join(f"{network}({_EXPORT_OPTIONS},{squash})" for network in networks)


@dataclass(frozen=True)
class AttachVolume:
    """Planned only in a dry run: a real run attaches, then plans the device it finds."""

    volume_id: str
    device: str


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


@dataclass(frozen=True)
class Scratch:
    """Instance-store disks as one volume; rebuilt at every boot, so never in fstab."""

    devices: tuple[str, ...]
    mount_point: str = "/scratch"
    fs_type: str = "ext4"
    backend: Backend = "mdadm"
    md_device: str = "/dev/md0"
    label: str = "scratch"


@dataclass(frozen=True)
class RunCommands:
    """Commands of the RAID seam (create or assemble an array), run in order."""

    what: str
    argvs: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class MountArray:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class OpenToAll:
    """Mode 1777, as /tmp: every user writes, only owners delete."""

    path: str


Step = (
    AttachVolume
    | Format
    | MakeDir
    | MountDevice
    | FstabEntry
    | RunCommands
    | MountArray
    | OpenToAll
    | Export
)


def plan_volume(
    volume: Volume,
    device: Device,
    mounts: list[Mount],
    fstab: Mapping[str, str],
    *,
    exported: Mapping[str, str] | None = None,
    destroy: bool = False,
) -> list[Step]:
    """The steps that make ``volume`` formatted, mounted, in fstab and exported; [] when
    it is."""
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
            raise StorageError(
                f"{device.path}: holds {_contents(device)} and no filesystem; "
                "refusing to format it. Name one of its partitions, or pass the explicit "
                "destructive flag to format the whole device"
            )
        steps += [MakeDir(volume.mount_point), MountDevice(device.path, volume.mount_point)]
    formatted = any(isinstance(step, Format) for step in steps)
    # A new volume at the same mount point (or one formatted now) has a new UUID: the old
    # line would mount nothing at the next boot, or the wrong thing.
    if formatted or fstab.get(volume.mount_point) != f"UUID={device.uuid}":
        steps.append(FstabEntry(device.path, volume.mount_point))
    if volume.export_to:
        clients = export_clients(volume.export_to, root_squash=volume.root_squash)
        if (exported or {}).get(volume.mount_point) != clients:
            steps.append(Export(volume.mount_point, clients))
    return steps


def exports_of(text: str) -> dict[str, str]:
    """Each path of an exports file and its clients: ``/shared 10.0.1.0/24(rw,...)``."""
    found = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            found[fields[0]] = " ".join(fields[1:])
    return found


def fstab_sources(text: str) -> dict[str, str]:
    """Each mount point of an fstab and what is mounted there (``UUID=...``)."""
    sources = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            sources[fields[1]] = fields[0]
    return sources


def with_entry(text: str, line: str, *, key: int) -> str:
    """``text`` with ``line`` as the only entry whose field ``key`` is ``line``'s (an
    fstab's mount point is field 1, an exports file's path field 0), every line ending
    in a newline: a file without a final one must not have the new line run into it."""
    wanted = line.split()[key : key + 1]
    kept = [
        old
        for old in text.splitlines()
        if old.split()[key : key + 1] != wanted or old.lstrip().startswith("#")
    ]
    return "".join(f"{old}\n" for old in [*kept, line])


def plan_scratch(
    scratch: Scratch, devices: list[Device], mounts: list[Mount], *, destroy: bool = False
) -> list[Step]:
    """0 disks: nothing. 1 disk: that disk. 2 or more: one RAID0 array."""
    if not devices or any(m.target == scratch.mount_point for m in mounts):
        return []
    if len(devices) == 1:
        [disk] = devices
        if not (destroy or disk.blank or disk.fs_type):
            raise StorageError(_refusal(disk))
        steps: list[Step] = (
            []
            if disk.fs_type and not destroy
            else [Format(disk.path, scratch.fs_type, scratch.label)]
        )
        return [
            *steps,
            MakeDir(scratch.mount_point),
            MountDevice(disk.path, scratch.mount_point),
            OpenToAll(scratch.mount_point),
        ]
    paths = [disk.path for disk in devices]
    mount = MountArray(
        tuple(
            raid.mount(
                scratch.backend, paths, md_device=scratch.md_device, mount_point=scratch.mount_point
            )
        )
    )
    running = sorted({disk.holder for disk in devices if disk.holder is not None})
    if not destroy and _one_array(devices):
        assemble = raid.assemble(
            scratch.backend, paths, md_device=scratch.md_device, running=running
        )
        steps = [RunCommands("assemble", _tuples(assemble))] if assemble else []
        return [*steps, MakeDir(scratch.mount_point), mount]
    used = [disk for disk in devices if not disk.blank]
    if used and not destroy:
        raise StorageError("; ".join(_refusal(disk) for disk in used))
    create = raid.create(
        scratch.backend,
        paths,
        md_device=scratch.md_device,
        fs_type=scratch.fs_type,
        label=scratch.label,
        running=running,
    )
    return [
        RunCommands("create", _tuples(create)),
        MakeDir(scratch.mount_point),
        mount,
        OpenToAll(scratch.mount_point),
    ]


def _one_array(devices: list[Device]) -> bool:
    """Every disk a member of the same array (btrfs or md), as after a reboot."""
    uuids = {disk.uuid for disk in devices}
    kinds = {disk.fs_type for disk in devices}
    return len(uuids) == 1 and None not in uuids and kinds <= {"btrfs", "linux_raid_member"}


def _contents(disk: Device) -> str:
    """What a non-blank device holds, as an operator reads it."""
    if disk.partition_table:
        return f"a {disk.partition_table} partition table"
    if disk.fs_type:
        return f"a {disk.fs_type} filesystem"
    return disk.usage or "data"


def _refusal(disk: Device) -> str:
    return (
        f"{disk.path}: holds {_contents(disk)}; refusing to format it. "
        "Pass the explicit destructive flag to format it anyway"
    )


def _tuples(argvs: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(argv) for argv in argvs)
