"""The reconciler: the fleet, the instance table and the scheduler, compared and healed.

Messages get lost: a spot reclaim whose notification never came, a queue purged by hand,
a watcher down for longer than the queue keeps messages. Every ``interval`` seconds the
reconciler reads what EC2 (and the compute group) says, what the table says and what the
scheduler says, and heals the drift through the registry, the same idempotent path the
watcher takes: a terminate for an instance that is gone, a join replayed for a host the
scheduler lost, and the removal of scheduler hosts no joined instance holds. A running
instance that never joined is reported, and replaced if configured. Each fix is one log
event naming what drifted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings, ReconcilerSettings
from cfncluster_node.node import ec2, group
from cfncluster_node.node.drift import (
    Drift,
    Instance,
    Observation,
    diagnose,
    healing_events,
    live_instances,
)
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.service import Periodic
from cfncluster_node.schedulers import SchedulerError


async def observe(aws: Aws, registry: Registry, compute_group: str) -> Observation:
    rows = {row.instance_id: row for row in await registry.table.scan()}
    members = (await group.describe(aws, compute_group)).members
    live = live_instances(rows)
    described = await ec2.describe_instances(aws, live | set(members))
    instances = {
        i: Instance(
            i,
            item["State"]["Name"],
            item.get("LaunchTime"),
            item.get("PrivateDnsName", "").split(".")[0] or None,
        )
        for i, item in described.items()
    }
    hosts = {host.hostname: host for host in await registry.scheduler.list_hosts()}
    return Observation(rows, instances, members, hosts, await registry.hostnames())


class Reconciler(Periodic):
    """Compares and heals every ``settings.interval`` seconds.

    aws: the client factory. settings: the ``[reconciler]`` section. cluster: the
    ``[cluster]`` section (the compute group). registry: where fixes take effect.
    burst: reconcile once and return.
    """

    name = "reconciler"

    def __init__(
        self,
        aws: Aws,
        settings: ReconcilerSettings,
        cluster: ClusterSettings,
        registry: Registry,
        *,
        burst: bool = False,
    ) -> None:
        super().__init__(aws, cluster, settings.interval, burst=burst)
        self._settings = settings
        self._registry = registry

    async def tick(self) -> Drift | None:
        """Reconcile once; None when a view could not be read (nothing was changed)."""
        started = time.monotonic()
        try:
            seen = await observe(self._aws, self._registry, self._cluster.compute_group)
        except (AwsError, SchedulerError) as exc:
            self._log.warning("reconcile_skipped", error=str(exc))
            return None
        now = datetime.now(UTC)
        drift = diagnose(seen, now=now, join_timeout=timedelta(seconds=self._settings.join_timeout))
        await self._heal(drift, now)
        self._log.info(
            "reconciled",
            rows=len(seen.rows),
            hosts=len(seen.hosts),
            gone=len(drift.gone),
            lost_hosts=len(drift.lost_hosts),
            unowned_hosts=len(drift.unowned_hosts),
            never_joined=len(drift.never_joined),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return drift

    async def _heal(self, drift: Drift, now: datetime) -> None:
        for event, rows in (
            ("drift_instance_gone", drift.gone),
            ("drift_host_missing", drift.lost_hosts),
        ):
            for row in rows:
                self._log.warning(event, instance_id=row.instance_id, hostname=row.hostname)
        try:
            failed = (await self._registry.apply(healing_events(drift, now))).failed
            removed = await self._registry.remove_unowned(drift.unowned_hosts)
        except (AwsError, SchedulerError) as exc:
            self._log.error("reconcile_failed", error=str(exc))
            return
        for instance_id in sorted(failed):
            self._log.error("drift_not_healed", instance_id=instance_id)
        for hostname in removed:
            self._log.warning("drift_unowned_host_removed", hostname=hostname)
        for instance_id in drift.never_joined:
            await self._never_joined(instance_id)

    async def _never_joined(self, instance_id: str) -> None:
        log = self._log.bind(instance_id=instance_id)
        if not self._settings.replace_unjoined:
            log.warning("drift_never_joined", join_timeout_s=self._settings.join_timeout)
            return
        try:
            await group.terminate(self._aws, instance_id, shrink=False)
        except AwsError as exc:
            log.error("instance_replace_failed", error=str(exc))
            return
        log.warning("drift_never_joined_replaced", join_timeout_s=self._settings.join_timeout)
