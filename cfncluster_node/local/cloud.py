"""AWS on this machine: moto's HTTP server and the cluster resources a stack would create.

Used by the tests, the benchmarks and the demo; never by a production service. The
server runs in its own process (as it would across a network, and off our event loop's
GIL), and the clients reach it through the SDK's ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import ClientSession, web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cfncluster_node.aws import Aws
from cfncluster_node.node.messages import compute_notice
from cfncluster_node.protocol import LEAVE_EVENT, READY_EVENT, TERMINATE_EVENT, table_definition

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
    #: The role compute nodes send as, each from a session named after its instance.
    compute_role_arn: str
    compute_role_id: str

    def watcher_settings(self, **settings: Any) -> dict[str, Any]:
        """The ``[sqswatcher]`` keys that name this cluster's queue and senders."""
        return {
            "queue": self.queue_url,
            "topic_arn": self.topic_arn,
            "compute_role_id": self.compute_role_id,
            **settings,
        }


async def create_cluster_resources(
    aws: Aws, name: str, *, max_receives: int = 5
) -> ClusterResources:
    """The queue (with its dead-letter queue), topic, table and compute role a cluster stack
    creates."""
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
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = (
        await aws.call(
            "iam",
            "create_role",
            RoleName=f"{name}-compute",
            AssumeRolePolicyDocument=json.dumps(trust),
        )
    )["Role"]
    return ClusterResources(
        queue_url,
        queue_arn,
        dead_letter_url,
        topic_arn,
        f"{name}-instances",
        role["Arn"],
        role["RoleId"],
    )


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
    """Send bodies to the queue, ten to a call, with ``aws``'s credentials: the
    operator's, whom the head node believes no compute event from."""
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])
        ]
        await aws.call("sqs", "send_message_batch", QueueUrl=queue_url, Entries=entries)


async def instance_credentials(aws: Aws, role_arn: str, instance_id: str) -> dict[str, str]:
    """What EC2 gives an instance of ``role_arn``, as the SDK's environment variables: a
    session of the role named after the instance, as SQS will report its sender."""
    found = await aws.call(
        "sts", "assume_role", RoleArn=role_arn, RoleSessionName=instance_id, DurationSeconds=3600
    )
    credentials = found["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }


async def queue_depth(aws: Aws, url: str) -> int:
    """Messages in the queue, visible or in flight."""
    response = await aws.call(
        "sqs",
        "get_queue_attributes",
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(value) for value in response["Attributes"].values())


# Where the tests' compute groups launch: a VPC on loopback, so that the address EC2 gives
# an instance is one this machine can serve (a slurmd's), and the join that names it can
# be checked against EC2 as the head node checks every join.
LOOPBACK_VPC = "127.8.0.0/16"


async def loopback_subnet(aws: Aws) -> str:
    """The loopback VPC's subnet, made on first use."""
    found = await aws.call(
        "ec2", "describe_subnets", Filters=[{"Name": "cidr-block", "Values": [LOOPBACK_VPC]}]
    )
    if found["Subnets"]:
        return str(found["Subnets"][0]["SubnetId"])
    vpc = (await aws.call("ec2", "create_vpc", CidrBlock=LOOPBACK_VPC))["Vpc"]["VpcId"]
    subnet = await aws.call(
        "ec2", "create_subnet", VpcId=vpc, CidrBlock=LOOPBACK_VPC, AvailabilityZone="us-east-1a"
    )
    return str(subnet["Subnet"]["SubnetId"])


async def create_compute_group(
    aws: Aws, name: str, *, desired: int, max_size: int, min_size: int = 0
) -> None:
    """A compute Auto Scaling group, as the stack's, in the loopback VPC; moto launches its
    instances at once."""
    subnet = await loopback_subnet(aws)
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
        VPCZoneIdentifier=subnet,
    )


@dataclass(frozen=True)
class Member:
    """One instance of a compute group, as EC2 describes it."""

    instance_id: str
    hostname: str  # short, as the scheduler names it
    address: str
    instance_type: str

    def notice(self, event: str = READY_EVENT, *, slots: int | None = 4, **claims: str) -> str:
        """What this instance's node sends: its own facts, unless ``claims`` (hostname,
        address) say otherwise, as a hostile one would."""
        return compute_notice(
            event,
            self.instance_id,
            datetime.now(UTC),
            hostname=f"{claims.get('hostname', self.hostname)}.ec2.internal",
            address=claims.get("address", self.address),
            slots=slots,
            instance_type=self.instance_type,
        )


def member(instance: dict[str, Any]) -> Member:
    return Member(
        instance["InstanceId"],
        instance["PrivateDnsName"].split(".")[0],
        instance["PrivateIpAddress"],
        instance["InstanceType"],
    )


