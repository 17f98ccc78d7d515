"""Hostile messages on the queue, sent over moto with real credentials: none has an effect.

Any job on any compute node can read its instance's role credentials from the metadata
service and send to the cluster queue. Each test plays such a job (or a stranger) against
the real watcher, moto's SQS and EC2, and a real slurmctld, and checks that the instance
table and the scheduler are as they were, and that the message went to the dead-letter
queue with one log line naming its sender.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from cfncluster_node import aws as aws_module
from cfncluster_node.aws import Aws
from cfncluster_node.local.cloud import (
    ClusterResources,
    Instances,
    Member,
    autoscaling_notification,
    forgeries,
    queue_depth,
    send_messages,
)
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import messages
from cfncluster_node.node.records import InstanceState
from cfncluster_node.protocol import LEAVE_EVENT, READY_EVENT, TERMINATE_EVENT
from tests.clusters import wait_until
from tests.test_sqswatcher import drain, hosts, registry_for, rows, slurm_hosts, watcher_for


async def dead_letters(aws: Aws, cluster: ClusterResources) -> list[dict[str, str]]:
    """The dead-letter queue's messages: their bodies and the attributes beside them."""
    found: list[dict[str, str]] = []
    while True:
        received = await aws.call(
            "sqs",
            "receive_message",
            QueueUrl=cluster.dead_letter_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=300,
        )
        if not received.get("Messages"):
            return found
        for message in received["Messages"]:
            attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
            found.append({"body": message["Body"], **attributes})


