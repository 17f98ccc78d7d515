"""Cluster configs for the launcher's and the template's tests."""

from __future__ import annotations

from typing import Any

from cfncluster_node.aws import Aws
from cfncluster_node.stack.clusterconfig import ClusterConfig

BASE: dict[str, Any] = {
    "cluster": {"region": "us-east-1"},
    "network": {
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_id": "subnet-0123456789abcdef0",
        "availability_zone": "us-east-1a",
        "vpc_cidr": "10.0.0.0/16",
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


async def on_moto(aws: Aws, **sections: dict[str, Any]) -> ClusterConfig:
    """A cluster in moto's default VPC."""
    subnet = (await aws.call("ec2", "describe_subnets"))["Subnets"][0]
    network = {
        "vpc_id": subnet["VpcId"],
        "subnet_id": subnet["SubnetId"],
        "availability_zone": subnet["AvailabilityZone"],
        "vpc_cidr": "172.31.0.0/16",
    }
    return cluster_config(**{"network": network, **sections})
