"""The SQS watcher against moto's server and a real slurmctld."""

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
    publish_autoscaling,
    queue_depth,
    send_messages,
)
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.messages import compute_notice
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.sqswatcher import SqsWatcher
from cfncluster_node.protocol import LEAVE_EVENT, READY_EVENT
from cfncluster_node.schedulers import Host, Scheduler
from cfncluster_node.schedulers.slurm import Slurm

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LAUNCH = "autoscaling:EC2_INSTANCE_LAUNCH"
TERMINATE = "autoscaling:EC2_INSTANCE_TERMINATE"


def instance(n: int) -> str:
    return f"i-{n:017x}"


def ready(n: int, *, at: datetime = T0, hostname: str | None = None, prefix: str = "") -> str:
    return compute_notice(
        f"{prefix}:COMPUTE_READY" if prefix else READY_EVENT,
        instance(n),
        at,
        hostname=hostname or f"ip-10-0-0-{n}.ec2.internal",
        address=f"127.0.1.{n}",
        slots=4,
        instance_type="c5.xlarge",
    )


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
        aws, SqsWatcherSettings(queue=cluster.queue_url, **settings), registry, burst=burst
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


async def rows(aws: Aws, cluster: ClusterResources) -> dict[str, Any]:
    return {r.instance_id: r for r in await InstanceTable(aws, cluster.table).scan()}


