"""The reconciler: drift between EC2, the table and Slurm, found (pure) and healed (real)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from cfncluster_node.aws import Aws
from cfncluster_node.config import ClusterSettings, ReconcilerSettings
from cfncluster_node.local.cloud import ClusterResources, Instances, create_compute_group
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node.drift import Drift, Instance, Observation, diagnose, healing_events
from cfncluster_node.node.fleet import Member
from cfncluster_node.node.lifecycle import Hostnames
from cfncluster_node.node.reconciler import Reconciler
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.schedulers import Host, HostStatus
from cfncluster_node.schedulers.slurm import Slurm
from tests.conftest import GROUP
from tests.test_sqswatcher import drain, hosts, registry_for, rows, slurm_hosts

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"


def row(
    instance: str, state: InstanceState, hostname: str | None, *, age_min: int = 60
) -> InstanceRecord:
    at = NOW - timedelta(minutes=age_min)
    joined = at if state is not InstanceState.LAUNCHED else None
    return InstanceRecord(instance, state, at, at, hostname=hostname, joined_at=joined, slots=4)


def check(
    rows: list[InstanceRecord],
    instances: dict[str, str],
    hosts: list[str],
    group: tuple[str, ...] = (),
) -> Drift:
    seen = Observation(
        rows={r.instance_id: r for r in rows},
        instances={
            i: Instance(i, state, NOW - timedelta(hours=1)) for i, state in instances.items()
        },
        group={i: Member("InService", protected=False) for i in group},
        hosts={h: HostStatus(h, 4, None, "idle", available=True, busy=False) for h in hosts},
        hostnames=Hostnames(rows),
    )
    return diagnose(seen, now=NOW, join_timeout=timedelta(minutes=15))


def test_a_consistent_fleet_has_no_drift() -> None:
    drift = check(
        [row(A, InstanceState.READY, "h-a"), row(B, InstanceState.TERMINATED, "h-b")],
        {A: "running"},
        ["h-a"],
        group=(A,),
    )
    assert not drift


def test_an_instance_ec2_reports_gone_or_no_longer_knows_is_gone() -> None:
    drift = check(
        [
            row(A, InstanceState.READY, "h-a"),
            row(B, InstanceState.LEFT, "h-b"),
            row(C, InstanceState.LAUNCHED, None),
        ],
        {A: "terminated", B: "shutting-down"},
        ["h-a"],
    )
    assert [r.instance_id for r in drift.gone] == [A, B, C]


def test_an_instance_ec2_does_not_know_yet_is_not_gone() -> None:
    drift = check([row(A, InstanceState.LAUNCHED, None, age_min=1)], {}, [])
    assert drift.gone == []


def test_a_joined_running_instance_missing_from_the_scheduler_is_a_lost_host() -> None:
    drift = check(
        [row(A, InstanceState.READY, "h-a"), row(B, InstanceState.LEFT, "h-b")],
        {A: "running", B: "running"},
        [],
    )
    assert [r.instance_id for r in drift.lost_hosts] == [A]


def test_a_host_no_joined_instance_holds_is_unowned() -> None:
    drift = check([row(A, InstanceState.LEFT, "h-a")], {A: "running"}, ["h-a", "h-x"])
    assert drift.unowned_hosts == ["h-a", "h-x"]


def test_a_group_instance_running_long_without_joining_never_joined() -> None:
    drift = check(
        [row(A, InstanceState.LAUNCHED, None), row(B, InstanceState.READY, "h-b")],
        {A: "running", B: "running", C: "pending"},
        ["h-b"],
        group=(A, B, C),
    )
    assert drift.never_joined == [A]


def test_a_host_a_joining_instance_registered_itself_is_left_to_its_join() -> None:
    # slurmd -Z registers the node before the head node has applied its join message.
    booting = Instance(A, "running", NOW - timedelta(minutes=2), hostname="ip-10-0-0-7")
    stale = Instance(B, "running", NOW - timedelta(hours=1), hostname="ip-10-0-0-8")
    seen = Observation(
        rows={},
        instances={A: booting, B: stale},
        group={i: Member("InService", protected=False) for i in (A, B)},
        hosts={
            h: HostStatus(h, 4, None, "idle", available=True, busy=False)
            for h in ("ip-10-0-0-7", "ip-10-0-0-8", "h-x")
        },
        hostnames=Hostnames(),
    )

    drift = diagnose(seen, now=NOW, join_timeout=timedelta(minutes=15))

    assert drift.joining == ["ip-10-0-0-7"]
    # Past its join timeout it never joined: its host is nobody's, and goes.
    assert drift.never_joined == [B]
    assert drift.unowned_hosts == ["h-x", "ip-10-0-0-8"]


def test_healing_replays_the_events_the_queue_lost() -> None:
    drift = Drift(
        gone=[row(A, InstanceState.READY, "h-a")], lost_hosts=[row(B, InstanceState.READY, "h-b")]
    )

    events = healing_events(drift, NOW)

    assert [(e.kind.value, e.instance_id, e.time, e.hostname) for e in events] == [
        ("terminate", A, NOW, None),
        ("ready", B, NOW - timedelta(minutes=60), "h-b"),
    ]


def reconciler(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, **settings: Any
) -> Reconciler:
    return Reconciler(
        aws,
        ReconcilerSettings(**settings),
        ClusterSettings(
            stack_name="test", region="us-east-1", table=cluster.table, compute_group=GROUP
        ),
        registry_for(aws, cluster, slurm.settings),
        burst=True,
    )


async def test_lost_messages_and_a_tampered_scheduler_are_healed_in_one_pass(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    nodes = await fleet.launch(3)
    await fleet.join(*nodes)
    await drain(aws, cluster, slurm.settings)
    # A spot reclaim whose notification was lost; a host deleted by hand; a stray host.
    await aws.call("ec2", "terminate_instances", InstanceIds=[nodes[0].instance_id])
    slurm.scontrol("delete", f"NodeName={nodes[1].hostname}")
    await Slurm(slurm.settings).add_hosts([Host("ip-10-7-9-9", 4, "127.7.9.9")])

    with structlog.testing.capture_logs() as records:
        drift = await reconciler(aws, cluster, slurm).tick()

    assert drift is not None
    assert await slurm_hosts(slurm) == hosts(*nodes[1:])
    assert (await rows(aws, cluster))[nodes[0].instance_id].state is InstanceState.TERMINATED
    fixes = sorted(
        (r["event"], r.get("instance_id") or r.get("hostname"))
        for r in records
        if r["event"].startswith("drift_")
    )
    assert fixes == sorted(
        [
            ("drift_instance_gone", nodes[0].instance_id),
            ("drift_host_missing", nodes[1].instance_id),
            ("drift_unowned_host_removed", "ip-10-7-9-9"),
        ]
    )

    assert await reconciler(aws, cluster, slurm).tick() == Drift()  # nothing left to heal


async def test_an_instance_that_never_joined_is_replaced_when_configured(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    await create_compute_group(aws, GROUP, desired=1, max_size=2)
    [stuck] = await group_instances(aws)

    with structlog.testing.capture_logs() as records:
        drift = await reconciler(aws, cluster, slurm, join_timeout=0, replace_unjoined=True).tick()

    assert drift is not None and drift.never_joined == [stuck]
    assert [r["instance_id"] for r in records if r["event"] == "drift_never_joined_replaced"] == [
        stuck
    ]
    [replacement] = await group_instances(aws)
    assert replacement != stuck
    state = await aws.call("ec2", "describe_instances", InstanceIds=[stuck])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"


async def group_instances(aws: Aws) -> list[str]:
    response = await aws.call(
        "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[GROUP]
    )
    return [i["InstanceId"] for g in response["AutoScalingGroups"] for i in g["Instances"]]


async def test_a_host_a_second_writer_registered_is_not_removed_as_unowned(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, fleet: Instances
) -> None:
    first, second = await fleet.launch(2)
    await fleet.join(first)
    await drain(aws, cluster, slurm.settings)
    daemon = reconciler(aws, cluster, slurm)
    assert await daemon.tick() == Drift()  # the daemon's registry has read the table
    # `sqswatcher --burst` run by hand: another process, another registry.
    await fleet.join(second)
    await drain(aws, cluster, slurm.settings)

    with structlog.testing.capture_logs() as records:
        await daemon.tick()

    assert [r for r in records if r["event"] == "drift_unowned_host_removed"] == []
    assert await slurm_hosts(slurm) == hosts(first, second)
