"""Shared fixtures: the real parts, started once per session and reset between tests.

- ``moto``: moto's HTTP server in its own process; this process's AWS clients reach it
  through ``AWS_ENDPOINT_URL``, exactly as in production.
- ``slurm``: a private slurmctld (Debian's slurm-wlm) with its own slurm.conf and ports.
- ``sge``: a private Grid Engine qmaster (Debian's gridengine) in namespaces of its own.
- ``scheduler``: each backend in turn, on its real scheduler (the contract suite).
- ``compute_node``: one compute group instance, joined, with a real slurmd.
- ``attach`` / ``loop_device``: loop devices over sparse files, detached afterwards.
- ``metadata_service``: a per-instance IMDSv2 stub.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from cfncluster_node import aws as aws_module
from cfncluster_node import logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import AwsSettings
from cfncluster_node.local import cloud
from cfncluster_node.local.cloud import (
    ClusterResources,
    Instances,
    MotoServer,
    create_cluster_resources,
    create_compute_group,
)
from cfncluster_node.local.sge import LocalSge
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import group
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.registry import Registry
from cfncluster_node.schedulers import Scheduler
from cfncluster_node.schedulers.sge import Sge
from cfncluster_node.schedulers.slurm import Slurm
from tests import privilege
from tests.clusters import CLUSTER_CONFIG

REGION = "us-east-1"


def pytest_configure() -> None:
    logs.configure("debug", "json")


# The fixtures that start a real part: a test that uses none of them is pure.
REAL_PARTS = {
    "moto_server",
    "local_slurm",
    "local_sge",
    "scheduler",
    "attach",
    "metadata_service",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        real = fixtures & REAL_PARTS or item.get_closest_marker("real")
        item.add_marker(pytest.mark.real if real else pytest.mark.pure)
    # The check over the whole session's AWS calls runs after every test that makes them.
    last = [item for item in items if item.get_closest_marker("after_all")]
    items[:] = [item for item in items if item not in last] + last


#: Every AWS call the code made during this session (tests/privilege.py).
SESSION_CALLS: list[privilege.Call] = []
POLICIES = privilege.Policies.of(CLUSTER_CONFIG, REGION)


def moto_tags(ids: list[str]) -> dict[str, dict[str, str]]:
    """EC2 resources' tags as moto holds them (after the test, before the next reset)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    found: dict[str, dict[str, str]] = {}
    filters = [{"Name": "resource-id", "Values": ids}]
    for page in ec2.get_paginator("describe_tags").paginate(Filters=filters):
        for tag in page["Tags"]:
            found.setdefault(tag["ResourceId"], {})[tag["Key"]] = tag["Value"]
    return found


