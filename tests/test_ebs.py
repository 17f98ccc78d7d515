"""The EBS shared volume: attached through moto's EC2, found as NVMe or Xen, set up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cfncluster_node.aws import Aws
from cfncluster_node.config import SharedVolumeSettings, StorageSettings
from cfncluster_node.imds import IMDS_ENV
from cfncluster_node.local.cloud import MotoServer
from cfncluster_node.storage import StorageError
from cfncluster_node.storage.devices import Mount
from cfncluster_node.storage.ebs import attach, find_device
from cfncluster_node.storage.machine import mounts
from cfncluster_node.storage.plan import AttachVolume, Format
from cfncluster_node.storage.setup import set_up_all
from tests.conftest import MetadataService

VOLUME = "vol-0123456789abcdef0"


def nvme(sys_block: Path, name: str, serial: str) -> None:
    (sys_block / name / "device").mkdir(parents=True)
    (sys_block / name / "device" / "serial").write_text(f"{serial}   \n")


def test_a_nitro_volume_is_the_nvme_device_whose_serial_is_its_id(tmp_path: Path) -> None:
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    nvme(sys_block, "nvme0n1", "vol0aaaaaaaaaaaaaaaa")
    nvme(sys_block, "nvme1n1", VOLUME.replace("-", ""))

    assert find_device(VOLUME, "/dev/sdf", sys_block=sys_block, dev=dev) == f"{dev}/nvme1n1"


def test_a_xen_volume_asked_as_sdf_shows_up_as_xvdf(tmp_path: Path) -> None:
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    sys_block.mkdir()
    dev.mkdir()
    assert find_device(VOLUME, "/dev/sdf", sys_block=sys_block, dev=dev) is None
    (dev / "xvdf").touch()
    assert find_device(VOLUME, "/dev/sdf", sys_block=sys_block, dev=dev) == f"{dev}/xvdf"


def stack_tags(kind: str, stack: str = "test") -> list[dict[str, Any]]:
    """What CloudFormation tags a stack's resources with: the head role may attach only
    the stack's volume, to the stack's instance."""
    return [
        {"ResourceType": kind, "Tags": [{"Key": "aws:cloudformation:stack-name", "Value": stack}]}
    ]


async def instance_and_volume(aws: Aws, *, stack: str = "test") -> tuple[str, str, str]:
    """This instance, a volume of ``stack`` in its zone, and another instance."""
    launched = await aws.call(
        "ec2",
        "run_instances",
        ImageId="ami-12c6146b",
        MinCount=2,
        MaxCount=2,
        TagSpecifications=stack_tags("instance"),
    )
    [first, second] = launched["Instances"]
    zone = first["Placement"]["AvailabilityZone"]
    volume = await aws.call(
        "ec2",
        "create_volume",
        AvailabilityZone=zone,
        Size=1,
        TagSpecifications=stack_tags("volume", stack),
    )
    return first["InstanceId"], volume["VolumeId"], second["InstanceId"]


async def test_attach_attaches_once_and_refuses_a_volume_attached_elsewhere(
    aws: Aws, moto: MotoServer
) -> None:
    instance, volume, other = await instance_and_volume(aws)

    await attach(aws, volume, instance, "/dev/sdf")
    await attach(aws, volume, instance, "/dev/sdf")

    [state] = (await aws.call("ec2", "describe_volumes", VolumeIds=[volume]))["Volumes"]
    assert [(a["InstanceId"], a["Device"]) for a in state["Attachments"]] == [
        (instance, "/dev/sdf")
    ]
    with pytest.raises(StorageError, match=f"{volume}: attached to {instance}, not this"):
        await attach(aws, volume, other, "/dev/sdf")


async def test_a_shared_volume_by_id_is_attached_found_formatted_and_mounted(
    aws: Aws,
    moto: MotoServer,
    metadata_service: MetadataService,
    loop_device: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance, volume, _ = await instance_and_volume(aws)
    monkeypatch.setenv(IMDS_ENV, await metadata_service({"instance-id": instance}))
    # The NVMe device the volume becomes on a Nitro instance, played by a loop device.
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    nvme(sys_block, "nvme1n1", volume.replace("-", ""))
    (dev / "nvme1n1").symlink_to(loop_device)
    settings = StorageSettings(
        fstab=tmp_path / "fstab",
        shared=[
            SharedVolumeSettings(
                device="/dev/sdf", volume_id=volume, mount_point=str(tmp_path / "shared")
            )
        ],
    )

    planned = await set_up_all(
        settings, aws=aws, dry_run=True, sys_block=sys_block / "none", dev=dev
    )
    steps = await set_up_all(settings, aws=aws, sys_block=sys_block, dev=dev)

    assert planned == [AttachVolume(volume, "/dev/sdf")]
    assert steps[0] == Format(loop_device, "ext4", None)
    [state] = (await aws.call("ec2", "describe_volumes", VolumeIds=[volume]))["Volumes"]
    assert state["Attachments"][0]["InstanceId"] == instance
    assert Mount(loop_device, str(tmp_path / "shared"), "ext4") in await mounts()
