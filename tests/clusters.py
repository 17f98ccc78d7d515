"""Cluster configs for the launcher's and the template's tests, and head-node configs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cfncluster_node.aws import Aws
from cfncluster_node.local.cloud import ClusterResources, loopback_subnet
from cfncluster_node.stack.clusterconfig import ClusterConfig

# Who may send on a made-up cluster's queue (its topic, its compute role).
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:demo-events"
COMPUTE_ROLE_ID = "AROAEXAMPLEROLEID0001"


def node_toml(
    resources: ClusterResources | None = None,
    *,
    stack: str = "demo",
    group: str = "demo-compute",
    cluster: str = "",
    sqswatcher: str = "",
    after: str = "",
) -> str:
    """The least a head node's node.toml holds: the stack's resources and who may send on
    its queue, for ``resources`` (a cluster in moto) or made-up names. ``cluster`` and
    ``sqswatcher``: more lines in those sections; ``after``: more sections."""
    table, queue, topic, role = (
        (resources.table, resources.queue_url, resources.topic_arn, resources.compute_role_id)
        if resources
        else (f"{stack}-instances", f"{stack}-queue", TOPIC_ARN, COMPUTE_ROLE_ID)
    )
    return (
        f'[cluster]\nstack_name = "{stack}"\nregion = "us-east-1"\ntable = "{table}"\n'
        f'compute_group = "{group}"\n{cluster}'
        f'[sqswatcher]\nqueue = "{queue}"\ntopic_arn = "{topic}"\ncompute_role_id = "{role}"\n'
        f"{sqswatcher}{after}"
    )


BASE: dict[str, Any] = {
    "cluster": {"region": "us-east-1"},
    "network": {
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_id": "subnet-0123456789abcdef0",
        "availability_zone": "us-east-1a",
    },
    "head_node": {"image_id": "ami-0123456789abcdef0"},
    "compute": {"image_id": "ami-0fedcba9876543210", "max_size": 8},
}


def cluster_config(**sections: dict[str, Any]) -> ClusterConfig:
    """BASE with some sections changed key by key (a list section is replaced)."""
    data = {name: dict(values) for name, values in BASE.items()}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return ClusterConfig.model_validate(data)


# Hook scripts in S3: the roles may fetch these, and the tests fetch them (test_hooks.py).
HOOK_BUCKET = "cfncluster-test-hooks"
HOOKS = {
    "pre_install": {"url": f"s3://{HOOK_BUCKET}/pre.sh", "args": ["--first", "two words"]},
    "post_install": {"url": f"s3://{HOOK_BUCKET}/post.sh"},
}
CLUSTER_CONFIG = cluster_config(hooks=HOOKS)


async def on_moto(
    aws: Aws, *, default_vpc: bool = False, **sections: dict[str, Any]
) -> ClusterConfig:
    """A cluster in the loopback VPC, whose addresses this machine can serve; or in moto's
    default VPC, for hosts of a network namespace of the test's own (the VM test's)."""
    if default_vpc:
        [subnet, *_] = (await aws.call("ec2", "describe_subnets"))["Subnets"]
    else:
        subnet_id = await loopback_subnet(aws)
        found = await aws.call("ec2", "describe_subnets", SubnetIds=[subnet_id])
        [subnet] = found["Subnets"]
    network = {
        "vpc_id": subnet["VpcId"],
        "subnet_id": subnet["SubnetId"],
        "availability_zone": subnet["AvailabilityZone"],
    }
    return cluster_config(**{"network": network, **sections})


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll ``check`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not reached within {timeout} s")