class Instances:
    """A compute group's instances, played as EC2 would run them: launched by the group,
    and each sending with its own role session (what a job on it could send, too).

    A real node's SDK signs its requests with its own credentials; so does this, for a
    thousand nodes at once: each SendMessageBatch is signed (SigV4) with the instance's
    credentials and posted on one shared connection pool, since an SDK client apiece
    would cost the benchmarks 50 ms of CPU per node. ``async with``: the pool's life.
    """

    def __init__(self, aws: Aws, *, group: str, queue_url: str, role_arn: str) -> None:
        self._aws = aws
        self.group = group
        self._queue_url = queue_url
        self._role_arn = role_arn
        self._credentials: dict[str, dict[str, str]] = {}
        self._http: ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._http = ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def launch(self, count: int) -> list[Member]:
        """``count`` more instances of the group, in the order of their addresses."""
        found = await self._aws.call(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[self.group]
        )
        [described] = found["AutoScalingGroups"]
        before = {i["InstanceId"] for i in described["Instances"]}
        await self._aws.call(
            "autoscaling",
            "set_desired_capacity",
            AutoScalingGroupName=self.group,
            DesiredCapacity=described["DesiredCapacity"] + count,
        )
        found = await self._aws.call(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[self.group]
        )
        new = {i["InstanceId"] for i in found["AutoScalingGroups"][0]["Instances"]} - before
        launched = await self.describe(new)
        return sorted(launched, key=lambda m: ipaddress.ip_address(m.address))

    async def reuse_address(self, old: Member) -> Member:
        """``old`` retired by the group, and its address, so its name, given to a new
        instance of the group: what EC2 does all the time."""
        await self._aws.call(
            "autoscaling",
            "terminate_instance_in_auto_scaling_group",
            InstanceId=old.instance_id,
            ShouldDecrementDesiredCapacity=True,
        )
        launched = await self._aws.call(
            "ec2",
            "run_instances",
            ImageId="ami-12c6146b",
            InstanceType=old.instance_type,
            MinCount=1,
            MaxCount=1,
            SubnetId=await loopback_subnet(self._aws),
            PrivateIpAddress=old.address,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": "aws:autoscaling:groupName", "Value": self.group}],
                }
            ],
        )
        [new] = await self.describe([launched["Instances"][0]["InstanceId"]])
        return new

    async def describe(self, instance_ids: Iterable[str]) -> list[Member]:
        ids = sorted(instance_ids)
        members: list[Member] = []
        for start in range(0, len(ids), 200):
            found = await self._aws.call(
                "ec2", "describe_instances", InstanceIds=ids[start : start + 200]
            )
            members += [member(i) for r in found["Reservations"] for i in r["Instances"]]
        return members

    async def credentials(self, instance_id: str) -> dict[str, str]:
        """The instance's role credentials, as its metadata service serves them."""
        if instance_id not in self._credentials:
            self._credentials[instance_id] = await instance_credentials(
                self._aws, self._role_arn, instance_id
            )
        return self._credentials[instance_id]

    async def send(
        self, instance_id: str, bodies: Sequence[str], *, queue_url: str | None = None
    ) -> None:
        """Send bodies as ``instance_id`` (whatever instance they name), ten to a call, to
        the cluster's queue or ``queue_url``."""
        assert self._http is not None, "Instances is used with async with"
        credentials = await self.credentials(instance_id)
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        signer = SigV4Auth(
            Credentials(
                credentials["AWS_ACCESS_KEY_ID"],
                credentials["AWS_SECRET_ACCESS_KEY"],
                credentials["AWS_SESSION_TOKEN"],
            ),
            "sqs",
            region,
        )
        endpoint = os.environ.get("AWS_ENDPOINT_URL", f"https://sqs.{region}.amazonaws.com")
        for start in range(0, len(bodies), 10):
            chunk = bodies[start : start + 10]
            payload = json.dumps(
                {
                    "QueueUrl": queue_url or self._queue_url,
                    "Entries": [{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)],
                }
            )
            request = AWSRequest(
                method="POST",
                url=endpoint,
                data=payload,
                headers={
                    "Content-Type": "application/x-amz-json-1.0",
                    "X-Amz-Target": "AmazonSQS.SendMessageBatch",
                },
            )
            signer.add_auth(request)
            async with self._http.post(
                endpoint, data=payload, headers=dict(request.headers.items())
            ) as response:
                answer = await response.json(content_type=None)
                if response.status != 200 or answer.get("Failed"):
                    raise RuntimeError(f"{instance_id} could not send: {answer}")

    async def join(self, *members: Member, slots: int = 4) -> None:
        """Each member's own join, sent as itself."""
        await asyncio.gather(*(self.send(m.instance_id, [m.notice(slots=slots)]) for m in members))

    async def leave(self, *members: Member) -> None:
        await asyncio.gather(
            *(self.send(m.instance_id, [m.notice(LEAVE_EVENT, slots=None)]) for m in members)
        )


def forgeries(attacker: Member, victim: Member, topic_arn: str) -> list[str]:
    """What a job on ``attacker`` could send, with its node's credentials, to take
    ``victim``'s place or do it harm: none of it may have an effect."""
    terminate = json.dumps(
        {
            "Type": "Notification",
            "TopicArn": topic_arn,
            "Message": autoscaling_notification(TERMINATE_EVENT, victim.instance_id),
        }
    )
    return [
        "{not json",
        json.dumps({"Type": "Notification", "Message": "[]"}),
        victim.notice(LEAVE_EVENT, slots=None),
        victim.notice(),
        terminate,
        attacker.notice(hostname=victim.hostname),
        attacker.notice(address=victim.address),
        json.dumps({"Event": "x" * 1000}),
    ]
