"""Idle scale-in: which nodes go (pure), and a real slurmd whose busy node never goes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog

from cfncluster_node.aws import Aws
from cfncluster_node.config import ClusterSettings, ScaleInSettings, SlurmSettings
from cfncluster_node.local.cloud import ClusterResources
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import group
from cfncluster_node.node.fleet import Group, Member
from cfncluster_node.node.lifecycle import Hostnames
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.node.scalein import (
    DRAIN_REASON,
    Candidate,
    Protection,
    ScaleIn,
    candidates,
    protection,
)
from cfncluster_node.schedulers import HostStatus
from cfncluster_node.schedulers.slurm import Slurm
from tests.conftest import GROUP, NODE, wait_running
from tests.test_sqswatcher import registry_for, rows, slurm_hosts

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"


def joined(instance: str, hostname: str) -> InstanceRecord:
    return InstanceRecord(instance, InstanceState.READY, NOW, NOW, hostname=hostname, joined_at=NOW)


def host(
    name: str, *, busy: bool = False, idle_min: int | None = 30, available: bool = True
) -> HostStatus:
    since = None if idle_min is None else NOW - timedelta(minutes=idle_min)
    return HostStatus(name, 4, None, "idle", available=available, busy=busy, idle_since=since)


def fleet(
    *hosts: HostStatus,
    desired: int = 3,
    min_size: int = 0,
    lifecycle: str = "InService",
    protected: Sequence[str] = (),
) -> tuple[Group, dict[str, HostStatus], Hostnames]:
    ids = [A, B, C][: len(hosts)]
    members = Group(
        desired,
        min_size,
        10,
        {i: Member(lifecycle, protected=i in protected) for i in ids},
    )
    names = Hostnames(joined(i, h.hostname) for i, h in zip(ids, hosts, strict=True))
    return members, {h.hostname: h for h in hosts}, names


def choose(*hosts: HostStatus, pending: int = 0, **group: object) -> list[Candidate]:
    members, listed, names = fleet(*hosts, **group)  # type: ignore[arg-type]
    return candidates(
        members, listed, names, pending_nodes=pending, now=NOW, idle_for=timedelta(minutes=10)
    )


def test_nodes_idle_long_enough_go_longest_idle_first() -> None:
    chosen = choose(host("a", idle_min=15), host("b", idle_min=5), host("c", idle_min=40))
    assert chosen == [Candidate(C, "c"), Candidate(A, "a")]


def test_busy_draining_down_or_unknown_idle_nodes_stay() -> None:
    assert choose(host("a", busy=True), host("b", available=False), host("c", idle_min=None)) == []


def test_nothing_goes_while_pending_work_could_use_it() -> None:
    assert choose(host("a"), pending=1) == []


def test_the_group_never_goes_below_its_minimum() -> None:
    assert choose(host("a"), host("b"), host("c"), desired=3, min_size=2) == [Candidate(A, "a")]


def test_instances_not_in_service_are_left_to_the_group() -> None:
    assert choose(host("a"), lifecycle="Terminating") == []


def test_busy_nodes_get_protection_and_idle_ones_lose_it() -> None:
    members, listed, names = fleet(
        host("a", busy=True), host("b"), host("c", busy=True), protected=[B, C]
    )
    assert protection(members, listed, names) == Protection(protect=[A], unprotect=[B])


def scale_in(aws: Aws, cluster: ClusterResources, scheduler: SlurmSettings | Slurm) -> ScaleIn:
    return ScaleIn(
        aws,
        ScaleInSettings(idle_minutes=0, grace_seconds=0.5),
        ClusterSettings(
            stack_name="test", region="us-east-1", table=cluster.table, compute_group=GROUP
        ),
        registry_for(aws, cluster, scheduler),
        burst=True,
    )


async def node_busy(slurm: LocalSlurm) -> bool:
    [listed] = await Slurm(slurm.settings).list_hosts()
    return listed.busy


async def test_a_busy_node_is_protected_and_kept_then_scaled_in_once_idle(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, compute_node: str
) -> None:
    job = slurm.sbatch("-w", NODE, "--wrap", "sleep 120")
    wait_running(slurm, job)

    assert await scale_in(aws, cluster, slurm.settings).tick() == []
    members = await group.describe(aws, GROUP)
    assert members.members[compute_node].protected
    assert members.desired == 1

    slurm.scancel(job)
    for _ in range(150):
        if not await node_busy(slurm):
            break
        await asyncio.sleep(0.2)

    with structlog.testing.capture_logs() as records:
        retired = await scale_in(aws, cluster, slurm.settings).tick()

    assert retired == [Candidate(compute_node, NODE)]
    members = await group.describe(aws, GROUP)
    assert (members.desired, list(members.members)) == (0, [])
    assert await slurm_hosts(slurm) == {}
    assert (await rows(aws, cluster))[compute_node].state is InstanceState.TERMINATED
    events = [r["event"] for r in records]
    assert "scale_in_protection_lifted" in events and "node_scaled_in" in events


class JobLandsBeforeTheDrain(Slurm):
    """The race: a job starts on the node between the idle check and the drain."""

    def __init__(self, slurm: LocalSlurm) -> None:
        super().__init__(slurm.settings)
        self.slurm = slurm

    async def drain_hosts(self, hostnames: Sequence[str], reason: str) -> None:
        job = self.slurm.sbatch("-w", hostnames[0], "--wrap", "sleep 120")
        await asyncio.to_thread(wait_running, self.slurm, job)
        await super().drain_hosts(hostnames, reason)


async def test_a_job_that_lands_between_drain_and_terminate_keeps_its_node(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, compute_node: str
) -> None:
    with structlog.testing.capture_logs() as records:
        retired = await scale_in(aws, cluster, JobLandsBeforeTheDrain(slurm)).tick()

    assert retired == []
    members = await group.describe(aws, GROUP)
    assert (members.desired, list(members.members)) == (1, [compute_node])
    [listed] = await Slurm(slurm.settings).list_hosts()
    assert listed.busy and "drain" not in listed.state
    assert [r["reason"] for r in records if r["event"] == "scale_in_aborted"] == [
        "job_landed_or_terminate_failed"
    ]
    slurm.scancel("-u", "root")


async def test_a_drain_left_by_a_pass_that_was_killed_is_resumed_by_the_next(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, compute_node: str
) -> None:
    # What a pass killed during its grace period leaves: the node drained, nothing more.
    await Slurm(slurm.settings).drain_hosts([NODE], DRAIN_REASON)

    with structlog.testing.capture_logs() as records:
        await scale_in(aws, cluster, slurm.settings).tick()

    [listed] = await Slurm(slurm.settings).list_hosts()
    assert "drain" not in listed.state
    assert [r["reason"] for r in records if r["event"] == "scale_in_aborted"] == [
        "left_by_an_unfinished_pass"
    ]


async def test_a_drain_of_an_admin_is_left_alone(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, compute_node: str
) -> None:
    await Slurm(slurm.settings).drain_hosts([NODE], "disk errors, see ticket 42")

    await scale_in(aws, cluster, slurm.settings).tick()

    [listed] = await Slurm(slurm.settings).list_hosts()
    assert "drain" in listed.state and listed.reason == "disk errors, see ticket 42"
