"""The pending-job publisher: the work the scheduler waits for, as CloudWatch metrics.

Every ``interval`` seconds: one query of the job queue and one of the hosts, the demand
expressed in nodes, and one PutMetricData with ``cfncluster`` / ``pending`` / ``Stack``
(the stack's scale-up alarms read it, docs/protocol.md) beside what an operator puts
on a dashboard. Only work more nodes would start counts: held jobs, jobs waiting on
another job, a licence, a begin time or a reservation do not, nor a job larger than the
cluster can ever be. A scheduler that does not answer is a gap in the metrics, never a
zero that would let the alarms scale the fleet in.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from cfncluster_node import protocol
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings, PublisherSettings
from cfncluster_node.node import fleet, group
from cfncluster_node.node.fleet import Demand, Group, NodeCounts
from cfncluster_node.node.service import Periodic
from cfncluster_node.schedulers import Scheduler, SchedulerError


def metric_data(
    stack: str, wanted: Demand, running_jobs: int, nodes: NodeCounts, now: datetime
) -> list[dict[str, Any]]:
    values = {
        protocol.PENDING_METRIC: wanted.nodes,
        "pending_jobs": wanted.jobs,
        "running_jobs": running_jobs,
        "registered_nodes": nodes.registered,
        "busy_nodes": nodes.busy,
        "idle_nodes": nodes.idle,
    }
    return [
        {
            "MetricName": name,
            "Dimensions": [{"Name": protocol.METRIC_DIMENSION, "Value": stack}],
            "Timestamp": now,
            "Value": float(value),
            "Unit": "Count",
        }
        for name, value in values.items()
    ]


class Publisher(Periodic):
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
        super().__init__(aws, cluster, settings.interval, burst=burst)
        self._settings = settings
        self._scheduler = scheduler

    async def tick(self) -> Demand | None:
        """Publish once; None when nothing was published (a logged gap)."""
        try:
            jobs, hosts = await asyncio.gather(self._scheduler.jobs(), self._scheduler.list_hosts())
        except SchedulerError as exc:
            self._log.warning("metrics_gap", reason="scheduler_unavailable", error=str(exc))
            return None
        members = await self._group()
        wanted = fleet.demand(
            jobs.pending,
            slots_per_node=fleet.slots_per_node(hosts, self._cluster.default_slots),
            max_nodes=fleet.node_limit(self._cluster.max_size, members),
        )
        nodes = fleet.count_nodes(hosts)
        data = metric_data(self._cluster.stack_name, wanted, jobs.running, nodes, datetime.now(UTC))
        try:
            await self._aws.call(
                "cloudwatch",
                "put_metric_data",
                Namespace=protocol.METRIC_NAMESPACE,
                MetricData=data,
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

    async def _group(self) -> Group | None:
        try:
            return await group.describe(self._aws, self._cluster.compute_group)
        except AwsError as exc:
            self._log.warning("group_unavailable", error=str(exc))
            return None

    async def _scale_out(self, members: Group, wanted: Demand, nodes: NodeCounts) -> None:
        name = self._cluster.compute_group
        target = fleet.desired_capacity(members.desired, members.max_size, nodes.busy, wanted.nodes)
        if target <= members.desired:
            return
        try:
            await group.set_desired(self._aws, name, target)
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
