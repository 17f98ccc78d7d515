"""The SQS watcher against moto's server and a real slurmctld.

Every join comes from a real instance of the compute group (moto's EC2, in the loopback
VPC) and is sent with that instance's own role session, as on EC2: the watcher checks
both, so the hosts here are EC2's names and addresses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import AwsSettings, SlurmSettings, SqsWatcherSettings
from cfncluster_node.local.cloud import (
    ClusterResources,
    Instances,
    Member,
    publish_autoscaling,
    queue_depth,
)
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.sqswatcher import SqsWatcher
from cfncluster_node.protocol import PARALLELCLUSTER_READY_EVENT
from cfncluster_node.schedulers import Host, Scheduler
from cfncluster_node.schedulers.slurm import Slurm
from tests.conftest import GROUP

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LAUNCH = "autoscaling:EC2_INSTANCE_LAUNCH"
TERMINATE = "autoscaling:EC2_INSTANCE_TERMINATE"


def registry_for(
    aws: Aws,
    cluster: ClusterResources,
    scheduler: SlurmSettings | Scheduler,
    table: InstanceTable | None = None,
) -> Registry:
    return Registry(
        table or InstanceTable(aws, cluster.table),
        Slurm(scheduler) if isinstance(scheduler, SlurmSettings) else scheduler,
        default_slots=1,
        tombstone_for=timedelta(days=7),
    )


def watcher_for(
    aws: Aws, cluster: ClusterResources, registry: Registry, *, burst: bool, **settings: Any
) -> SqsWatcher:
    return SqsWatcher(
        aws,
        SqsWatcherSettings(**cluster.watcher_settings(**settings)),
        registry,
        compute_group=GROUP,
        burst=burst,
    )


async def drain(
    aws: Aws,
    cluster: ClusterResources,
    scheduler: SlurmSettings | Scheduler,
    *,
    table: InstanceTable | None = None,
    **settings: Any,
) -> None:
    """Run a watcher in burst mode until the queue has nothing visible left."""
    registry = registry_for(aws, cluster, scheduler, table)
    watcher = watcher_for(aws, cluster, registry, burst=True, **settings)
    await asyncio.wait_for(watcher.run(asyncio.Event()), 60)


def unreachable_slurm(directory: Path) -> SlurmSettings:
    """Settings whose scontrol fails at once, as it does when slurmctld is down."""
    scontrol = directory / "scontrol"
    scontrol.write_text(
        "#!/bin/sh\necho 'Unable to contact slurm controller (connect failure)' >&2\nexit 1\n"
    )
    scontrol.chmod(0o755)
    return SlurmSettings(bin_dir=directory)


async def slurm_hosts(slurm: LocalSlurm) -> dict[str, str | None]:
    return {h.hostname: h.address for h in await Slurm(slurm.settings).list_hosts()}


def hosts(*members: Member) -> dict[str, str | None]:
    """What Slurm lists for these members: EC2's name and address for each."""
    return {m.hostname: m.address for m in members}


async def rows(aws: Aws, cluster: ClusterResources) -> dict[str, Any]:
    return {r.instance_id: r for r in await InstanceTable(aws, cluster.table).scan()}