@pytest.fixture(autouse=True)
def least_privilege(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test whose code makes an AWS call its role's policy does not allow: the
    policies of CLUSTER_CONFIG, for the stack ``test``, unless a ``privilege`` marker names
    another ``stack`` or ``cluster`` config."""
    marker = request.node.get_closest_marker("privilege")
    options = marker.kwargs if marker else {}
    stack = options.get("stack", "test")
    policies = (
        privilege.Policies.of(options["cluster"], REGION) if "cluster" in options else POLICIES
    )
    recorder = privilege.Recorder(moto_tags)
    aws_module.observers.append(recorder)
    try:
        yield
    finally:
        aws_module.observers.remove(recorder)
    calls = privilege.resolve_tags(recorder.calls, moto_tags)
    SESSION_CALLS.extend(calls)
    denied = sorted({str(call) for call in calls if not policies.allows(call, stack)})
    assert not denied, "calls the stack's IAM policies do not allow:\n" + "\n".join(denied)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        server.use()
        os.environ["AWS_DEFAULT_REGION"] = REGION
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server


@contextlib.contextmanager
def daemon_root(prefix: str) -> Iterator[Path]:
    # Not under pytest's tmp_path: the daemons run as their own users (slurm, sgeadmin),
    # who cannot enter it.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[LocalSlurm]:
    with daemon_root("cfncluster-slurm-") as root, LocalSlurm(root) as slurm:
        yield slurm


@pytest.fixture
def slurm(local_slurm: LocalSlurm) -> LocalSlurm:
    local_slurm.reset()
    return local_slurm


@pytest.fixture(scope="session")
def local_sge() -> Iterator[LocalSge]:
    with daemon_root("cfncluster-sge-") as root, LocalSge(root) as sge:
        yield sge


@pytest.fixture
def sge(local_sge: LocalSge) -> LocalSge:
    local_sge.reset()
    return local_sge


@pytest.fixture(
    params=[
        pytest.param("slurm", marks=pytest.mark.slurm),
        pytest.param("sge", marks=pytest.mark.sge),
    ]
)
def scheduler(request: pytest.FixtureRequest) -> Scheduler:
    """Each backend in turn, on its real scheduler, emptied first."""
    if request.param == "sge":
        return Sge(request.getfixturevalue("sge").settings)
    return Slurm(request.getfixturevalue("slurm").settings)


@pytest.fixture
async def aws(moto: MotoServer) -> AsyncIterator[Aws]:
    # Two attempts: moto answers unimplemented calls with a 500 the SDK would retry.
    async with Aws(AwsSettings(max_attempts=2), REGION) as client:
        yield client


@pytest.fixture
async def cluster(aws: Aws) -> ClusterResources:
    return await create_cluster_resources(aws, "test", max_receives=3)


@pytest.fixture
async def fleet(aws: Aws, cluster: ClusterResources) -> AsyncIterator[Instances]:
    """The compute group, empty, in the loopback VPC: ``launch`` adds instances, and
    each sends as its own role session."""
    await create_compute_group(aws, GROUP, desired=0, max_size=500)
    async with Instances(
        aws, group=GROUP, queue_url=cluster.queue_url, role_arn=cluster.compute_role_arn
    ) as instances:
        yield instances


NODE = "ip-10-5-0-1"
# Named as the stack names it: the IAM policies allow the head node `STACK-compute` only.
GROUP = "test-compute"
CPUS = os.cpu_count() or 1


@pytest.fixture
async def compute_node(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> AsyncIterator[str]:
    """One group instance, joined, with a real slurmd: the node jobs really run on."""
    await create_compute_group(aws, GROUP, desired=1, max_size=2)
    [instance] = (await group.describe(aws, GROUP)).members
    registry = Registry(
        InstanceTable(aws, cluster.table),
        Slurm(slurm.settings),
        default_slots=CPUS,
        tombstone_for=timedelta(days=7),
    )
    join = InstanceEvent(
        EventKind.READY,
        instance,
        datetime.now(UTC),
        hostname=NODE,
        address="127.0.0.1",
        slots=CPUS,
    )
    assert (await registry.apply([join])).failed == set()
    slurm.start_slurmd(NODE, CPUS)
    yield instance
    slurm.stop_slurmds()


def wait_running(slurm: LocalSlurm, job: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"],
            env={**os.environ, **slurm.env},
            capture_output=True,
            text=True,
        ).stdout.strip()
        if state == "RUNNING":
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not start")


MetadataService = Callable[[dict[str, str]], Awaitable[str]]


@pytest.fixture
async def metadata_service() -> AsyncIterator[MetadataService]:
    """Per-instance metadata speaking IMDSv2 (moto's is static and global): start(values)."""
    async with contextlib.AsyncExitStack() as services:

        async def start(values: dict[str, str]) -> str:
            return await services.enter_async_context(cloud.metadata_service(values))

        yield start


@pytest.fixture
def attach(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Loop devices over sparse files; unmounted and detached after the test."""
    attached: list[str] = []

    def one(megabytes: int) -> str:
        image = tmp_path / f"disk{len(attached)}.img"
        with image.open("wb") as file:
            file.truncate(megabytes * 1024 * 1024)
        result = subprocess.run(
            ["losetup", "-f", "--show", str(image)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"no loop device on this machine: {result.stderr.strip()}")
        attached.append(result.stdout.strip())
        return attached[-1]

    yield one
    for device in attached:
        subprocess.run(["umount", device], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)


@pytest.fixture
def loop_device(attach: Callable[[int], str]) -> str:
    return attach(64)
