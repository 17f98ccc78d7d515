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

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cfncluster_node import ec2, group, logs, supervisor
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings, ReconcilerSettings
from cfncluster_node.group import Member
from cfncluster_node.instances import InstanceRecord, InstanceState
from cfncluster_node.lifecycle import Hostnames
from cfncluster_node.messages import EventKind, InstanceEvent
from cfncluster_node.registry import Registry
from cfncluster_node.schedulers import HostStatus, SchedulerError

# EC2 states of an instance that will never serve again.
GONE = frozenset({"shutting-down", "terminated"})
MISSING = "missing"
# EC2's answers are eventually consistent: an instance it does not know yet is not gone.
_YOUNG = timedelta(minutes=10)


@dataclass(frozen=True)
class Instance:
    """What EC2 says of one instance."""

    instance_id: str
    state: str
    launched_at: datetime | None = None


@dataclass(frozen=True)
class Observation:
    """The three views of the fleet, read one after the other."""

    rows: dict[str, InstanceRecord]
    instances: dict[str, Instance]
    group: dict[str, Member]
    hosts: dict[str, HostStatus]
    hostnames: Hostnames


def live_instances(rows: dict[str, InstanceRecord]) -> set[str]:
    """The instances the table does not yet hold a tombstone for."""
    return {i for i, row in rows.items() if row.state is not InstanceState.TERMINATED}


async def observe(aws: Aws, registry: Registry, compute_group: str | None) -> Observation:
    rows = {row.instance_id: row for row in await registry.table.scan()}
    members = (await group.describe(aws, compute_group)).members if compute_group else {}
    live = live_instances(rows)
    described = await ec2.describe_instances(aws, live | set(members))
    instances = {
        i: Instance(i, item["State"]["Name"], item.get("LaunchTime"))
        for i, item in described.items()
    }
    hosts = {host.hostname: host for host in await registry.scheduler.list_hosts()}
    return Observation(rows, instances, members, hosts, await registry.hostnames())


@dataclass(frozen=True)
class Drift:
    gone: list[InstanceRecord] = field(default_factory=list)
    lost_hosts: list[InstanceRecord] = field(default_factory=list)
    unowned_hosts: list[str] = field(default_factory=list)
    never_joined: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.gone or self.lost_hosts or self.unowned_hosts or self.never_joined)


def diagnose(seen: Observation, *, now: datetime, join_timeout: timedelta) -> Drift:
    """Compare the three views; pure."""
    drift = Drift()
    for instance_id, row in sorted(seen.rows.items()):
        if row.state is InstanceState.TERMINATED:
            continue
        state = seen.instances.get(instance_id, Instance(instance_id, MISSING)).state
        if state in GONE or (state == MISSING and now - row.updated_at > _YOUNG):
            drift.gone.append(row)
        elif (
            row.state is InstanceState.READY
            and state == "running"
            and row.hostname is not None
            and row.hostname not in seen.hosts
            and seen.hostnames.owner(row.hostname) == instance_id
        ):
            drift.lost_hosts.append(row)
    drift.unowned_hosts.extend(sorted(h for h in seen.hosts if seen.hostnames.owner(h) is None))
    for instance_id in sorted(seen.group):
        instance = seen.instances.get(instance_id)
        known = seen.rows.get(instance_id)
        joined = known is not None and known.state is not InstanceState.LAUNCHED
        if (
            instance is not None
            and instance.state == "running"
            and instance.launched_at is not None
            and now - instance.launched_at > join_timeout
            and not joined
        ):
            drift.never_joined.append(instance_id)
    return drift


def healing_events(drift: Drift, now: datetime) -> list[InstanceEvent]:
    """The events that heal the drift: the same as the queue would have carried."""
    terminates = [InstanceEvent(EventKind.TERMINATE, row.instance_id, now) for row in drift.gone]
    joins = [
        InstanceEvent(
            EventKind.READY,
            row.instance_id,
            row.joined_at or row.event_time,
            hostname=row.hostname,
            address=row.address,
            slots=row.slots,
            instance_type=row.instance_type,
        )
        for row in drift.lost_hosts
    ]
    return terminates + joins


class Reconciler:
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
        self._aws = aws
        self._settings = settings
        self._cluster = cluster
        self._registry = registry
        self._burst = burst
        self._log = logs.get()

    async def run(self, stop: asyncio.Event) -> None:
        await supervisor.every(self._settings.interval, self.tick, stop, burst=self._burst)

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
            failed = await self._registry.apply(healing_events(drift, now))
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
