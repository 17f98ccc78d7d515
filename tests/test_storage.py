"""Storage setup: the plan (pure), and real mkfs, blkid and mount on loop devices."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cfncluster_node import commands
from cfncluster_node.storage import StorageError
from cfncluster_node.storage.devices import Device, Mount, parse_blkid, parse_findmnt
from cfncluster_node.storage.machine import holder, probe
from cfncluster_node.storage.plan import (
    Export,
    Format,
    FstabEntry,
    MakeDir,
    MountArray,
    MountDevice,
    OpenToAll,
    RunCommands,
    Scratch,
    Step,
    Volume,
    exports_of,
    fstab_sources,
    plan_scratch,
    plan_volume,
    with_entry,
)
from cfncluster_node.storage.setup import set_up_scratch, set_up_volume
from tests.clusters import node_toml

SHARED = Volume("/dev/loop9", "/shared")


def test_a_blank_device_is_formatted_mounted_and_put_in_fstab() -> None:
    assert plan_volume(SHARED, Device("/dev/loop9"), [], {}) == [
        Format("/dev/loop9", "ext4", None),
        MakeDir("/shared"),
        MountDevice("/dev/loop9", "/shared"),
        FstabEntry("/dev/loop9", "/shared"),
    ]


def test_a_device_with_a_filesystem_is_mounted_as_it_is_never_formatted() -> None:
    existing = Device("/dev/loop9", fs_type="xfs", uuid="u", usage="filesystem")
    steps = plan_volume(Volume("/dev/loop9", "/shared", fs_type="ext4"), existing, [], {})
    assert not any(isinstance(step, Format) for step in steps)


def test_a_volume_already_set_up_plans_nothing() -> None:
    existing = Device("/dev/loop9", fs_type="ext4", uuid="u", usage="filesystem")
    mounted = [Mount("/dev/loop9", "/shared", "ext4")]
    assert plan_volume(SHARED, existing, mounted, {"/shared": "UUID=u"}) == []


@pytest.mark.parametrize(
    ("device", "held"),
    [
        (Device("/dev/loop9", partition_table="gpt"), "a gpt partition table"),
        (Device("/dev/loop9", usage="raid"), "raid"),
    ],
)
def test_a_partitioned_or_raid_device_is_refused_by_name(device: Device, held: str) -> None:
    with pytest.raises(StorageError, match=f"/dev/loop9: holds {held} and no filesystem"):
        plan_volume(SHARED, device, [], {})


def test_the_destructive_flag_alone_formats_a_device_that_holds_something() -> None:
    steps = plan_volume(
        SHARED, Device("/dev/loop9", partition_table="dos"), [], set(), destroy=True
    )
    assert steps[0] == Format("/dev/loop9", "ext4", None)


def test_a_mount_point_taken_by_another_device_is_an_error() -> None:
    with pytest.raises(StorageError, match="/dev/loop3 is mounted there"):
        plan_volume(SHARED, Device("/dev/loop9"), [Mount("/dev/loop3", "/shared", "ext4")], {})


def test_blkid_findmnt_and_fstab_are_read() -> None:
    assert parse_blkid("/dev/x", "DEVNAME=/dev/x\nUUID=abc\nTYPE=ext4\nUSAGE=filesystem\n") == (
        Device("/dev/x", fs_type="ext4", uuid="abc", usage="filesystem")
    )
    assert parse_findmnt(
        '{"filesystems": [{"source": "/dev/x", "target": "/s", "fstype": "xfs"}]}'
    ) == [Mount("/dev/x", "/s", "xfs")]
    assert fstab_sources("# c\nUUID=1 /shared ext4 defaults 0 2\n\n/dev/y none swap sw 0 0\n") == {
        "/shared": "UUID=1",
        "none": "/dev/y",
    }


def test_a_volume_whose_fstab_line_names_another_uuid_gets_its_own() -> None:
    existing = Device("/dev/loop9", fs_type="ext4", uuid="new", usage="filesystem")
    mounted = [Mount("/dev/loop9", "/shared", "ext4")]
    assert plan_volume(SHARED, existing, mounted, {"/shared": "UUID=old"}) == [
        FstabEntry("/dev/loop9", "/shared")
    ]


def test_an_fstab_line_replaces_its_mount_points_and_every_line_ends() -> None:
    root = "UUID=r / ext4 defaults 0 1"
    old = "UUID=old /shared ext4 defaults,_netdev,nofail 0 2"
    new = "UUID=new /shared ext4 defaults,nofail 0 2"
    assert with_entry(f"# keep me /shared\n{root}\n{old}", new, key=1) == (
        f"# keep me /shared\n{root}\n{new}\n"
    )
    assert with_entry(root, new, key=1) == f"{root}\n{new}\n"  # no final newline before


def set_up(volume: Volume, **options: Any) -> list[Step]:
    return asyncio.run(set_up_volume(volume, **options))


@pytest.fixture
def two_loop_devices(attach: Callable[[int], str]) -> tuple[str, str]:
    # btrfs needs more room per member than one small ext4.
    return attach(128), attach(128)


def mounted_at(mount_point: Path) -> str:
    return subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", str(mount_point)], capture_output=True, text=True
    ).stdout.strip()


def test_a_blank_loop_device_is_set_up_once_and_left_alone_after(
    loop_device: str, tmp_path: Path
) -> None:
    volume = Volume(loop_device, str(tmp_path / "shared"), label="shared")
    fstab = tmp_path / "fstab"

    first = set_up(volume, fstab=fstab)
    second = set_up(volume, fstab=fstab)

    assert [type(step) for step in first] == [Format, MakeDir, MountDevice, FstabEntry]
    assert second == []
    assert mounted_at(tmp_path / "shared") == "ext4"
    [line] = fstab.read_text().splitlines()
    assert line.startswith("UUID=") and f" {tmp_path / 'shared'} ext4 defaults,nofail " in line


def test_a_new_volume_at_the_mount_point_replaces_the_old_line_in_a_real_fstab(
    attach: Callable[[int], str], tmp_path: Path
) -> None:
    mount_point = tmp_path / "shared"
    fstab = tmp_path / "fstab"
    root = "UUID=0a1b / ext4 errors=remount-ro 0 1"
    fstab.write_text(f"{root}\nUUID=dead-volume {mount_point} ext4 defaults,nofail 0 2")
    fstab.chmod(0o644)

    set_up(Volume(attach(64), str(mount_point)), fstab=fstab)

    root_line, line = fstab.read_text().splitlines()
    uuid = subprocess.run(
        ["findmnt", "-n", "-o", "UUID", str(mount_point)], capture_output=True, text=True
    ).stdout.strip()
    assert root_line == root
    assert line == f"UUID={uuid} {mount_point} ext4 defaults,nofail 0 2"
    assert fstab.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def with_file(device: str, tmp_path: Path, name: str, text: str) -> None:
    """An ext4 filesystem on the device holding one file: data that must survive."""
    subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True)
    seed = tmp_path / "seed"
    seed.mkdir()
    subprocess.run(["mount", device, str(seed)], check=True)
    (seed / name).write_text(text)
    subprocess.run(["umount", str(seed)], check=True)


def test_files_on_an_existing_volume_survive_any_configuration(
    attach: Callable[[int], str], tmp_path: Path
) -> None:
    precious, blank = attach(128), attach(128)
    with_file(precious, tmp_path, "results.dat", "three weeks of simulation")

    def still_there(mount_point: Path) -> None:
        assert (mount_point / "results.dat").read_text() == "three weeks of simulation"
        subprocess.run(["umount", str(mount_point)], check=True)

    for n, (fs_type, label) in enumerate(
        [("xfs", None), ("ext4", "shared"), ("btrfs", "other"), ("ext4", None)]
    ):
        mount_point = tmp_path / f"shared-{n}"
        volume = Volume(precious, str(mount_point), fs_type=fs_type, label=label)
        set_up(volume, fstab=tmp_path / "fstab")
        still_there(mount_point)
    for backend in ("mdadm", "btrfs"):
        one = Scratch((precious,), str(tmp_path / f"scratch-{backend}"), backend=backend)
        asyncio.run(set_up_scratch(one))  # one disk holding a filesystem: used as it is
        still_there(tmp_path / f"scratch-{backend}")
        with pytest.raises(StorageError, match=f"{precious}: holds a ext4 filesystem"):
            asyncio.run(set_up_scratch(Scratch((blank, precious), str(tmp_path), backend=backend)))
    assert subprocess.run(["blkid", "-p", blank], capture_output=True).returncode == 2


def test_a_dry_run_plans_and_changes_nothing(loop_device: str, tmp_path: Path) -> None:
    steps = set_up(
        Volume(loop_device, str(tmp_path / "shared")), fstab=tmp_path / "fstab", dry_run=True
    )

    assert isinstance(steps[0], Format)
    blank = subprocess.run(["blkid", "-p", loop_device], capture_output=True)
    assert blank.returncode == 2
    assert not (tmp_path / "fstab").exists()


def cfncluster_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfncluster_node", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def storage_config(path: Path, device: str, mount_point: Path, fstab: Path) -> Path:
    path.write_text(
        node_toml(
            stack="s",
            after=f'[storage]\nfstab = "{fstab}"\n'
            f'[[storage.shared]]\ndevice = "{device}"\nmount_point = "{mount_point}"\n'
            '[logging]\nformat = "json"\n',
        )
    )
    return path


def test_storage_setup_dry_run_prints_the_plan_and_touches_nothing(
    loop_device: str, tmp_path: Path
) -> None:
    config = storage_config(tmp_path / "node.toml", loop_device, tmp_path / "s", tmp_path / "fstab")

    result = cfncluster_node("storage", "setup", "--dry-run", "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert f"Format(device='{loop_device}', fs_type='ext4'" in result.stdout
    assert subprocess.run(["blkid", "-p", loop_device], capture_output=True).returncode == 2


@pytest.mark.real
def test_run_stops_before_any_service_when_storage_fails(tmp_path: Path) -> None:
    config = storage_config(
        tmp_path / "node.toml", "/dev/xvdz-missing", tmp_path / "s", tmp_path / "fstab"
    )

    result = cfncluster_node("run", "--config", str(config))

    assert result.returncode == 1
    assert "/dev/xvdz-missing: no such device; check that the volume is attached" in result.stderr
    assert '"event": "head_node_failed"' in result.stdout
    assert '"reason": "storage: /dev/xvdz-missing' in result.stdout
    assert "sqswatcher_started" not in result.stdout


BLANK = [Device("/dev/xvdb"), Device("/dev/xvdc")]


def test_no_instance_store_disk_plans_nothing() -> None:
    assert plan_scratch(Scratch(()), [], []) == []


def test_one_disk_is_used_as_it_is() -> None:
    steps = plan_scratch(Scratch(("/dev/xvdb",)), BLANK[:1], [])
    assert steps == [
        Format("/dev/xvdb", "ext4", "scratch"),
        MakeDir("/scratch"),
        MountDevice("/dev/xvdb", "/scratch"),
        OpenToAll("/scratch"),
    ]


def test_two_blank_disks_become_one_mdadm_raid0_with_ext4() -> None:
    steps = plan_scratch(Scratch(("/dev/xvdb", "/dev/xvdc")), BLANK, [])
    assert steps == [
        RunCommands(
            "create",
            (
                (
                    "mdadm",
                    "--create",
                    "/dev/md0",
                    "--run",
                    "--level=0",
                    "--raid-devices=2",
                    "/dev/xvdb",
                    "/dev/xvdc",
                ),
                ("mkfs.ext4", "-q", "-F", "-L", "scratch", "/dev/md0"),
            ),
        ),
        MakeDir("/scratch"),
        MountArray(("mount", "/dev/md0", "/scratch")),
        OpenToAll("/scratch"),
    ]


def test_the_members_of_an_array_are_assembled_not_formatted() -> None:
    members = [
        Device(path, fs_type="linux_raid_member", uuid="a1", usage="raid")
        for path in ("/dev/xvdb", "/dev/xvdc")
    ]
    steps = plan_scratch(Scratch(("/dev/xvdb", "/dev/xvdc")), members, [])
    assert steps[0] == RunCommands(
        "assemble", (("mdadm", "--assemble", "/dev/md0", "/dev/xvdb", "/dev/xvdc"),)
    )
    assert not any(isinstance(step, Format) for step in steps)


def members(holder: str | None) -> list[Device]:
    return [
        Device(path, fs_type="linux_raid_member", uuid="a1", usage="raid", holder=holder)
        for path in ("/dev/xvdb", "/dev/xvdc")
    ]


def test_an_array_udev_assembled_under_another_name_is_stopped_and_assembled_as_ours() -> None:
    # At boot Debian's udev assembles the array as /dev/md127: `mdadm --assemble /dev/md0`
    # on its busy members would fail, and /scratch with it.
    steps = plan_scratch(Scratch(("/dev/xvdb", "/dev/xvdc")), members("/dev/md127"), [])
    assert steps[0] == RunCommands(
        "assemble",
        (
            ("mdadm", "--stop", "/dev/md127"),
            ("mdadm", "--assemble", "/dev/md0", "/dev/xvdb", "/dev/xvdc"),
        ),
    )


def test_an_array_running_under_our_name_is_mounted_as_it_is() -> None:
    steps = plan_scratch(Scratch(("/dev/xvdb", "/dev/xvdc")), members("/dev/md0"), [])
    assert steps == [MakeDir("/scratch"), MountArray(("mount", "/dev/md0", "/scratch"))]


def test_the_array_holding_a_disk_is_read_from_sysfs(tmp_path: Path) -> None:
    # The one part of the md seam this kernel (no md driver) cannot show for real: the
    # VM test reboots a head node with a real array.
    (tmp_path / "nvme1n1" / "holders" / "md127").mkdir(parents=True)
    (tmp_path / "nvme2n1" / "holders").mkdir(parents=True)
    assert holder("/dev/nvme1n1", sys_block=tmp_path) == "/dev/md127"
    assert holder("/dev/nvme2n1", sys_block=tmp_path) is None
    assert holder("/dev/nvme3n1", sys_block=tmp_path) is None


@pytest.mark.parametrize("unreadable", ["/dev/cfncluster-no-such-disk", "directory"])
def test_a_device_blkid_cannot_open_is_an_error_never_blank(
    unreadable: str, tmp_path: Path
) -> None:
    # blkid exits 2 for "nothing found" and for "could not open": only the first is blank.
    path = str(tmp_path) if unreadable == "directory" else unreadable
    with pytest.raises(commands.CommandError, match="cannot read"):
        asyncio.run(probe(path))


def test_a_disk_with_data_among_blank_ones_is_refused_by_name() -> None:
    disks = [Device("/dev/xvdb"), Device("/dev/xvdc", fs_type="xfs", uuid="u", usage="filesystem")]
    with pytest.raises(StorageError, match="/dev/xvdc: holds a xfs filesystem; refusing"):
        plan_scratch(Scratch(("/dev/xvdb", "/dev/xvdc")), disks, [])


def test_instance_store_disks_become_one_striped_volume_and_come_back_after_a_reboot(
    two_loop_devices: tuple[str, str], tmp_path: Path
) -> None:
    # This kernel has no md driver: btrfs raid0 runs the same plan through the RAID seam.
    scratch = Scratch(two_loop_devices, str(tmp_path / "scratch"), backend="btrfs")

    created = asyncio.run(set_up_scratch(scratch))
    again = asyncio.run(set_up_scratch(scratch))

    assert isinstance(created[0], RunCommands) and created[0].what == "create"
    assert again == []
    assert mounted_at(tmp_path / "scratch") == "btrfs"
    assert (tmp_path / "scratch").stat().st_mode & 0o7777 == 0o1777
    (tmp_path / "scratch" / "job.out").write_text("partial results")
    subprocess.run(["umount", str(tmp_path / "scratch")], check=True)  # a reboot

    after_boot = asyncio.run(set_up_scratch(scratch))

    assert isinstance(after_boot[0], RunCommands) and after_boot[0].what == "assemble"
    assert (tmp_path / "scratch" / "job.out").read_text() == "partial results"


def test_an_exported_volume_gets_its_nfs_export_once() -> None:
    volume = Volume("/dev/loop9", "/shared", export_to=("10.0.1.0/24",))
    existing = Device("/dev/loop9", fs_type="ext4", uuid="u", usage="filesystem")
    mounted = [Mount("/dev/loop9", "/shared", "ext4")]

    first = plan_volume(volume, existing, mounted, {"/shared": "UUID=u"})
    exported = exports_of("/shared 10.0.1.0/24(rw,sync,no_subtree_check,root_squash)\n")
    again = plan_volume(volume, existing, mounted, {"/shared": "UUID=u"}, exported=exported)

    assert first == [Export("/shared", "10.0.1.0/24(rw,sync,no_subtree_check,root_squash)")]
    assert again == []


def test_an_export_to_other_networks_or_without_root_squash_is_rewritten() -> None:
    existing = Device("/dev/loop9", fs_type="ext4", uuid="u", usage="filesystem")
    mounted = [Mount("/dev/loop9", "/shared", "ext4")]
    # What an older head node exported: the whole VPC, root unsquashed.
    exported = exports_of("/shared 10.0.0.0/16(rw,sync,no_root_squash,no_subtree_check)\n")

    for volume, clients in (
        (
            Volume("/dev/loop9", "/shared", export_to=("10.0.1.0/24", "10.0.2.0/24")),
            "10.0.1.0/24(rw,sync,no_subtree_check,root_squash) "
            "10.0.2.0/24(rw,sync,no_subtree_check,root_squash)",
        ),
        (
            Volume("/dev/loop9", "/shared", export_to=("10.0.0.0/16",), root_squash=False),
            "10.0.0.0/16(rw,sync,no_subtree_check,no_root_squash)",
        ),
    ):
        steps = plan_volume(volume, existing, mounted, {"/shared": "UUID=u"}, exported=exported)
        assert steps == [Export("/shared", clients)]


@pytest.fixture
def exports_file() -> Iterator[Path]:
    """A file of the real NFS server's /etc/exports.d, removed (and unexported) after."""
    if shutil.which("exportfs") is None:
        pytest.skip("exportfs not installed: apt-get install nfs-kernel-server")
    path = Path("/etc/exports.d") / f"cfncluster-test-{os.getpid()}.exports"
    yield path
    path.unlink(missing_ok=True)
    subprocess.run(["exportfs", "-ra"], capture_output=True)


