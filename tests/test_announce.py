"""The compute side: `cfncluster-node announce` reads IMDSv2 and the head node registers it."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from cfncluster_node.aws import Aws
from cfncluster_node.imds import IMDS_ENV
from cfncluster_node.local.cloud import ClusterResources, Instances, Member, MotoServer, queue_depth
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import announce
from cfncluster_node.protocol import READY_EVENT
from tests.conftest import MetadataService
from tests.test_sqswatcher import drain, rows, slurm_hosts


@pytest.fixture
async def node(fleet: Instances) -> Member:
    """The instance the command runs on: one of the group's."""
    [launched] = await fleet.launch(1)
    return launched


@pytest.fixture
async def imds(metadata_service: MetadataService, node: Member) -> str:
    return await metadata_service(
        {
            "instance-id": node.instance_id,
            "local-hostname": f"{node.hostname}.ec2.internal",
            "instance-type": node.instance_type,
            "local-ipv4": node.address,
        }
    )


@pytest.fixture
async def credentials(fleet: Instances, node: Member) -> dict[str, str]:
    """What the SDK finds on the instance: its role's session."""
    return await fleet.credentials(node.instance_id)


async def announce_command(
    moto: MotoServer, imds: str, *args: str, credentials: dict[str, str] | None = None
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cfncluster_node",
        "announce",
        *args,
        "--region",
        "us-east-1",
        env={**os.environ, **moto.env, IMDS_ENV: imds, **(credentials or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


async def test_announce_ready_then_leave_registers_and_unregisters_the_node(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    moto: MotoServer,
    imds: str,
    node: Member,
    credentials: dict[str, str],
) -> None:
    code, output = await announce_command(
        moto,
        imds,
        "ready",
        "--queue-url",
        cluster.queue_url,
        "--slots",
        "8",
        credentials=credentials,
    )
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {node.hostname: node.address}
    row = (await rows(aws, cluster))[node.instance_id]
    assert (row.slots, row.instance_type) == (8, node.instance_type)

    code, output = await announce_command(
        moto, imds, "leave", "--queue-url", cluster.queue_url, credentials=credentials
    )
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}


async def test_flags_override_what_the_node_says_but_the_head_node_believes_ec2(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    moto: MotoServer,
    imds: str,
    node: Member,
    credentials: dict[str, str],
) -> None:
    slots = ("--slots", "2")
    renamed = ("--hostname", "node-a", "--address", "127.0.3.99")
    for flags in (renamed + slots, slots):
        code, output = await announce_command(
            moto,
            imds,
            "ready",
            "--queue-url",
            cluster.queue_url,
            *flags,
            credentials=credentials,
        )
        assert code == 0, output
        await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {node.hostname: node.address}
    assert (await rows(aws, cluster))[node.instance_id].slots == 2
    assert await queue_depth(aws, cluster.dead_letter_url) == 1


async def test_a_join_sent_with_other_credentials_than_the_instances_is_not_believed(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, moto: MotoServer, imds: str
) -> None:
    # The operator's credentials, not the instance's role session.
    code, output = await announce_command(moto, imds, "ready", "--queue-url", cluster.queue_url)
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {}
    assert await rows(aws, cluster) == {}
    assert await queue_depth(aws, cluster.dead_letter_url) == 1


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
