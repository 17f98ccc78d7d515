"""EC2 as the head node reads it: what each compute instance is, by id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cfncluster_node.aws import Aws

# Filter values per call; a filter, unlike InstanceIds, does not fail on an unknown id.
_CHUNK = 200


async def describe_instances(aws: Aws, instance_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """EC2's description of each instance it knows, by id; unknown ids are left out."""
    ids = sorted(set(instance_ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = [{"Name": "instance-id", "Values": ids[start : start + _CHUNK]}]
        async for page in aws.pages("ec2", "describe_instances", Filters=chunk):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    found[instance["InstanceId"]] = instance
    return found
