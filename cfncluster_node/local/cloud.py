"""AWS on this machine: moto's HTTP server and the cluster resources a stack would create.

Used by the tests, the benchmarks and the demo; never by a production service. The
server runs in its own process (as it would across a network, and off our event loop's
GIL), and the clients reach it through the SDK's ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web

from cfncluster_node.aws import Aws
from cfncluster_node.protocol import table_definition

ACCOUNT = "123456789012"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class MotoServer:
    """``with MotoServer() as moto:`` starts moto's server on a free loopback port.

    ``stock=False`` (the default) runs it with the SQS fixes of ``motoserver``: without
    them moto loses and duplicates messages under concurrent receivers and deletes.
    ``host``: another address to listen on, one of a network namespace the test made
    (the VM test's bridge), never one outside it.
    """

    def __init__(self, *, stock: bool = False, host: str = "127.0.0.1") -> None:
        self.module = "moto.server" if stock else "cfncluster_node.local.motoserver"
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, **CREDENTIALS}

    def start(self) -> None:
        # MOTO_SERVER_LOG=path keeps the server's log, with the tracebacks behind its 500s.
        log = os.environ.get("MOTO_SERVER_LOG")
        with open(log or os.devnull, "ab") as sink:
            self._process = subprocess.Popen(
                [sys.executable, "-m", self.module, "-H", self.host, "-p", str(self.port)],
                stdout=sink,
                stderr=sink,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                return
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}")
            time.sleep(0.1)
        raise RuntimeError("moto_server did not answer within 30 s")

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def use(self) -> None:
        """Point this process's AWS clients at the server."""
        os.environ.update(self.env)


@contextlib.asynccontextmanager
async def metadata_service(values: dict[str, str], host: str = "127.0.0.1") -> AsyncIterator[str]:
    """One instance's metadata over IMDSv2 (moto's is static and global); yields its URL.
    ``host``: as MotoServer's."""
    token = "token-1234"

    async def issue_token(request: web.Request) -> web.Response:
        if not request.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return web.Response(status=400)
        return web.Response(text=token)

    async def answer(request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") != token:
            return web.Response(status=401)
        key = request.match_info["key"]
        return web.Response(text=values[key]) if key in values else web.Response(status=404)

    app = web.Application()
    app.router.add_put("/latest/api/token", issue_token)
    app.router.add_get("/latest/meta-data/{key:.+}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class ClusterResources:
    queue_url: str
    queue_arn: str
    dead_letter_url: str
    topic_arn: str
    table: str


async def create_cluster_resources(
    aws: Aws, name: str, *, max_receives: int = 5
) -> ClusterResources:
    """The queue (with its dead-letter queue), topic and table a cluster stack creates."""
    dead_letter_url = (await aws.call("sqs", "create_queue", QueueName=f"{name}-dlq"))["QueueUrl"]
    dead_letter_arn = await _queue_arn(aws, dead_letter_url)
    redrive = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(max_receives)}
    queue_url = (
        await aws.call(
            "sqs",
            "create_queue",
            QueueName=f"{name}-queue",
            Attributes={"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "120"},
        )
    )["QueueUrl"]
    queue_arn = await _queue_arn(aws, queue_url)
    topic_arn = (await aws.call("sns", "create_topic", Name=f"{name}-events"))["TopicArn"]
    await aws.call("sns", "subscribe", TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    await aws.call("dynamodb", "create_table", **table_definition(f"{name}-instances"))
    return ClusterResources(queue_url, queue_arn, dead_letter_url, topic_arn, f"{name}-instances")


async def _queue_arn(aws: Aws, url: str) -> str:
    response = await aws.call(
        "sqs", "get_queue_attributes", QueueUrl=url, AttributeNames=["QueueArn"]
    )
    arn: str = response["Attributes"]["QueueArn"]
    return arn


def autoscaling_notification(
    event: str, instance_id: str, *, group: str = "compute", when: datetime | None = None
) -> str:
    """An Auto Scaling notification as Auto Scaling publishes it to the SNS topic.

    moto's Auto Scaling sends none, so tests and the demo publish them in its place.
    """
    when = when or datetime.now(UTC)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    verb = "Launching" if "LAUNCH" in event else "Terminating"
    message: dict[str, Any] = {
        "Progress": 50,
        "AccountId": ACCOUNT,
        "Description": f"{verb} EC2 instance: {instance_id}",
        "RequestId": "a0b1c2d3-0000-4000-8000-000000000000",
        "EndTime": stamp,
        "AutoScalingGroupARN": (
            f"arn:aws:autoscaling:us-east-1:{ACCOUNT}:autoScalingGroup:"
            f"00000000-0000-4000-8000-000000000000:autoScalingGroupName/{group}"
        ),
        "ActivityId": "a0b1c2d3-0000-4000-8000-000000000001",
        "StartTime": stamp,
        "Service": "AWS Auto Scaling",
        "Time": stamp,
        "EC2InstanceId": instance_id,
        "StatusCode": "InProgress",
        "StatusMessage": "",
        "Details": {"Subnet ID": "subnet-0123abcd", "Availability Zone": "us-east-1a"},
        "AutoScalingGroupName": group,
        "Cause": f"At {stamp} a user request changed the desired capacity.",
        "Event": event,
    }
    return json.dumps(message)


async def publish_autoscaling(
    aws: Aws, topic_arn: str, event: str, instance_id: str, *, when: datetime | None = None
) -> None:
    await aws.call(
        "sns",
        "publish",
        TopicArn=topic_arn,
        Subject=f"Auto Scaling: {event}",
        Message=autoscaling_notification(event, instance_id, when=when),
    )


async def send_messages(aws: Aws, queue_url: str, bodies: list[str]) -> None:
    """Send bodies to the queue, ten to a call, as compute nodes (or a test) would."""
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])
        ]
        await aws.call("sqs", "send_message_batch", QueueUrl=queue_url, Entries=entries)


async def queue_depth(aws: Aws, url: str) -> int:
    """Messages in the queue, visible or in flight."""
    response = await aws.call(
        "sqs",
        "get_queue_attributes",
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(value) for value in response["Attributes"].values())


async def create_compute_group(
    aws: Aws, name: str, *, desired: int, max_size: int, min_size: int = 0
) -> None:
    """A compute Auto Scaling group, as the stack's; moto launches its instances at once."""
    await aws.call(
        "autoscaling",
        "create_launch_configuration",
        LaunchConfigurationName=name,
        ImageId="ami-12c6146b",
        InstanceType="c5.large",
    )
    await aws.call(
        "autoscaling",
        "create_auto_scaling_group",
        AutoScalingGroupName=name,
        LaunchConfigurationName=name,
        MinSize=min_size,
        MaxSize=max_size,
        DesiredCapacity=desired,
        AvailabilityZones=["us-east-1a"],
    )
