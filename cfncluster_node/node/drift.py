"""Drift between EC2, the instance table and the scheduler, and the events that heal it:
pure.

``reconciler`` reads the three views into an ``Observation``; ``diagnose`` says what
drifted, ``healing_events`` turns that into the ordinary events the registry applies, and
``status`` shows the same diagnosis to an operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cfncluster_node.node.fleet import Member
from cfncluster_node.node.lifecycle import Hostnames
from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.schedulers import HostStatus

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
    #: The scheduler's name for it: the first label of its private DNS name.
    hostname: str | None = None


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


@dataclass(frozen=True)
class Drift:
    gone: list[InstanceRecord] = field(default_factory=list)
    lost_hosts: list[InstanceRecord] = field(default_factory=list)
    unowned_hosts: list[str] = field(default_factory=list)
    never_joined: list[str] = field(default_factory=list)
    #: Hosts a group instance registered itself (slurmd -Z) before its join was applied:
    #: left alone, the join makes them owned; not drift.
    joining: list[str] = field(default_factory=list)

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
    joining: set[str] = set()
    for instance_id in sorted(seen.group):
        instance = seen.instances.get(instance_id)
        known = seen.rows.get(instance_id)
        joined = known is not None and known.state is not InstanceState.LAUNCHED
        if instance is None or instance.state != "running" or joined:
            continue
        if instance.launched_at is not None and now - instance.launched_at > join_timeout:
            drift.never_joined.append(instance_id)
        elif instance.hostname is not None:
            joining.add(instance.hostname)
    for hostname in sorted(h for h in seen.hosts if seen.hostnames.owner(h) is None):
        (drift.joining if hostname in joining else drift.unowned_hosts).append(hostname)
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
