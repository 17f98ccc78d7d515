"""The compute side: `cfncluster-node announce` reads IMDSv2 and the head node registers it."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from cfncluster_node.aws import Aws
from cfncluster_node.imds import IMDS_ENV
from cfncluster_node.local.cloud import ClusterResources, MotoServer, queue_depth
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import announce
from cfncluster_node.protocol import READY_EVENT
from tests.conftest import MetadataService
from tests.test_sqswatcher import drain, rows, slurm_hosts

METADATA = {
    "instance-id": "i-0a1b2c3d4e5f60718",
    "local-hostname": "ip-10-0-3-17.ec2.internal",
    "instance-type": "c5.2xlarge",
    "local-ipv4": "127.0.3.17",
}


@pytest.fixture
async def imds(metadata_service: MetadataService) -> str:
    return await metadata_service(METADATA)


async def announce_command(moto: MotoServer, imds: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cfncluster_node",
        "announce",
        *args,
        "--region",
        "us-east-1",
        env={**os.environ, **moto.env, IMDS_ENV: imds},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


async def test_announce_ready_then_leave_registers_and_unregisters_the_node(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, moto: MotoServer, imds: str
) -> None:
    code, output = await announce_command(
        moto, imds, "ready", "--queue-url", cluster.queue_url, "--slots", "8"
    )
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {"ip-10-0-3-17": "127.0.3.17"}
    row = (await rows(aws, cluster))["i-0a1b2c3d4e5f60718"]
    assert (row.slots, row.instance_type) == (8, "c5.2xlarge")

    code, output = await announce_command(moto, imds, "leave", "--queue-url", cluster.queue_url)
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}


async def test_flags_override_metadata(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, moto: MotoServer, imds: str
) -> None:
    code, output = await announce_command(
        moto,
        imds,
        "ready",
        "--queue-url",
        cluster.queue_url,
        "--hostname",
        "node-a",
        "--address",
        "127.0.3.99",
        "--slots",
        "2",
    )
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {"node-a": "127.0.3.99"}


async def test_unreachable_metadata_service_is_one_clear_error(
    cluster: ClusterResources, moto: MotoServer
) -> None:
    code, output = await announce_command(
        moto, "http://127.0.0.1:9", "ready", "--queue-url", cluster.queue_url
    )
    assert code == 1
    assert "instance metadata at http://127.0.0.1:9 did not answer" in output
    assert "Traceback" not in output


async def test_invalid_hostname_is_refused_before_anything_is_sent(
    aws: Aws, cluster: ClusterResources, moto: MotoServer, imds: str
) -> None:
    code, output = await announce_command(
        moto, imds, "ready", "--queue-url", cluster.queue_url, "--hostname", "a b;reboot"
    )
    assert code == 1
    assert "'LocalHostname' is not a hostname" in output
    attributes = await aws.call(
        "sqs",
        "get_queue_attributes",
        QueueUrl=cluster.queue_url,
        AttributeNames=["ApproximateNumberOfMessages"],
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"


async def test_the_join_is_one_message_to_the_queue_sent_in_process(
    aws: Aws, cluster: ClusterResources, imds: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the command runs, here in the suite's process: its AWS calls are checked
    # against the compute role's policy (tests/test_privilege.py).
    monkeypatch.setenv(IMDS_ENV, imds)
    identity = await announce.identify(
        instance_id=None, hostname=None, instance_type=None, address=None, slots=4
    )
    await announce.send(aws, cluster.queue_url, READY_EVENT, identity)
    assert await queue_depth(aws, cluster.queue_url) == 1
