"""The compute Auto Scaling group as the head node reads and changes it: its size and
members (``fleet.Group``), scale-in protection, the desired capacity, terminations."""

from __future__ import annotations

from collections.abc import Sequence

from cfncluster_node.aws import Aws
from cfncluster_node.node.fleet import Group, Member

_PROTECTION_CHUNK = 50  # SetInstanceProtection's limit


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