def test_the_shared_volume_is_exported_to_the_compute_subnet_with_root_squashed(
    loop_device: str, tmp_path: Path, exports_file: Path
) -> None:
    volume = Volume(loop_device, str(tmp_path / "shared"), export_to=("10.0.1.0/24",))

    set_up(volume, fstab=tmp_path / "fstab", exports=exports_file)
    again = set_up(volume, fstab=tmp_path / "fstab", exports=exports_file)

    assert again == []
    # What the NFS server now exports: its export table.
    table = Path("/var/lib/nfs/etab").read_text().splitlines()
    [line] = [line for line in table if line.startswith(f"{tmp_path / 'shared'}\t")]
    assert "\t10.0.1.0/24(rw," in line
    assert ",root_squash," in line and "no_root_squash" not in line


def write_partition_table(device: str) -> None:
    """One Linux partition in a DOS partition table, as a partitioned snapshot has."""
    entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 100_000)
    with open(device, "r+b") as disk:
        disk.seek(446)
        disk.write(entry)
        disk.seek(510)
        disk.write(b"\x55\xaa")


def test_a_partitioned_volume_mounts_its_first_partition_untouched(
    attach: Callable[[int], str], tmp_path: Path
) -> None:
    # This kernel makes no loop partitions: one loop device is the disk, another its part.
    disk, part = attach(64), attach(64)
    write_partition_table(disk)
    with_file(part, tmp_path, "data", "from the snapshot")
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    (sys_block / "nvme1n1" / "nvme1n1p1").mkdir(parents=True)
    (sys_block / "nvme1n1" / "nvme1n1p1" / "partition").write_text("1\n")
    dev.mkdir()
    (dev / "nvme1n1").symlink_to(disk)
    (dev / "nvme1n1p1").symlink_to(part)

    steps = set_up(
        Volume(str(dev / "nvme1n1"), str(tmp_path / "shared")),
        fstab=tmp_path / "fstab",
        sys_block=sys_block,
    )

    assert not any(isinstance(step, Format) for step in steps)
    assert (tmp_path / "shared" / "data").read_text() == "from the snapshot"
    table = subprocess.run(["blkid", "-p", "-o", "export", disk], capture_output=True, text=True)
    assert "PTTYPE=dos" in table.stdout
