"""The instance table on moto's DynamoDB: the row format and its conditional writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cfncluster_node.aws import Aws
from cfncluster_node.local.cloud import ClusterResources
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.records import InstanceRecord, InstanceState

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
A = "i-0000000000000000a"


def ready(at: datetime, hostname: str = "ip-10-0-0-5") -> InstanceRecord:
    return InstanceRecord(
        A,
        InstanceState.READY,
        at,
        at,
        hostname=hostname,
        address="10.0.0.5",
        slots=8,
        instance_type="c5.2xlarge",
        joined_at=at,
    )


async def test_rows_round_trip_every_attribute(aws: Aws, cluster: ClusterResources) -> None:
    table = InstanceTable(aws, cluster.table)
    tombstone = InstanceRecord(
        A,
        InstanceState.TERMINATED,
        T0,
        T0,
        hostname="ip-10-0-0-5",
        expires_at=1_800_000_000,
        joined_at=T0 - timedelta(hours=1),
    )

    await table.put_many([tombstone], read={})

    assert await table.get_many([A, "i-000000000000000ff"]) == {A: tombstone}
    assert await table.scan() == [tombstone]


async def test_a_row_written_meanwhile_is_never_overwritten(
    aws: Aws, cluster: ClusterResources
) -> None:
    table = InstanceTable(aws, cluster.table)
    await table.put_many([ready(T0)], read={})
    seen = (await table.get_many([A]))[A]
    newer = InstanceRecord(
        A, InstanceState.TERMINATED, T0 + timedelta(minutes=5), T0 + timedelta(minutes=6)
    )
    await table.put_many([newer], read={A: seen})  # another writer

    conflicts = await table.put_many([ready(T0 + timedelta(minutes=1))], read={A: seen})

    assert conflicts == {A}
    assert (await table.get_many([A]))[A] == newer


async def test_a_row_that_appeared_meanwhile_is_never_overwritten(
    aws: Aws, cluster: ClusterResources
) -> None:
    table = InstanceTable(aws, cluster.table)
    await table.put_many([ready(T0)], read={})

    assert await table.put_many([ready(T0 + timedelta(minutes=1))], read={}) == {A}
    assert (await table.get_many([A]))[A] == ready(T0)


async def test_a_row_of_the_lineage_is_read_as_a_join_and_can_be_replaced(
    aws: Aws, cluster: ClusterResources
) -> None:
    await aws.call(
        "dynamodb",
        "put_item",
        TableName=cluster.table,
        Item={"instanceId": {"S": A}, "hostname": {"S": "ip-10-0-0-5"}},
    )
    table = InstanceTable(aws, cluster.table)
    legacy = (await table.get_many([A]))[A]
    assert (legacy.state, legacy.hostname, legacy.joined_at) == (
        InstanceState.READY,
        "ip-10-0-0-5",
        legacy.event_time,
    )

    assert await table.put_many([ready(T0)], read={A: legacy}) == set()

    assert (await table.get_many([A]))[A] == ready(T0)


async def test_a_thousand_rows_are_written_and_read_back(
    aws: Aws, cluster: ClusterResources
) -> None:
    table = InstanceTable(aws, cluster.table)
    rows = [InstanceRecord(f"i-{n:017x}", InstanceState.LAUNCHED, T0, T0) for n in range(1000)]

    await table.put_many(rows, read={})

    assert len(await table.get_many(r.instance_id for r in rows)) == 1000
    assert len(await table.scan()) == 1000
