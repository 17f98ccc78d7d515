"""The compute side: `cfncluster-node announce` reads IMDSv2 and the head node registers it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from cfncluster_node.aws import Aws
from cfncluster_node.imds import IMDS_ENV
from cfncluster_node.localaws import ClusterResources, MotoServer
from cfncluster_node.localslurm import LocalSlurm
from tests.test_sqswatcher import drain, rows, slurm_hosts

TOKEN = "token-1234"
METADATA = {
    "instance-id": "i-0a1b2c3d4e5f60718",
    "local-hostname": "ip-10-0-3-17.ec2.internal",
    "instance-type": "c5.2xlarge",
    "local-ipv4": "127.0.3.17",
}


@pytest.fixture
async def imds() -> AsyncIterator[str]:
    """A per-instance metadata service speaking IMDSv2 (moto's is static and global)."""

    async def token(request: web.Request) -> web.Response:
        assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        return web.Response(text=TOKEN)

    async def metadata(request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return web.Response(status=401)
        key = request.match_info["key"]
        return web.Response(text=METADATA[key]) if key in METADATA else web.Response(status=404)

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/latest/meta-data/{key}", metadata)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def announce(moto: MotoServer, imds: str, *args: str) -> tuple[int, str]:
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
    code, output = await announce(
        moto, imds, "ready", "--queue-url", cluster.queue_url, "--slots", "8"
    )
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {"ip-10-0-3-17": "127.0.3.17"}
    row = (await rows(aws, cluster))["i-0a1b2c3d4e5f60718"]
    assert (row.slots, row.instance_type) == (8, "c5.2xlarge")

    code, output = await announce(moto, imds, "leave", "--queue-url", cluster.queue_url)
    assert code == 0, output
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}


async def test_flags_override_metadata(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, moto: MotoServer, imds: str
) -> None:
    code, output = await announce(
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
    code, output = await announce(
        moto, "http://127.0.0.1:9", "ready", "--queue-url", cluster.queue_url
    )
    assert code == 1
    assert "instance metadata at http://127.0.0.1:9 did not answer" in output
    assert "Traceback" not in output


async def test_invalid_hostname_is_refused_before_anything_is_sent(
    aws: Aws, cluster: ClusterResources, moto: MotoServer, imds: str
) -> None:
    code, output = await announce(
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
