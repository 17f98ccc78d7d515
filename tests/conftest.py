"""Shared fixtures: the real parts, started once per session and reset between tests.

- ``moto``: moto's HTTP server in its own process; this process's AWS clients reach it
  through ``AWS_ENDPOINT_URL``, exactly as in production.
- ``slurm``: a private slurmctld (Debian's slurm-wlm) with its own slurm.conf and ports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cfncluster_node import logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import AwsSettings
from cfncluster_node.localaws import ClusterResources, MotoServer, create_cluster_resources
from cfncluster_node.localslurm import LocalSlurm

REGION = "us-east-1"


def pytest_configure() -> None:
    logs.configure("debug", "json")


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


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[LocalSlurm]:
    # Not under pytest's tmp_path: slurmctld runs as the slurm user, who cannot enter it.
    root = Path(tempfile.mkdtemp(prefix="cfncluster-slurm-", dir="/var/tmp"))
    try:
        with LocalSlurm(root) as slurm:
            yield slurm
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm(local_slurm: LocalSlurm) -> LocalSlurm:
    local_slurm.reset()
    return local_slurm


@pytest.fixture
async def aws(moto: MotoServer) -> AsyncIterator[Aws]:
    # Two attempts: moto answers unimplemented calls with a 500 the SDK would retry.
    async with Aws(AwsSettings(max_attempts=2), REGION) as client:
        yield client


@pytest.fixture
async def cluster(aws: Aws) -> ClusterResources:
    return await create_cluster_resources(aws, "test", max_receives=3)