async def test_join_messages_register_hosts_in_slurm_and_the_table(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    nodes = await fleet.launch(3)
    await fleet.join(*nodes[:2])
    lineage = nodes[2].notice(PARALLELCLUSTER_READY_EVENT)
    await fleet.send(nodes[2].instance_id, [lineage])

    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == hosts(*nodes)
    table = await rows(aws, cluster)
    assert {i: (r.state, r.hostname, r.slots) for i, r in table.items()} == {
        n.instance_id: (InstanceState.READY, n.hostname, 4) for n in nodes
    }
    assert "CPUTot=4" in slurm.scontrol("-o", "show", "node", nodes[0].hostname)
    assert await queue_depth(aws, cluster.queue_url) == 0


async def test_autoscaling_notifications_through_sns_record_launch_and_remove_on_terminate(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await publish_autoscaling(aws, cluster.topic_arn, LAUNCH, node.instance_id, when=T0)
    await drain(aws, cluster, slurm.settings)
    assert (await rows(aws, cluster))[node.instance_id].state is InstanceState.LAUNCHED
    assert await slurm_hosts(slurm) == {}

    await fleet.join(node)
    await drain(aws, cluster, slurm.settings)
    assert node.hostname in await slurm_hosts(slurm)

    await publish_autoscaling(aws, cluster.topic_arn, TERMINATE, node.instance_id)
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}
    tombstone = (await rows(aws, cluster))[node.instance_id]
    assert tombstone.state is InstanceState.TERMINATED
    assert tombstone.hostname == node.hostname
    assert tombstone.expires_at is not None


async def test_ready_after_terminate_does_not_resurrect_host(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    # The terminate is delivered first, while EC2 still describes the instance running.
    await publish_autoscaling(aws, cluster.topic_arn, TERMINATE, node.instance_id)
    await drain(aws, cluster, slurm.settings)

    await fleet.join(node)
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[node.instance_id].state is InstanceState.TERMINATED
    assert await queue_depth(aws, cluster.queue_url) == 0


async def test_a_join_of_an_instance_ec2_says_is_gone_is_dropped(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await fleet.join(node)
    await aws.call("ec2", "terminate_instances", InstanceIds=[node.instance_id])

    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {}
    assert await rows(aws, cluster) == {}
    assert [r["event"] for r in records].count("join_of_gone_instance_dropped") == 1
    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await queue_depth(aws, cluster.dead_letter_url) == 0


async def test_duplicated_joins_register_a_host_once(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await fleet.send(node.instance_id, [node.notice()] * 5)
    await drain(aws, cluster, slurm.settings)
    await fleet.send(node.instance_id, [node.notice()] * 2)
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == hosts(node)
    assert len(await rows(aws, cluster)) == 1


async def test_leave_unregisters_and_a_later_join_registers_again(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await fleet.join(node)
    await fleet.leave(node)
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[node.instance_id].state is InstanceState.LEFT

    await fleet.join(node)
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == hosts(node)


async def test_hostname_reused_by_a_new_instance_survives_the_old_instance_terminate(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [old] = await fleet.launch(1)
    await fleet.join(old)
    await drain(aws, cluster, slurm.settings)
    # The old instance goes; its address, and so its name, is given to a new one that
    # joins before the old one's terminate is delivered.
    new = await fleet.reuse_address(old)
    assert new.hostname == old.hostname
    await fleet.join(new)
    await drain(aws, cluster, slurm.settings)
    await publish_autoscaling(aws, cluster.topic_arn, TERMINATE, old.instance_id)
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == hosts(new)
    assert (await rows(aws, cluster))[new.instance_id].state is InstanceState.READY


async def test_malformed_message_goes_to_the_dead_letter_queue_at_once(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    poison = json.dumps({"Type": "Notification", "Message": "{not json"})
    with structlog.testing.capture_logs() as records:
        await fleet.send(node.instance_id, [poison, node.notice()])
        await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == hosts(node)
    assert await queue_depth(aws, cluster.queue_url) == 0
    dead = await aws.call(
        "sqs",
        "receive_message",
        QueueUrl=cluster.dead_letter_url,
        MessageAttributeNames=["All"],
        WaitTimeSeconds=1,
    )
    [message] = dead["Messages"]
    assert message["Body"] == poison
    attributes = message["MessageAttributes"]
    assert "not JSON" in attributes["error"]["StringValue"]
    assert attributes["senderId"]["StringValue"].endswith(f":{node.instance_id}")
    [line] = [r for r in records if r["event"] == "message_dead_lettered"]
    assert "not JSON" in line["reason"] and line["message_id"]
    assert line["sender_id"] == f"{cluster.compute_role_id}:{node.instance_id}"


async def test_test_notification_and_unknown_events_are_dropped(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    for event in ("autoscaling:TEST_NOTIFICATION", "autoscaling:SOMETHING_NEW"):
        notification = {
            "AccountId": "123456789012",
            "RequestId": "r",
            "AutoScalingGroupARN": "arn",
            "AutoScalingGroupName": GROUP,
            "Service": "AWS Auto Scaling",
            "Event": event,
            "Time": "2026-11-26T12:00:00.000Z",
        }
        await aws.call(
            "sns", "publish", TopicArn=cluster.topic_arn, Message=json.dumps(notification)
        )

    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, slurm.settings)

    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await queue_depth(aws, cluster.dead_letter_url) == 0
    dropped = sorted(r["reason"] for r in records if r["event"] == "message_dropped")
    assert dropped == ["test_notification", "unknown_event"]


async def test_join_without_hostname_is_named_from_ec2(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    old_style = json.dumps(
        {
            "Type": "Notification",
            "Message": json.dumps(
                {
                    "Event": "cfncluster:COMPUTE_READY",
                    "EC2InstanceId": node.instance_id,
                    "StatusCode": "Complete",
                    "Description": "old node",
                }
            ),
        }
    )
    await fleet.send(node.instance_id, [old_style])
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == hosts(node)
    row = (await rows(aws, cluster))[node.instance_id]
    assert (row.hostname, row.instance_type) == (node.hostname, "c5.large")


class Buggy(Slurm):
    """A scheduler backend with a bug: not a SchedulerError, any exception at all."""

    async def add_hosts(self, hosts: Sequence[Host]) -> None:
        raise RuntimeError("a bug in a backend")


@pytest.mark.parametrize(
    ("fault", "logged"),
    [
        ("unreachable", "scheduler_batch_failed"),
        # A bug once stopped the watcher with the batch held.
        ("bug", "batch_crashed"),
    ],
)
async def test_scheduler_failure_leaves_the_message_for_redelivery(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    fleet: Instances,
    tmp_path: Path,
    fault: str,
    logged: str,
) -> None:
    [node] = await fleet.launch(1)
    broken = unreachable_slurm(tmp_path) if fault == "unreachable" else Buggy(slurm.settings)
    await fleet.join(node)
    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, broken, retry_backoff_max=1)
    assert any(r["event"] == logged for r in records)
    assert await queue_depth(aws, cluster.queue_url) == 1

    await asyncio.sleep(1.5)  # the retry delay
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == hosts(node)
    assert await queue_depth(aws, cluster.queue_url) == 0


async def test_message_that_always_fails_ends_in_the_dead_letter_queue(
    aws: Aws, cluster: ClusterResources, fleet: Instances, tmp_path: Path
) -> None:
    [node] = await fleet.launch(1)
    broken = unreachable_slurm(tmp_path)
    await fleet.join(node)
    with structlog.testing.capture_logs() as records:
        for _ in range(4):  # the queue's maxReceiveCount is 3
            await drain(aws, cluster, broken, retry_backoff_max=1)
            await asyncio.sleep(1.2)
    assert [r["event"] for r in records].count("message_dead_lettered") == 1
    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await queue_depth(aws, cluster.dead_letter_url) == 1


async def test_stop_releases_unapplied_messages_for_the_next_watcher(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    stop = asyncio.Event()
    stop.set()  # stopped before it could apply anything it receives
    watcher = watcher_for(aws, cluster, registry_for(aws, cluster, slurm.settings), burst=False)
    await fleet.join(node)
    await asyncio.wait_for(watcher.run(stop), 30)

    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == hosts(node)


@pytest.mark.parametrize("batch", [1, 250])
async def test_a_burst_of_joins_and_leaves_ends_exactly_right(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances, batch: int
) -> None:
    nodes = await fleet.launch(60)
    await fleet.join(*nodes)
    await fleet.leave(*nodes[:30])
    await fleet.join(*nodes[30:40])  # duplicates

    await drain(aws, cluster, slurm.settings, max_batch=batch)

    assert await slurm_hosts(slurm) == hosts(*nodes[30:])
    states = {i: r.state for i, r in (await rows(aws, cluster)).items()}
    assert states == {
        n.instance_id: InstanceState.LEFT if k < 30 else InstanceState.READY
        for k, n in enumerate(nodes)
    }


class SlowSlurm(Slurm):
    """The real Slurm, but registering takes longer than a message stays invisible."""

    def __init__(self, settings: SlurmSettings, delay: float) -> None:
        super().__init__(settings)
        self.delay = delay

    async def add_hosts(self, hosts: Sequence[Host]) -> None:
        await asyncio.sleep(self.delay)
        await super().add_hosts(hosts)


async def test_a_long_update_keeps_its_message_invisible_until_it_is_done(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await fleet.join(node)
    slow = SlowSlurm(slurm.settings, delay=14)
    watcher = asyncio.create_task(drain(aws, cluster, slow, visibility_timeout=10))

    await asyncio.sleep(12)  # past the visibility timeout the message was received with
    stolen = await aws.call("sqs", "receive_message", QueueUrl=cluster.queue_url)
    await watcher

    assert stolen.get("Messages", []) == []
    assert await slurm_hosts(slurm) == hosts(node)
    assert await queue_depth(aws, cluster.queue_url) == 0


class RacedTable(InstanceTable):
    """The real table, and another writer that terminates an instance right after a read."""

    def __init__(self, aws: Aws, name: str, victim: Member) -> None:
        super().__init__(aws, name)
        self.victim = victim
        self.raced = False

    async def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        rows = await super().get_many(instance_ids)
        if not self.raced:
            self.raced = True
            now = datetime.now(UTC)
            tombstone = InstanceRecord(
                self.victim.instance_id,
                InstanceState.TERMINATED,
                now,
                now,
                hostname=self.victim.hostname,
            )
            await super().put_many([tombstone], read=rows)
        return rows


async def test_a_row_changed_by_another_writer_meanwhile_is_planned_again(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await fleet.join(node)
    raced = RacedTable(aws, cluster.table, node)
    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, slurm.settings, table=raced, retry_backoff_max=1)
    [changed] = [r for r in records if r["event"] == "rows_changed_meanwhile"]
    assert changed["instance_ids"] == [node.instance_id]
    assert await slurm_hosts(slurm) == {}

    await asyncio.sleep(1.5)
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[node.instance_id].state is InstanceState.TERMINATED
    assert await queue_depth(aws, cluster.queue_url) == 0


class FailingDeletes(Aws):
    """Real clients, but SQS refuses the first deletes (an outage, expired credentials)."""

    def __init__(self, failures: int) -> None:
        super().__init__(AwsSettings(max_attempts=1), "us-east-1")
        self.failures = failures

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        if operation == "delete_message_batch" and self.failures > 0:
            self.failures -= 1
            raise AwsError(service, operation, "ServiceUnavailable", "injected")
        return await super().call(service, operation, **params)


async def test_a_failed_delete_is_survived_and_the_replay_changes_nothing(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    [node] = await fleet.launch(1)
    await fleet.join(node)
    with structlog.testing.capture_logs() as records:
        async with FailingDeletes(failures=1) as flaky:
            await drain(flaky, cluster, slurm.settings, visibility_timeout=10)
        assert await slurm_hosts(slurm) == hosts(node)
        assert await queue_depth(aws, cluster.queue_url) == 1  # still in flight

        await asyncio.sleep(10.5)  # its visibility timeout: it comes back
        await drain(aws, cluster, slurm.settings)

    events = [r["event"] for r in records]
    assert "sqs_batch_call_failed" in events
    assert events.count("host_registered") == 1
    assert "event_already_applied" in events
    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await slurm_hosts(slurm) == hosts(node)