@pytest.fixture
async def victim(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> Member:
    """A node that joined as itself and is registered: what an attacker would go for."""
    [node] = await fleet.launch(1)
    await fleet.join(node)
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == hosts(node)
    return node


@pytest.fixture
async def attacker(fleet: Instances) -> Member:
    """Another node of the group: a job on it holds its role credentials."""
    [node] = await fleet.launch(1)
    return node


async def refused(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    *,
    expected: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Run the watcher; return its dead-letter log lines and the dead-lettered messages."""
    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, slurm.settings)
    lines = [r for r in records if r["event"] == "message_dead_lettered"]
    letters = await dead_letters(aws, cluster)
    assert len(lines) == len(letters) == expected, (lines, letters)
    assert await queue_depth(aws, cluster.queue_url) == 0
    return lines, letters


async def test_a_join_forged_for_another_instance_is_refused(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    fleet: Instances,
    attacker: Member,
) -> None:
    [other] = await fleet.launch(1)  # running, a member, not joined
    await fleet.send(attacker.instance_id, [other.notice()])

    [line], [letter] = await refused(aws, cluster, slurm)

    assert await slurm_hosts(slurm) == {}
    assert await rows(aws, cluster) == {}
    session = f"{cluster.compute_role_id}:{attacker.instance_id}"
    assert line["sender_id"] == letter["senderId"] == session
    assert other.instance_id in line["reason"] and session in line["reason"]


async def test_a_leave_forged_for_a_registered_node_is_refused(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    fleet: Instances,
    victim: Member,
    attacker: Member,
) -> None:
    await fleet.send(attacker.instance_id, [victim.notice(LEAVE_EVENT)])

    await refused(aws, cluster, slurm)

    assert await slurm_hosts(slurm) == hosts(victim)
    assert (await rows(aws, cluster))[victim.instance_id].state is InstanceState.READY


async def test_a_terminate_forged_in_the_topics_envelope_is_refused(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    fleet: Instances,
    victim: Member,
    attacker: Member,
) -> None:
    # Exactly what SNS would deliver, TopicArn included, but sent with a node's credentials.
    forged = json.dumps(
        {
            "Type": "Notification",
            "TopicArn": cluster.topic_arn,
            "Message": autoscaling_notification(TERMINATE_EVENT, victim.instance_id),
        }
    )
    await fleet.send(attacker.instance_id, [forged])
    await send_messages(aws, cluster.queue_url, [forged])  # nor with the operator's

    lines, _ = await refused(aws, cluster, slurm, expected=2)

    assert all("stack's topic" in line["reason"] for line in lines)
    assert await slurm_hosts(slurm) == hosts(victim)
    # No tombstone: the id is not blocked either.
    assert (await rows(aws, cluster))[victim.instance_id].state is InstanceState.READY


async def test_a_join_from_an_instance_ec2_does_not_know_is_refused(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    # A session of the compute role named after no instance EC2 runs.
    stranger = Member("i-0000000000000dead", "ip-127-8-9-9", "127.8.9.9", "c5.large")
    await fleet.send(stranger.instance_id, [stranger.notice()])

    [line], _ = await refused(aws, cluster, slurm)

    assert "EC2 knows no instance" in line["reason"]
    assert await slurm_hosts(slurm) == {}
    assert await rows(aws, cluster) == {}


@pytest.mark.parametrize("claim", ["hostname", "address", "both"])
async def test_a_join_that_claims_another_nodes_name_or_address_is_refused(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    fleet: Instances,
    victim: Member,
    attacker: Member,
    claim: str,
) -> None:
    claims = {
        "hostname": {"hostname": victim.hostname},
        "address": {"address": victim.address},
        "both": {"hostname": victim.hostname, "address": victim.address},
    }[claim]
    await fleet.send(attacker.instance_id, [attacker.notice(**claims)])

    [line], _ = await refused(aws, cluster, slurm)

    assert "EC2 says" in line["reason"]
    # The name keeps its owner and its owner's address; the attacker is not registered.
    assert await slurm_hosts(slurm) == hosts(victim)
    assert attacker.instance_id not in await rows(aws, cluster)


async def test_a_join_naming_a_static_node_is_refused_and_the_node_left_alone(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances, attacker: Member
) -> None:
    slurm.scontrol("create", "NodeName=login-1 CPUs=2 State=FUTURE")  # no compute feature
    await fleet.send(attacker.instance_id, [attacker.notice(hostname="login-1")])

    await refused(aws, cluster, slurm)

    assert "NodeName=login-1 " in slurm.scontrol("-o", "-F", "show", "node", "login-1")
    assert await rows(aws, cluster) == {}


async def test_a_node_whose_own_name_is_a_static_nodes_is_refused_by_the_scheduler(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    # EC2 bears the join out, but slurm.conf has a node of that name: the backend refuses.
    [node] = await fleet.launch(1)
    slurm.scontrol("create", f"NodeName={node.hostname} CPUs=2 State=FUTURE")
    await fleet.join(node)

    [line], _ = await refused(aws, cluster, slurm)

    assert "static node" in line["reason"]
    listed = slurm.scontrol("-o", "-F", "show", "node", node.hostname)
    assert "Features=compute" not in listed and "AvailableFeatures=compute" not in listed


async def test_a_join_dated_in_the_year_9999_does_not_keep_its_name_from_the_next_owner(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [old] = await fleet.launch(1)
    forged_time = messages.compute_notice(
        READY_EVENT,
        old.instance_id,
        datetime(9999, 12, 31, tzinfo=UTC),
        hostname=f"{old.hostname}.ec2.internal",
        address=old.address,
        slots=4,
    )
    await fleet.send(old.instance_id, [forged_time])
    await drain(aws, cluster, slurm.settings)
    row = (await rows(aws, cluster))[old.instance_id]
    assert row.joined_at.year < 9999  # SQS's time, not the node's

    # The instance goes, and its address (so its name) goes to the next one.
    await fleet.leave(old)
    await drain(aws, cluster, slurm.settings)
    new = await fleet.reuse_address(old)
    await fleet.join(new)
    await drain(aws, cluster, slurm.settings)

    assert new.hostname == old.hostname
    assert await slurm_hosts(slurm) == hosts(new)


FLOOD = 10_000


async def shallower_than(aws: Aws, cluster: ClusterResources, depth: int) -> None:
    async def shallower() -> bool:
        return await queue_depth(aws, cluster.queue_url) < depth

    await wait_until(shallower, 120)


async def test_a_flood_of_garbage_costs_a_log_line_each_and_changes_nothing(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    fleet: Instances,
    victim: Member,
    attacker: Member,
) -> None:
    # A job's worth of garbage: unreadable bodies, forged events for others, and its own
    # node's joins under names that are not its own.
    kinds = forgeries(attacker, victim, cluster.topic_arn)
    garbage = [kinds[n % len(kinds)] for n in range(FLOOD)]
    registry = registry_for(aws, cluster, slurm.settings)
    stop = asyncio.Event()
    watcher = watcher_for(aws, cluster, registry, burst=False)
    ec2_calls = 0

    def count_ec2(region: str, service: str, api: str, params: dict[str, Any]) -> None:
        nonlocal ec2_calls
        ec2_calls += service == "ec2"

    aws_module.observers.append(count_ec2)
    batches = 0
    try:
        with structlog.testing.capture_logs() as records:
            running = asyncio.create_task(watcher.run(stop))
            # Fed while the watcher drains it, as a flood arrives; moto's receives cost
            # O(queue depth), so a queue filled up front would measure moto.
            for start in range(0, FLOOD, 500):
                await fleet.send(attacker.instance_id, garbage[start : start + 500])
                await shallower_than(aws, cluster, 1000)
            await shallower_than(aws, cluster, 1)
            stop.set()
            await asyncio.wait_for(running, 60)
        batches = sum(1 for r in records if r["event"] == "batch_applied")
    finally:
        aws_module.observers.remove(count_ec2)

    lines = [r for r in records if r["event"] == "message_dead_lettered"]
    assert len(lines) == FLOOD
    assert await queue_depth(aws, cluster.dead_letter_url) == FLOOD
    assert await queue_depth(aws, cluster.queue_url) == 0
    # At most one EC2 call a batch, and only for the batches holding the node's own joins.
    assert ec2_calls <= batches
    # One line a message: nothing else was logged at warning or above.
    loud = [r for r in records if r.get("log_level") in ("warning", "error", "critical")]
    assert {r["event"] for r in loud} == {"message_dead_lettered"}
    assert all(len(json.dumps(r)) < 2000 for r in lines)
    # Nothing changed: the victim is registered as it was, and the attacker is not.
    assert await slurm_hosts(slurm) == hosts(victim)
    table = await rows(aws, cluster)
    assert set(table) == {victim.instance_id}
    assert table[victim.instance_id].state is InstanceState.READY
