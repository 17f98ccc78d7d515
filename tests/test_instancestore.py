"""Instance-store discovery: NVMe models on Nitro, the metadata's mapping on Xen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cfncluster_node.config import ScratchSettings, StorageSettings
from cfncluster_node.imds import IMDS_ENV
from cfncluster_node.storage.instancestore import NVME_MODEL, discover, nvme_disks, xen_disks
from cfncluster_node.storage.machine import mounts
from cfncluster_node.storage.setup import set_up_all
from tests.conftest import MetadataService


def nvme(sys_block: Path, name: str, model: str) -> None:
    (sys_block / name / "device").mkdir(parents=True)
    (sys_block / name / "device" / "model").write_text(f"{model}                  \n")


def test_nitro_instance_store_is_the_nvme_disks_with_its_model(tmp_path: Path) -> None:
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    nvme(sys_block, "nvme0n1", "Amazon Elastic Block Store")
    nvme(sys_block, "nvme1n1", NVME_MODEL)
    nvme(sys_block, "nvme2n1", NVME_MODEL)

    assert nvme_disks(sys_block, dev) == [f"{dev}/nvme1n1", f"{dev}/nvme2n1"]


def test_xen_instance_store_follows_the_mapping_and_the_xvd_names(tmp_path: Path) -> None:
    for name in ("xvdb", "xvdc", "sdk"):
        (tmp_path / name).touch()
    mapping = {f"ephemeral{n}": f"sd{letter}" for n, letter in ((10, "k"), (1, "c"), (0, "b"))}
    mapping["ephemeral2"] = "sdz"  # mapped, but not on this instance type

    assert xen_disks(mapping, tmp_path) == [
        f"{tmp_path}/xvdb",
        f"{tmp_path}/xvdc",
        f"{tmp_path}/sdk",
    ]


async def test_xen_disks_are_found_through_the_instance_metadata(
    metadata_service: MetadataService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        IMDS_ENV,
        await metadata_service(
            {
                "block-device-mapping/": "ami\nephemeral0\nephemeral1\nroot",
                "block-device-mapping/ephemeral0": "sdb",
                "block-device-mapping/ephemeral1": "sdc",
            }
        ),
    )
    (tmp_path / "sys").mkdir()
    for name in ("xvdb", "xvdc"):
        (tmp_path / name).touch()

    assert await discover(sys_block=tmp_path / "sys", dev=tmp_path) == [
        f"{tmp_path}/xvdb",
        f"{tmp_path}/xvdc",
    ]


async def test_discovered_nvme_disks_become_the_scratch_volume(
    attach: Callable[[int], str], tmp_path: Path
) -> None:
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    for n in (1, 2):
        nvme(sys_block, f"nvme{n}n1", NVME_MODEL)
        (dev / f"nvme{n}n1").symlink_to(attach(128))  # played by loop devices
    scratch = ScratchSettings(mount_point=str(tmp_path / "scratch"), raid="btrfs")

    await set_up_all(StorageSettings(scratch=scratch), sys_block=sys_block, dev=dev)

    assert any(
        m.target == str(tmp_path / "scratch") and m.fs_type == "btrfs" for m in await mounts()
    )
