"""The pending-job publisher: demand in nodes (pure), and metrics through moto's CloudWatch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from hypothesis import given
from hypothesis import strategies as st

from cfncluster_node import protocol
from cfncluster_node.aws import Aws
from cfncluster_node.config import ClusterSettings, PublisherSettings, SlurmSettings
from cfncluster_node.local.cloud import create_compute_group
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import group
from cfncluster_node.node.fleet import (
    Demand,
    NodeCounts,
    count_nodes,
    demand,
    desired_capacity,
    slots_per_node,
)
from cfncluster_node.node.publisher import Publisher
from cfncluster_node.schedulers import Holdup, Host, HostStatus, PendingJob
from cfncluster_node.schedulers.slurm import Slurm
from tests.conftest import GROUP, NODE, wait_running
from tests.test_sqswatcher import unreachable_slurm


def job(nodes: int = 1, slots: int = 1, holdup: Holdup = Holdup.NONE) -> PendingJob:
    return PendingJob("1", nodes, slots, holdup)


def host(slots: int = 4, *, busy: bool = False, available: bool = True) -> HostStatus:
    return HostStatus("h", slots, None, "idle", available=available, busy=busy)


def test_demand_is_the_nodes_asked_for_or_the_slots_in_whole_nodes() -> None:
    pending = [job(nodes=2), job(slots=9), job(nodes=2, slots=12)]

    assert demand(pending, slots_per_node=4, max_nodes=None) == Demand(nodes=2 + 3 + 3, jobs=3)


def test_work_more_nodes_would_not_start_is_not_demand() -> None:
    pending = [
        job(holdup=Holdup.HELD),
        job(holdup=Holdup.DEPENDENCY),
        job(holdup=Holdup.LICENSES),
        job(holdup=Holdup.BEGIN_TIME),
        job(holdup=Holdup.RESERVATION),
        job(nodes=11),
        job(slots=41),
        job(nodes=10),
    ]

    assert demand(pending, slots_per_node=4, max_nodes=10) == Demand(
        nodes=10,
        jobs=1,
        skipped={
            "held": 1,
            "dependency": 1,
            "licenses": 1,
            "begin_time": 1,
            "reservation": 1,
            "larger_than_cluster": 2,
        },
    )


@given(
    st.lists(
        st.builds(
            job,
            nodes=st.integers(1, 64),
            slots=st.integers(1, 512),
            holdup=st.sampled_from(list(Holdup)),
        ),
        max_size=50,
    ),
    st.integers(1, 128),
    st.one_of(st.none(), st.integers(0, 100)),
)
def test_demand_counts_every_job_once_and_each_within_the_cluster(
    pending: list[PendingJob], slots: int, max_nodes: int | None
) -> None:
    result = demand(pending, slots_per_node=slots, max_nodes=max_nodes)

    assert result.jobs + sum(result.skipped.values()) == len(pending)
    assert result.nodes >= result.jobs
    if max_nodes is not None:
        assert result.nodes <= result.jobs * max_nodes


def test_node_size_is_the_fleets_most_common_else_the_default() -> None:
    assert slots_per_node([host(4), host(8), host(8)], default=1) == 8
    assert slots_per_node([], default=2) == 2


def test_fleet_counts_busy_and_idle_nodes_that_can_take_work() -> None:
    hosts = [host(busy=True), host(), host(available=False), host()]

    assert count_nodes(hosts) == NodeCounts(registered=4, busy=1, idle=2)


async def published(aws: Aws, name: str, stack: str = "test") -> list[float]:
    now = datetime.now(UTC)
    response = await aws.call(
        "cloudwatch",
        "get_metric_statistics",
        Namespace=protocol.METRIC_NAMESPACE,
        MetricName=name,
        Dimensions=[{"Name": "Stack", "Value": stack}],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum", "SampleCount"],
    )
    return [point["Maximum"] for point in response["Datapoints"]]


def publisher(aws: Aws, settings: SlurmSettings, *, interval: float = 60) -> Publisher:
    return Publisher(
        aws,
        PublisherSettings(interval=interval),
        ClusterSettings(
            stack_name="test", region="us-east-1", table="unused", compute_group=GROUP, max_size=10
        ),
        Slurm(settings),
        burst=interval == 60,
    )


async def test_pending_jobs_of_the_real_slurm_are_published_as_nodes(
    aws: Aws, slurm: LocalSlurm
) -> None:
    await Slurm(slurm.settings).add_hosts(
        [Host("ip-10-4-0-1", 4, "127.4.0.1"), Host("ip-10-4-0-2", 4, "127.4.0.2")]
    )
    slurm.sbatch("--hold", "-N", "1", "--wrap", "true")
    slurm.sbatch("-N", "2", "-c", "3", "--wrap", "true")  # 2 nodes
    slurm.sbatch("-n", "12", "--wrap", "true")  # 12 slots: 3 nodes of 4
    slurm.sbatch("-N", "50", "--wrap", "true")  # larger than the cluster's 10

    wanted = await publisher(aws, slurm.settings).tick()

    assert wanted == Demand(nodes=5, jobs=2, skipped={"held": 1, "larger_than_cluster": 1})
    assert await published(aws, "pending") == [5.0]
    assert await published(aws, "pending_jobs") == [2.0]
    assert await published(aws, "registered_nodes") == [2.0]
    assert await published(aws, "running_jobs") == [0.0]


async def test_a_scheduler_that_does_not_answer_is_a_gap_not_a_zero(
    aws: Aws, tmp_path: Path
) -> None:
    with structlog.testing.capture_logs() as records:
        wanted = await publisher(aws, unreachable_slurm(tmp_path)).tick()

    assert wanted is None
    assert await published(aws, "pending") == []
    assert [r["reason"] for r in records if r["event"] == "metrics_gap"] == [
        "scheduler_unavailable"
    ]


async def test_the_service_publishes_every_interval_until_stopped(
    aws: Aws, slurm: LocalSlurm
) -> None:
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as records:
        task = asyncio.create_task(publisher(aws, slurm.settings, interval=0.1).run(stop))
        for _ in range(300):
            if sum(r["event"] == "metrics_published" for r in records) >= 3:
                break
            await asyncio.sleep(0.05)
        stop.set()
        # Stops once the cycle in flight ends, not after another interval; the
        # bound is generous because a loaded CI box can make one squeue slow.
        await asyncio.wait_for(task, 30)

    assert sum(r["event"] == "metrics_published" for r in records) >= 3


def test_direct_mode_raises_capacity_to_busy_plus_demand_within_the_maximum() -> None:
    assert desired_capacity(current=1, max_size=10, busy=2, needed=3) == 5
    assert desired_capacity(current=1, max_size=4, busy=2, needed=3) == 4


def test_direct_mode_never_lowers_capacity_and_so_never_fights_scale_in() -> None:
    assert desired_capacity(current=6, max_size=10, busy=1, needed=0) == 6
    assert desired_capacity(current=6, max_size=10, busy=2, needed=3) == 6


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 100))
def test_direct_mode_target_is_never_below_current_nor_above_max_unless_current_is(
    current: int, max_size: int, busy: int, needed: int
) -> None:
    target = desired_capacity(current, max_size, busy, needed)
    assert target >= current
    assert target <= max(current, max_size)


async def test_direct_mode_sets_the_groups_desired_capacity(aws: Aws, slurm: LocalSlurm) -> None:
    await create_compute_group(aws, GROUP, desired=1, max_size=4)
    await Slurm(slurm.settings).add_hosts([Host("ip-10-4-1-1", 4, "127.4.1.1")])
    slurm.sbatch("-N", "3", "--wrap", "true")
    slurm.sbatch("-n", "8", "--wrap", "true")  # 2 nodes of 4 slots
    direct = Publisher(
        aws,
        PublisherSettings(direct=True),
        ClusterSettings(stack_name="test", region="us-east-1", table="unused", compute_group=GROUP),
        Slurm(slurm.settings),
        burst=True,
    )

    with structlog.testing.capture_logs() as records:
        await direct.tick()

    assert (await group.describe(aws, GROUP)).desired == 4  # 0 busy + 5 needed, max 4
    [raised] = [r for r in records if r["event"] == "capacity_raised"]
    assert (raised["previous"], raised["desired"], raised["pending_nodes"]) == (1, 4, 5)


async def test_busy_nodes_and_running_jobs_are_counted_from_a_real_slurmd(
    aws: Aws, slurm: LocalSlurm, compute_node: str
) -> None:
    job = slurm.sbatch("-w", NODE, "--wrap", "sleep 120")
    await asyncio.to_thread(wait_running, slurm, job)

    await publisher(aws, slurm.settings).tick()

    assert await published(aws, "busy_nodes") == [1.0]
    assert await published(aws, "idle_nodes") == [0.0]
    assert await published(aws, "running_jobs") == [1.0]
