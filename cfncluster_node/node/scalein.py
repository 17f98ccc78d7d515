"""Idle scale-in, from the head node: a node idle long enough goes, a busy one never does.

Every ``interval`` seconds: busy nodes get the group's scale-in protection (so the group
itself can never pick one), idle ones lose it. Then, while no pending job could use a
node and the group is above its minimum, the nodes idle for ``idle_minutes`` are drained,
looked at again after ``grace_seconds``, and terminated with the group shrinking by one;
a node that took a job in between is resumed instead. Compute nodes need no Auto Scaling
permission at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings, ScaleInSettings
from cfncluster_node.node import fleet, group
from cfncluster_node.node.fleet import Group
from cfncluster_node.node.lifecycle import Hostnames
from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.service import Periodic
from cfncluster_node.schedulers import HostStatus, SchedulerError

DRAIN_REASON = "cfncluster-node: idle, scaling in"


@dataclass(frozen=True)
class Candidate:
    instance_id: str
    hostname: str


@dataclass(frozen=True)
class Protection:
    protect: list[str]
    unprotect: list[str]


def protection(members: Group, hosts: Mapping[str, HostStatus], hostnames: Hostnames) -> Protection:
    """Busy members must be protected, idle ones not; what to change."""
    protect, unprotect = [], []
    for instance_id, member in sorted(members.members.items()):
        name = hostnames.name_of(instance_id)
        host = hosts.get(name) if name else None
        busy = host is not None and host.busy
        if busy and not member.protected:
            protect.append(instance_id)
        elif not busy and member.protected:
            unprotect.append(instance_id)
    return Protection(protect, unprotect)


def leaked_drains(hosts: Mapping[str, HostStatus]) -> list[str]:
    """Hosts still drained by a pass that never finished (a crash, a kill during the
    grace period): no longer candidates, and nothing else would ever resume them."""
    return sorted(
        name
        for name, host in hosts.items()
        if not host.available and (host.reason or "").startswith(DRAIN_REASON)
    )


def _not_redrained(host: HostStatus) -> bool:
    """No one drained the host again for reasons of their own (SGE keeps no reason)."""
    return host.reason is None or host.reason.startswith(DRAIN_REASON)


def still_ours(host: HostStatus | None) -> bool:
    """After the grace period: the drain is still scale-in's and nothing runs there. A
    host an admin resumed, or drained again for reasons of their own, is theirs now."""
    return host is not None and not host.busy and not host.available and _not_redrained(host)


def candidates(
    members: Group,
    hosts: Mapping[str, HostStatus],
    hostnames: Hostnames,
    *,
    pending_nodes: int,
    now: datetime,
    idle_for: timedelta,
) -> list[Candidate]:
    """The nodes to retire, longest idle first; none while pending work could use them."""
    room = members.desired - members.min_size
    if pending_nodes > 0 or room <= 0:
        return []
    idle = []
    for instance_id, member in members.members.items():
        name = hostnames.name_of(instance_id)
        host = hosts.get(name) if name else None
        if (
            host is not None
            and hostnames.owner(host.hostname) == instance_id
            and member.lifecycle == "InService"
            and not host.busy
            and host.available
            and host.idle_since is not None
            and now - host.idle_since >= idle_for
        ):
            idle.append((host.idle_since, Candidate(instance_id, host.hostname)))
    return [candidate for _, candidate in sorted(idle, key=lambda pair: pair[0])][:room]


class ScaleIn(Periodic):
    """Protects busy nodes and retires idle ones, every ``settings.interval`` seconds.

    aws: the client factory. settings: the ``[scalein]`` section. cluster: the
    ``[cluster]`` section (the compute group, its maximum size, node size). registry:
    where the retired instance's terminate takes effect. burst: one pass, then return.
    """

    name = "scalein"

    def __init__(
        self,
        aws: Aws,
        settings: ScaleInSettings,
        cluster: ClusterSettings,
        registry: Registry,
        *,
        burst: bool = False,
    ) -> None:
        super().__init__(aws, cluster, settings.interval, burst=burst)
        self._settings = settings
        self._group_name = cluster.compute_group
        self._registry = registry

    async def tick(self) -> list[Candidate] | None:
        """One pass; returns the nodes retired, None when the fleet could not be read."""
        scheduler = self._registry.scheduler
        try:
            members = await group.describe(self._aws, self._group_name)
            listed, jobs = await asyncio.gather(scheduler.list_hosts(), scheduler.jobs())
        except (AwsError, SchedulerError) as exc:
            self._log.warning("scale_in_skipped", error=str(exc))
            return None
        hosts = {host.hostname: host for host in listed}
        # Passes run one at a time: a drain of ours seen now belongs to no running pass.
        await self._resume(leaked_drains(hosts), reason="left_by_an_unfinished_pass")
        hostnames = await self._registry.hostnames()
        await self._protect(protection(members, hosts, hostnames))
        wanted = fleet.demand(
            jobs.pending,
            slots_per_node=fleet.slots_per_node(listed, self._cluster.default_slots),
            max_nodes=fleet.node_limit(self._cluster.max_size, members),
        )
        chosen = candidates(
            members,
            hosts,
            hostnames,
            pending_nodes=wanted.nodes,
            now=datetime.now(UTC),
            idle_for=timedelta(minutes=self._settings.idle_minutes),
        )
        if not chosen:
            return []
        return await self._retire(chosen)

    async def _protect(self, change: Protection) -> None:
        for ids, on in ((change.protect, True), (change.unprotect, False)):
            if not ids:
                continue
            try:
                await group.protect(self._aws, self._group_name, ids, on)
            except AwsError as exc:
                self._log.error("scale_in_protection_failed", protected=on, error=str(exc))
                continue
            for instance_id in ids:
                self._log.info(
                    "scale_in_protection_set" if on else "scale_in_protection_lifted",
                    instance_id=instance_id,
                )

    async def _retire(self, chosen: Sequence[Candidate]) -> list[Candidate]:
        scheduler = self._registry.scheduler
        names = [c.hostname for c in chosen]
        try:
            await scheduler.drain_hosts(names, DRAIN_REASON)
        except SchedulerError as exc:
            self._log.error("scale_in_drain_failed", error=str(exc))
            return []
        try:
            await asyncio.wait_for(self._stop.wait(), self._settings.grace_seconds)
        except TimeoutError:
            pass
        else:
            await self._resume(names, reason="stopping")
            return []
        # A job that started before the drain took hold shows up now: that node stays.
        retired: list[Candidate] = []
        try:
            hosts = {host.hostname: host for host in await scheduler.list_hosts()}
        except SchedulerError as exc:
            self._log.error("scale_in_check_failed", error=str(exc))
            await self._resume(names, reason="check_failed")
            return []
        for candidate in chosen:
            if not still_ours(hosts.get(candidate.hostname)):
                continue
            try:
                await group.terminate(self._aws, candidate.instance_id, shrink=True)
            except AwsError as exc:
                self._log.error(
                    "scale_in_terminate_failed", instance_id=candidate.instance_id, error=str(exc)
                )
                continue
            retired.append(candidate)
            self._log.info(
                "node_scaled_in", instance_id=candidate.instance_id, hostname=candidate.hostname
            )
        kept = [
            c.hostname
            for c in chosen
            if c not in retired and c.hostname in hosts and _not_redrained(hosts[c.hostname])
        ]
        await self._resume(kept, reason="job_landed_or_terminate_failed")
        now = datetime.now(UTC)
        try:
            # Now rather than when the notification comes: the node is gone already.
            await self._registry.apply(
                InstanceEvent(EventKind.TERMINATE, c.instance_id, now) for c in retired
            )
        except AwsError as exc:
            self._log.warning("scale_in_record_deferred", error=str(exc))
        return retired

    async def _resume(self, hostnames: Sequence[str], *, reason: str) -> None:
        if not hostnames:
            return
        try:
            await self._registry.scheduler.resume_hosts(hostnames)
        except SchedulerError as exc:
            self._log.error("scale_in_resume_failed", hostnames=list(hostnames), error=str(exc))
            return
        for hostname in hostnames:
            self._log.info("scale_in_aborted", hostname=hostname, reason=reason)