async def test_join_messages_register_hosts_in_slurm_and_the_table(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await send_messages(
        aws, cluster.queue_url, [ready(1), ready(2), ready(3, prefix="parallelcluster")]
    )

    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {
        "ip-10-0-0-1": "127.0.1.1",
        "ip-10-0-0-2": "127.0.1.2",
        "ip-10-0-0-3": "127.0.1.3",
    }
    table = await rows(aws, cluster)
    assert {i: (r.state, r.hostname, r.slots) for i, r in table.items()} == {
        instance(n): (InstanceState.READY, f"ip-10-0-0-{n}", 4) for n in (1, 2, 3)
    }
    assert "CPUTot=4" in slurm.scontrol("-o", "show", "node", "ip-10-0-0-1")
    assert await queue_depth(aws, cluster.queue_url) == 0


async def test_autoscaling_notifications_through_sns_record_launch_and_remove_on_terminate(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await publish_autoscaling(aws, cluster.topic_arn, LAUNCH, instance(1), when=T0)
    await drain(aws, cluster, slurm.settings)
    assert (await rows(aws, cluster))[instance(1)].state is InstanceState.LAUNCHED
    assert await slurm_hosts(slurm) == {}

    await send_messages(aws, cluster.queue_url, [ready(1, at=T0 + timedelta(seconds=30))])
    await drain(aws, cluster, slurm.settings)
    assert "ip-10-0-0-1" in await slurm_hosts(slurm)

    await publish_autoscaling(
        aws, cluster.topic_arn, TERMINATE, instance(1), when=T0 + timedelta(minutes=5)
    )
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}
    tombstone = (await rows(aws, cluster))[instance(1)]
    assert tombstone.state is InstanceState.TERMINATED
    assert tombstone.hostname == "ip-10-0-0-1"
    assert tombstone.expires_at is not None


async def test_ready_after_terminate_does_not_resurrect_host(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await publish_autoscaling(aws, cluster.topic_arn, TERMINATE, instance(7), when=T0)
    await drain(aws, cluster, slurm.settings)

    # The join was sent before the terminate but is delivered after it.
    await send_messages(aws, cluster.queue_url, [ready(7, at=T0 - timedelta(minutes=1))])
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[instance(7)].state is InstanceState.TERMINATED
    assert await queue_depth(aws, cluster.queue_url) == 0


async def test_duplicated_joins_register_a_host_once(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await send_messages(aws, cluster.queue_url, [ready(4)] * 5)
    await drain(aws, cluster, slurm.settings)
    await send_messages(aws, cluster.queue_url, [ready(4)] * 2)
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {"ip-10-0-0-4": "127.0.1.4"}
    assert len(await rows(aws, cluster)) == 1


async def test_leave_unregisters_and_a_later_join_registers_again(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    leave = compute_notice(LEAVE_EVENT, instance(5), T0 + timedelta(minutes=1))
    await send_messages(aws, cluster.queue_url, [ready(5), leave])
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[instance(5)].state is InstanceState.LEFT

    await send_messages(aws, cluster.queue_url, [ready(5, at=T0 + timedelta(minutes=3))])
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {"ip-10-0-0-5": "127.0.1.5"}


async def test_hostname_reused_by_a_new_instance_survives_the_old_instance_terminate(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    shared = "ip-10-0-0-9.ec2.internal"
    await send_messages(aws, cluster.queue_url, [ready(1, hostname=shared)])
    await drain(aws, cluster, slurm.settings)
    # The old instance's terminate is delivered after the new owner of its IP joined.
    await send_messages(
        aws, cluster.queue_url, [ready(2, hostname=shared, at=T0 + timedelta(minutes=10))]
    )
    await drain(aws, cluster, slurm.settings)
    await publish_autoscaling(
        aws, cluster.topic_arn, TERMINATE, instance(1), when=T0 + timedelta(minutes=11)
    )
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {"ip-10-0-0-9": "127.0.1.2"}


async def test_malformed_message_goes_to_the_dead_letter_queue_at_once(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    poison = json.dumps({"Type": "Notification", "Message": "{not json"})
    with structlog.testing.capture_logs() as records:
        await send_messages(aws, cluster.queue_url, [poison, ready(1)])
        await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {"ip-10-0-0-1": "127.0.1.1"}
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
    assert "not JSON" in message["MessageAttributes"]["error"]["StringValue"]
    [line] = [r for r in records if r["event"] == "message_dead_lettered"]
    assert "not JSON" in line["reason"] and line["message_id"]


async def test_test_notification_and_unknown_events_are_dropped(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    test_notification = json.dumps(
        {
            "AccountId": "123456789012",
            "RequestId": "r",
            "AutoScalingGroupARN": "arn",
            "AutoScalingGroupName": "compute",
            "Service": "AWS Auto Scaling",
            "Event": "autoscaling:TEST_NOTIFICATION",
            "Time": "2026-11-26T12:00:00.000Z",
        }
    )
    await aws.call("sns", "publish", TopicArn=cluster.topic_arn, Message=test_notification)
    unknown = json.dumps({"Event": "cfncluster:SOMETHING_NEW", "EC2InstanceId": instance(1)})
    await send_messages(aws, cluster.queue_url, [unknown])

    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, slurm.settings)

    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await queue_depth(aws, cluster.dead_letter_url) == 0
    dropped = sorted(r["reason"] for r in records if r["event"] == "message_dropped")
    assert dropped == ["test_notification", "unknown_event"]


async def test_join_without_hostname_is_named_from_ec2(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    launched = await aws.call(
        "ec2",
        "run_instances",
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType="c5.large",
    )
    ec2_instance = launched["Instances"][0]
    old_style = json.dumps(
        {
            "Type": "Notification",
            "Message": json.dumps(
                {
                    "Event": "cfncluster:COMPUTE_READY",
                    "EC2InstanceId": ec2_instance["InstanceId"],
                    "StatusCode": "Complete",
                    "Description": "old node",
                }
            ),
        }
    )
    await send_messages(aws, cluster.queue_url, [old_style])
    await drain(aws, cluster, slurm.settings)

    expected = ec2_instance["PrivateDnsName"].split(".")[0]
    assert list(await slurm_hosts(slurm)) == [expected]
    row = (await rows(aws, cluster))[ec2_instance["InstanceId"]]
    assert (row.hostname, row.instance_type) == (expected, "c5.large")


async def test_scheduler_failure_leaves_the_message_for_redelivery(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, tmp_path: Path
) -> None:
    broken = unreachable_slurm(tmp_path)
    await send_messages(aws, cluster.queue_url, [ready(1)])
    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, broken, retry_backoff_max=1)
    assert any(r["event"] == "scheduler_batch_failed" for r in records)
    assert await queue_depth(aws, cluster.queue_url) == 1

    await asyncio.sleep(1.5)  # the retry delay
    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {"ip-10-0-0-1": "127.0.1.1"}
    assert await queue_depth(aws, cluster.queue_url) == 0


async def test_message_that_always_fails_ends_in_the_dead_letter_queue(
    aws: Aws, cluster: ClusterResources, tmp_path: Path
) -> None:
    broken = unreachable_slurm(tmp_path)
    await send_messages(aws, cluster.queue_url, [ready(1)])
    with structlog.testing.capture_logs() as records:
        for _ in range(4):  # the queue's maxReceiveCount is 3
            await drain(aws, cluster, broken, retry_backoff_max=1)
            await asyncio.sleep(1.2)
    assert [r["event"] for r in records].count("message_dead_lettered") == 1
    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await queue_depth(aws, cluster.dead_letter_url) == 1


async def test_stop_releases_unapplied_messages_for_the_next_watcher(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    stop = asyncio.Event()
    stop.set()  # stopped before it could apply anything it receives
    watcher = watcher_for(aws, cluster, registry_for(aws, cluster, slurm.settings), burst=False)
    await send_messages(aws, cluster.queue_url, [ready(1)])
    await asyncio.wait_for(watcher.run(stop), 30)

    await drain(aws, cluster, slurm.settings)
    assert await slurm_hosts(slurm) == {"ip-10-0-0-1": "127.0.1.1"}


@pytest.mark.parametrize("batch", [1, 250])
async def test_a_burst_of_joins_and_leaves_ends_exactly_right(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, batch: int
) -> None:
    joins = [ready(n) for n in range(1, 61)]
    leaves = [
        compute_notice(LEAVE_EVENT, instance(n), T0 + timedelta(minutes=1)) for n in range(1, 31)
    ]
    await send_messages(aws, cluster.queue_url, joins + leaves + joins[:10])
    await drain(aws, cluster, slurm.settings, max_batch=batch)

    assert sorted(await slurm_hosts(slurm)) == sorted(f"ip-10-0-0-{n}" for n in range(31, 61))
    states = {i: r.state for i, r in (await rows(aws, cluster)).items()}
    assert states == {
        instance(n): InstanceState.LEFT if n <= 30 else InstanceState.READY for n in range(1, 61)
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
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await send_messages(aws, cluster.queue_url, [ready(1)])
    slow = SlowSlurm(slurm.settings, delay=14)
    watcher = asyncio.create_task(drain(aws, cluster, slow, visibility_timeout=10))

    await asyncio.sleep(12)  # past the visibility timeout the message was received with
    stolen = await aws.call("sqs", "receive_message", QueueUrl=cluster.queue_url)
    await watcher

    assert stolen.get("Messages", []) == []
    assert await slurm_hosts(slurm) == {"ip-10-0-0-1": "127.0.1.1"}
    assert await queue_depth(aws, cluster.queue_url) == 0


class RacedTable(InstanceTable):
    """The real table, and another writer that terminates an instance right after a read."""

    def __init__(self, aws: Aws, name: str, instance_id: str) -> None:
        super().__init__(aws, name)
        self.victim = instance_id
        self.raced = False

    async def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        rows = await super().get_many(instance_ids)
        if not self.raced:
            self.raced = True
            tombstone = InstanceRecord(
                self.victim,
                InstanceState.TERMINATED,
                T0 + timedelta(minutes=9),
                T0,
                hostname="ip-10-0-0-1",
            )
            await super().put_many([tombstone], read=rows)
        return rows


async def test_a_row_changed_by_another_writer_meanwhile_is_planned_again(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await send_messages(aws, cluster.queue_url, [ready(1)])
    raced = RacedTable(aws, cluster.table, instance(1))
    with structlog.testing.capture_logs() as records:
        await drain(aws, cluster, slurm.settings, table=raced, retry_backoff_max=1)
    [changed] = [r for r in records if r["event"] == "rows_changed_meanwhile"]
    assert changed["instance_ids"] == [instance(1)]
    assert await slurm_hosts(slurm) == {}

    await asyncio.sleep(1.5)
    await drain(aws, cluster, slurm.settings)

    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[instance(1)].state is InstanceState.TERMINATED
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
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await send_messages(aws, cluster.queue_url, [ready(1)])
    with structlog.testing.capture_logs() as records:
        async with FailingDeletes(failures=1) as flaky:
            await drain(flaky, cluster, slurm.settings, visibility_timeout=10)
        assert await slurm_hosts(slurm) == {"ip-10-0-0-1": "127.0.1.1"}
        assert await queue_depth(aws, cluster.queue_url) == 1  # still in flight

        await asyncio.sleep(10.5)  # its visibility timeout: it comes back
        await drain(aws, cluster, slurm.settings)

    events = [r["event"] for r in records]
    assert "sqs_batch_call_failed" in events
    assert events.count("host_registered") == 1
    assert "event_already_applied" in events
    assert await queue_depth(aws, cluster.queue_url) == 0
    assert await slurm_hosts(slurm) == {"ip-10-0-0-1": "127.0.1.1"}
