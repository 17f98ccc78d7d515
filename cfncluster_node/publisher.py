"""The pending-job publisher: the work the scheduler waits for, as CloudWatch metrics.

Every ``interval`` seconds: one query of the job queue and one of the hosts, the demand
expressed in nodes, and one PutMetricData with ``cfncluster`` / ``pending`` / ``Stack``
(the stack's scale-up alarms read it, PROTOCOL.md section 3) beside what an operator puts
on a dashboard. Only work more nodes would start counts: held jobs, jobs waiting on
another job, a licence, a begin time or a reservation do not, nor a job larger than the
cluster can ever be. A scheduler that does not answer is a gap in the metrics, never a
zero that would let the alarms scale the fleet in.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cfncluster_node import group, logs, supervisor
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings, ConfigError, PublisherSettings
from cfncluster_node.schedulers import Holdup, HostStatus, PendingJob, Scheduler, SchedulerError

NAMESPACE = "cfncluster"
# The metric the stack's scale-up alarms watch (PROTOCOL.md section 3).
PENDING_METRIC = "pending"


@dataclass(frozen=True)
class Demand:
    nodes: int
    jobs: int
    skipped: dict[str, int] = field(default_factory=dict)  # why -> jobs


@dataclass(frozen=True)
class Fleet:
    registered: int
    busy: int
    idle: int


def demand(pending: Iterable[PendingJob], *, slots_per_node: int, max_nodes: int | None) -> Demand:
    """The nodes pending jobs need: the nodes they ask for, or their slots in whole nodes."""
    nodes = jobs = 0
    skipped: Counter[str] = Counter()
    for job in pending:
        needed = max(job.nodes, math.ceil(job.slots / slots_per_node))
        if job.holdup is not Holdup.NONE:
            skipped[job.holdup.value] += 1
        elif max_nodes is not None and needed > max_nodes:
            skipped["larger_than_cluster"] += 1
        else:
            nodes += needed
            jobs += 1
    return Demand(nodes, jobs, dict(skipped))


def slots_per_node(hosts: Sequence[HostStatus], default: int) -> int:
    """What a compute node has: the most common size in the fleet, else the default."""
    sizes = Counter(host.slots for host in hosts if host.slots > 0)
    return sizes.most_common(1)[0][0] if sizes else default


def fleet(hosts: Sequence[HostStatus]) -> Fleet:
    busy = sum(1 for host in hosts if host.busy)
    idle = sum(1 for host in hosts if not host.busy and host.available)
    return Fleet(len(hosts), busy, idle)


def desired_capacity(current: int, max_size: int, busy: int, needed: int) -> int:
    """Direct mode's target: the busy nodes plus the demand, within the group's maximum.

    Never lower than it is: shrinking is idle scale-in's job, node by node, and a
    publisher that lowered the capacity would fight it (and terminate busy nodes).
    """
    return max(current, min(max_size, busy + needed))


def metric_data(
    stack: str, wanted: Demand, running_jobs: int, nodes: Fleet, now: datetime
) -> list[dict[str, Any]]:
    values = {
        PENDING_METRIC: wanted.nodes,
        "pending_jobs": wanted.jobs,
        "running_jobs": running_jobs,
        "registered_nodes": nodes.registered,
        "busy_nodes": nodes.busy,
        "idle_nodes": nodes.idle,
    }
    return [
        {
            "MetricName": name,
            "Dimensions": [{"Name": "Stack", "Value": stack}],
            "Timestamp": now,
            "Value": float(value),
            "Unit": "Count",
        }
        for name, value in values.items()
    ]


class Publisher:
    """Publishes the pending-jobs metric every ``settings.interval`` seconds.

    aws: the client factory. settings: the ``[publisher]`` section. cluster: the
    ``[cluster]`` section (stack name, maximum size, default slots). scheduler: the
    backend asked for jobs and hosts. burst: publish once and return.
    """

    name = "publisher"

    def __init__(
        self,
        aws: Aws,
        settings: PublisherSettings,
        cluster: ClusterSettings,
        scheduler: Scheduler,
        *,
        burst: bool = False,
    ) -> None:
        if settings.direct and cluster.compute_group is None:
            raise ConfigError(
                "key 'cluster.compute_group' is required by 'publisher.direct': name the "
                "compute Auto Scaling group"
            )
        self._aws = aws
        self._settings = settings
        self._cluster = cluster
        self._scheduler = scheduler
        self._burst = burst
        self._log = logs.get()

    async def run(self, stop: asyncio.Event) -> None:
        await supervisor.every(self._settings.interval, self.tick, stop, burst=self._burst)

    async def tick(self) -> Demand | None:
        """Publish once; None when nothing was published (a logged gap)."""
        try:
            jobs, hosts = await asyncio.gather(self._scheduler.jobs(), self._scheduler.list_hosts())
        except SchedulerError as exc:
            self._log.warning("metrics_gap", reason="scheduler_unavailable", error=str(exc))
            return None
        members = await self._group()
        wanted = demand(
            jobs.pending,
            slots_per_node=slots_per_node(hosts, self._cluster.default_slots),
            max_nodes=group.node_limit(self._cluster.max_size, members),
        )
        nodes = fleet(hosts)
        data = metric_data(self._cluster.stack_name, wanted, jobs.running, nodes, datetime.now(UTC))
        try:
            await self._aws.call(
                "cloudwatch", "put_metric_data", Namespace=NAMESPACE, MetricData=data
            )
        except AwsError as exc:
            self._log.error("metrics_publish_failed", error=str(exc))
            return None
        if self._settings.direct and members is not None:
            await self._scale_out(members, wanted, nodes)
        self._log.info(
            "metrics_published",
            pending_nodes=wanted.nodes,
            pending_jobs=wanted.jobs,
            skipped_jobs=wanted.skipped,
            running_jobs=jobs.running,
            registered_nodes=nodes.registered,
            busy_nodes=nodes.busy,
            idle_nodes=nodes.idle,
        )
        return wanted

    async def _group(self) -> group.Group | None:
        if self._cluster.compute_group is None:
            return None
        try:
            return await group.describe(self._aws, self._cluster.compute_group)
        except AwsError as exc:
            self._log.warning("group_unavailable", error=str(exc))
            return None

    async def _scale_out(self, members: group.Group, wanted: Demand, nodes: Fleet) -> None:
        name = self._cluster.compute_group
        target = desired_capacity(members.desired, members.max_size, nodes.busy, wanted.nodes)
        if target <= members.desired:
            return
        try:
            await group.set_desired(self._aws, str(name), target)
        except AwsError as exc:
            self._log.error("capacity_change_failed", group=name, error=str(exc))
            return
        self._log.info(
            "capacity_raised",
            group=name,
            desired=target,
            previous=members.desired,
            pending_nodes=wanted.nodes,
            busy_nodes=nodes.busy,
        )
