"""motoserver's fixes, through the real wire protocol: CloudFormation's creation policies,
SQS's senders and costs, EC2's addresses."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.local import cloud
from cfncluster_node.local.cloud import ClusterResources
from cfncluster_node.protocol import LAUNCH_EVENT

STACK = "cluster"


def queue(name: str, resource_signal: dict[str, Any] | None) -> dict[str, Any]:
    """A queue resource, with a creation policy of ``resource_signal`` unless None."""
    resource: dict[str, Any] = {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": name}}
    if resource_signal is not None:
        resource["CreationPolicy"] = {"ResourceSignal": resource_signal}
    return resource


def template(resource_signal: dict[str, Any] | None, **more: dict[str, Any]) -> str:
    """Head, a queue with a creation policy of ``resource_signal`` unless None, and ``more``."""
    return json.dumps({"Resources": {"Head": queue("head", resource_signal), **more}})


async def create(aws: Aws, body: str, **params: Any) -> str:
    created = await aws.call(
        "cloudformation", "create_stack", StackName=STACK, TemplateBody=body, **params
    )
    stack_id: str = created["StackId"]
    return stack_id


async def status(aws: Aws, stack: str = STACK) -> str:
    [described] = (await aws.call("cloudformation", "describe_stacks", StackName=stack))["Stacks"]
    stack_status: str = described["StackStatus"]
    return stack_status


async def events(aws: Aws, stack: str = STACK) -> list[tuple[str, str, str]]:
    """(logical id, status, reason) of the stack's events, oldest first."""
    described = await aws.call("cloudformation", "describe_stack_events", StackName=stack)
    return [
        (e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason", ""))
        for e in reversed(described["StackEvents"])
    ]


async def signal(
    aws: Aws, unique_id: str, outcome: str = "SUCCESS", stack: str = STACK, resource: str = "Head"
) -> None:
    await aws.call(
        "cloudformation",
        "signal_resource",
        StackName=stack,
        LogicalResourceId=resource,
        UniqueId=unique_id,
        Status=outcome,
    )


async def queue_exists(aws: Aws) -> bool:
    return bool((await aws.call("sqs", "list_queues")).get("QueueUrls"))


async def test_waits_for_the_signal(aws: Aws) -> None:
    stack_id = await create(aws, template({"Timeout": "PT30M"}))
    assert await status(aws) == "CREATE_IN_PROGRESS"
    assert await queue_exists(aws)

    await signal(aws, "i-1", stack=stack_id)

    assert await status(aws) == "CREATE_COMPLETE"
    assert await events(aws) == [
        (STACK, "CREATE_IN_PROGRESS", "User Initiated"),
        ("Head", "CREATE_IN_PROGRESS", "Resource creation Initiated"),
        ("Head", "CREATE_IN_PROGRESS", "Received SUCCESS signal with UniqueId i-1"),
        ("Head", "CREATE_COMPLETE", ""),
        (STACK, "CREATE_COMPLETE", ""),
    ]
    described = await aws.call("cloudformation", "describe_stack_events", StackName=STACK)
    head = described["StackEvents"][1]
    assert head["ResourceType"] == "AWS::SQS::Queue"
    assert head["PhysicalResourceId"].endswith("/head")


async def test_count_needs_distinct_unique_ids(aws: Aws) -> None:
    await create(aws, template({"Count": 2}))
    await signal(aws, "i-1")
    await signal(aws, "i-1")
    assert await status(aws) == "CREATE_IN_PROGRESS"

    await signal(aws, "i-2")

    assert await status(aws) == "CREATE_COMPLETE"


async def test_failure_rolls_back(aws: Aws) -> None:
    await create(aws, template({}))

    await signal(aws, "i-1", "FAILURE")

    assert await status(aws) == "ROLLBACK_COMPLETE"
    assert (await events(aws))[-3:] == [
        ("Head", "CREATE_FAILED", "Received FAILURE signal with UniqueId i-1"),
        (
            STACK,
            "ROLLBACK_IN_PROGRESS",
            "The following resource(s) failed to create: [Head]. Rollback requested by user.",
        ),
        (STACK, "ROLLBACK_COMPLETE", ""),
    ]
    assert not await queue_exists(aws)


@pytest.mark.parametrize("failure", [{"DisableRollback": True}, {"OnFailure": "DO_NOTHING"}])
async def test_failure_without_rollback(aws: Aws, failure: dict[str, Any]) -> None:
    await create(aws, template({}), **failure)

    await signal(aws, "i-1", "FAILURE")

    assert await status(aws) == "CREATE_FAILED"
    assert (await events(aws))[-2:] == [
        ("Head", "CREATE_FAILED", "Received FAILURE signal with UniqueId i-1"),
        (STACK, "CREATE_FAILED", "The following resource(s) failed to create: [Head]. "),
    ]
    assert await queue_exists(aws)


async def test_failure_deletes_on_request(aws: Aws) -> None:
    stack_id = await create(aws, template({}), OnFailure="DELETE")

    await signal(aws, "i-1", "FAILURE")

    assert await status(aws, stack_id) == "DELETE_COMPLETE"
    assert not await queue_exists(aws)


async def test_timeout_fails_the_creation(aws: Aws) -> None:
    await create(aws, template({"Count": 2, "Timeout": "PT1S"}))
    await signal(aws, "i-1")
    await asyncio.sleep(1.1)

    assert await status(aws) == "ROLLBACK_COMPLETE"
    timed_out = "Failed to receive 1 resource signal(s) within the specified duration"
    assert ("Head", "CREATE_FAILED", timed_out) in await events(aws)
    with pytest.raises(AwsError) as late:
        await signal(aws, "i-2")
    assert late.value.code == "ValidationError"


async def test_delete_while_waiting(aws: Aws) -> None:
    stack_id = await create(aws, template({}))

    await aws.call("cloudformation", "delete_stack", StackName=STACK)

    assert await status(aws, stack_id) == "DELETE_COMPLETE"
    assert not await queue_exists(aws)


async def test_signal_errors(aws: Aws) -> None:
    with pytest.raises(AwsError, match="Stack with id nowhere does not exist") as unknown:
        await signal(aws, "i-1", stack="nowhere")
    assert unknown.value.code == "ValidationError"

    stack_id = await create(aws, template({}, Tail=queue("tail", None)))
    with pytest.raises(AwsError, match="Resource Nowhere does not exist for stack cluster"):
        await signal(aws, "i-1", resource="Nowhere")
    refused = f"Resource Tail in stack {stack_id} is in CREATE_COMPLETE state"
    with pytest.raises(AwsError, match=re.escape(refused) + " and cannot be signaled$"):
        await signal(aws, "i-1", resource="Tail")


async def test_no_policy_is_unaffected(aws: Aws) -> None:
    await create(aws, template(None))

    assert await status(aws) == "CREATE_COMPLETE"
    assert await events(aws) == [
        (STACK, "CREATE_IN_PROGRESS", "User Initiated"),
        (STACK, "CREATE_COMPLETE", ""),
    ]
    refusal = "is in CREATE_COMPLETE state and cannot be signaled"
    with pytest.raises(AwsError, match=refusal) as refused:
        await signal(aws, "i-1")
    assert refused.value.code == "ValidationError"


# --- SQS and EC2 as AWS has them ------------------------------------------------------


async def sender_ids(aws: Aws, queue_url: str) -> list[str]:
    received = await aws.call(
        "sqs",
        "receive_message",
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["SenderId"],
    )
    return sorted(m["Attributes"]["SenderId"] for m in received["Messages"])


async def test_a_message_carries_its_senders_id_as_aws_reports_it(
    aws: Aws, cluster: ClusterResources
) -> None:
    instance = "i-0123456789abcdef0"
    credentials = await cloud.instance_credentials(aws, cluster.compute_role_arn, instance)
    async with cloud.Instances(
        aws, group="unused", queue_url=cluster.queue_url, role_arn=cluster.compute_role_arn
    ) as instances:
        await instances.send(instance, ["as the instance"])
    await cloud.send_messages(aws, cluster.queue_url, ["as the operator"])
    await cloud.publish_autoscaling(aws, cluster.topic_arn, LAUNCH_EVENT, instance)

    assert credentials["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert await sender_ids(aws, cluster.queue_url) == sorted(
        [
            f"{cluster.compute_role_id}:{instance}",  # a role session: <role id>:<session>
            "AKIAIOSFODNN7EXAMPLE",  # the operator: an IAM user's id
            "AIDAIT2UOQQY3AUEKVGXU",  # SNS's delivery
        ]
    )


async def test_a_terminated_instances_address_can_be_given_again(aws: Aws) -> None:
    subnet = await cloud.loopback_subnet(aws)

    async def run(address: str | None = None) -> dict[str, Any]:
        chosen = {"PrivateIpAddress": address} if address else {}
        launched = await aws.call(
            "ec2",
            "run_instances",
            ImageId="ami-12c6146b",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            **chosen,
        )
        instance: dict[str, Any] = launched["Instances"][0]
        return instance

    old = await run()
    await aws.call("ec2", "terminate_instances", InstanceIds=[old["InstanceId"]])

    new = await run(old["PrivateIpAddress"])

    assert new["PrivateDnsName"] == old["PrivateDnsName"]
