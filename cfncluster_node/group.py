"""The compute Auto Scaling group: its size, its members, and the few changes made to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cfncluster_node.aws import Aws

_PROTECTION_CHUNK = 50  # SetInstanceProtection's limit


@dataclass(frozen=True)
class Member:
    """What the group says of one of its instances."""

    lifecycle: str
    protected: bool


@dataclass(frozen=True)
class Group:
    desired: int
    min_size: int
    max_size: int
    members: dict[str, Member] = field(default_factory=dict)


def node_limit(configured: int | None, members: Group | None) -> int | None:
    """The most nodes a job can get: the configured size, else the group's own maximum
    (read each time, so a resized stack needs no head-node change). A group that is
    missing or cannot grow sets no limit: its jobs are still counted as demand."""
    if configured is not None:
        return configured
    return members.max_size if members is not None and members.max_size > 0 else None


async def describe(aws: Aws, name: str) -> Group:
    response = await aws.call(
        "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name]
    )
    groups = response.get("AutoScalingGroups", [])
    if not groups:
        return Group(0, 0, 0)
    group = groups[0]
    return Group(
        desired=int(group["DesiredCapacity"]),
        min_size=int(group["MinSize"]),
        max_size=int(group["MaxSize"]),
        members={
            instance["InstanceId"]: Member(
                instance.get("LifecycleState", ""), bool(instance.get("ProtectedFromScaleIn"))
            )
            for instance in group.get("Instances", [])
        },
    )


async def protect(aws: Aws, name: str, instance_ids: Sequence[str], protected: bool) -> None:
    """Scale-in protection on or off: the group never picks a protected instance itself."""
    ids = sorted(instance_ids)
    for start in range(0, len(ids), _PROTECTION_CHUNK):
        await aws.call(
            "autoscaling",
            "set_instance_protection",
            AutoScalingGroupName=name,
            InstanceIds=ids[start : start + _PROTECTION_CHUNK],
            ProtectedFromScaleIn=protected,
        )


async def set_desired(aws: Aws, name: str, capacity: int) -> None:
    await aws.call(
        "autoscaling",
        "set_desired_capacity",
        AutoScalingGroupName=name,
        DesiredCapacity=capacity,
        HonorCooldown=False,
    )


async def terminate(aws: Aws, instance_id: str, *, shrink: bool) -> None:
    """Terminate a member; ``shrink``: the group gets one smaller, else it replaces it."""
    await aws.call(
        "autoscaling",
        "terminate_instance_in_auto_scaling_group",
        InstanceId=instance_id,
        ShouldDecrementDesiredCapacity=shrink,
    )
