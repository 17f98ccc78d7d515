"""RAID0 over instance-store disks: the one seam between the plan and the RAID tools.

mdadm is the default on an instance. btrfs raid0 stands in where the kernel has no md
driver (this project's CI machines): the same plan, other command lines. The mdadm
command lines are unit-tested here and run for real in the full-system VM test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Backend = Literal["mdadm", "btrfs"]


def create(
    backend: Backend,
    devices: Sequence[str],
    *,
    md_device: str,
    fs_type: str,
    label: str,
    running: Sequence[str] = (),
) -> list[list[str]]:
    """The commands that turn blank disks into one striped filesystem. ``running``: md
    arrays holding the disks now, stopped first (their disks are busy until then)."""
    if backend == "btrfs":
        return [["mkfs.btrfs", "-q", "-f", "-L", label, "-d", "raid0", "-m", "raid0", *devices]]
    force = ["-F"] if fs_type.startswith("ext") else []
    return [
        *_stop(running),
        [
            "mdadm",
            "--create",
            md_device,
            "--run",
            "--level=0",
            f"--raid-devices={len(devices)}",
            *devices,
        ],
        [f"mkfs.{fs_type}", "-q", *force, "-L", label, md_device],
    ]


def assemble(
    backend: Backend, devices: Sequence[str], *, md_device: str, running: Sequence[str] = ()
) -> list[list[str]]:
    """The commands that bring back an array whose disks survived a reboot.

    ``running``: the md arrays that hold the disks already. At boot udev assembles an
    array by itself, under a name of its own (/dev/md127): it is stopped and assembled
    again as ``md_device``, the name the mount uses. None when it is ``md_device``.
    """
    if backend == "btrfs":
        return [["btrfs", "device", "scan", *devices]]
    if list(running) == [md_device]:
        return []
    return [*_stop(running), ["mdadm", "--assemble", md_device, *devices]]


def _stop(running: Sequence[str]) -> list[list[str]]:
    return [["mdadm", "--stop", array] for array in running]


def mount(
    backend: Backend, devices: Sequence[str], *, md_device: str, mount_point: str
) -> list[str]:
    if backend == "btrfs":
        # Naming every member: the kernel may not have scanned them (no udev at boot).
        members = ",".join(f"device={device}" for device in devices)
        return ["mount", "-o", members, devices[0], mount_point]
    return ["mount", md_device, mount_point]
