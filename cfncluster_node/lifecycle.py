"""What a batch of instance events means: pure decisions, no I/O.

Events arrive at least once, in any order. Each is ranked by a total order: a terminate
outranks everything (an instance never comes back), then join and leave by event time,
and a launch only ever creates a row. The instance table keeps the rank of the state it
holds, so an event that ranks lower is superseded whatever batch it arrives in: any
duplication or reordering of the same events ends in the same table and scheduler state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cfncluster_node.instances import InstanceRecord, InstanceState
from cfncluster_node.messages import EventKind, InstanceEvent
from cfncluster_node.schedulers import Host

LIFECYCLE = frozenset({EventKind.LAUNCH, EventKind.READY, EventKind.LEAVE, EventKind.TERMINATE})

_STATE_OF = {
    EventKind.LAUNCH: InstanceState.LAUNCHED,
    EventKind.READY: InstanceState.READY,
    EventKind.LEAVE: InstanceState.LEFT,
    EventKind.TERMINATE: InstanceState.TERMINATED,
}
# (class, tie-break): the class orders before time, the tie-break after it.
_RANK = {
    InstanceState.LAUNCHED: (0, 0),
    InstanceState.READY: (1, 0),
    InstanceState.LEFT: (1, 1),
    InstanceState.TERMINATED: (2, 0),
}

Rank = tuple[int, datetime, int]


def rank(state: InstanceState, time: datetime) -> Rank:
    group, tie = _RANK[state]
    return (group, time, tie)


def event_rank(event: InstanceEvent) -> Rank:
    return rank(_STATE_OF[event.kind], event.time)


def coalesce(events: Iterable[InstanceEvent]) -> dict[str, InstanceEvent]:
    """The highest-ranked lifecycle event of each instance."""
    winners: dict[str, InstanceEvent] = {}
    for event in events:
        if event.kind not in LIFECYCLE:
            continue
        best = winners.get(event.instance_id)
        if best is None or event_rank(event) > event_rank(best):
            winners[event.instance_id] = event
    return winners


@dataclass(frozen=True)
class Decision:
    """What happened to one instance, for the log: ``event`` is the log event name."""

    event: str
    instance_id: str
    hostname: str | None


@dataclass
class Plan:
    records: list[InstanceRecord] = field(default_factory=list)
    register: list[Host] = field(default_factory=list)
    unregister: dict[str, str] = field(default_factory=dict)  # hostname -> instance id
    decisions: list[Decision] = field(default_factory=list)


def plan(
    events: Mapping[str, InstanceEvent],
    records: Mapping[str, InstanceRecord],
    owners: Mapping[str, str],
    *,
    now: datetime,
    default_slots: int,
    tombstone_for: timedelta,
) -> Plan:
    """Decide the rows to write and the hosts to add and remove for coalesced events.

    ``owners`` maps each registered hostname to its instance: a host whose name was taken
    over by a newer instance (private IPs are reused) is never removed for the old one.
    The plan enforces the final state even when the row already holds it, so a batch that
    failed half-way is completed by its redelivery.
    """
    result = Plan()
    for instance_id, event in sorted(events.items()):
        current = records.get(instance_id)
        new = _apply(event, current, now=now, tombstone_for=tombstone_for)
        if new is not None and current is not None and _same_facts(new, current):
            new = current
        final = new or current
        assert final is not None
        if new is not None and new is not current:
            result.records.append(final)
        result.decisions.append(_decision(event, current, new, final))
        if final.hostname is None:
            continue
        if final.state is InstanceState.READY:
            slots = final.slots or default_slots
            result.register.append(Host(final.hostname, slots, final.address, instance_id))
        elif (
            final.state in (InstanceState.LEFT, InstanceState.TERMINATED)
            and owners.get(final.hostname, instance_id) == instance_id
        ):
            result.unregister[final.hostname] = instance_id
        renamed = current is not None and current.hostname not in (None, final.hostname)
        if renamed and owners.get(current.hostname, instance_id) == instance_id:  # type: ignore[union-attr,arg-type]
            # The instance re-joined under another name: its old name goes.
            result.unregister[current.hostname] = instance_id  # type: ignore[union-attr,index]
    taken = {host.hostname for host in result.register}
    result.unregister = {h: i for h, i in result.unregister.items() if h not in taken}
    return result


def _apply(
    event: InstanceEvent,
    current: InstanceRecord | None,
    *,
    now: datetime,
    tombstone_for: timedelta,
) -> InstanceRecord | None:
    """The row after ``event``, or None when the event is superseded by the row."""
    state = _STATE_OF[event.kind]
    if current is not None and rank(current.state, current.event_time) > event_rank(event):
        return None
    if state is InstanceState.LAUNCHED and current is not None:
        return None
    if state is InstanceState.TERMINATED:
        base = current or InstanceRecord(event.instance_id, state, event.time, now)
        expires = int((now + tombstone_for).timestamp())
        return replace(base, state=state, event_time=event.time, updated_at=now, expires_at=expires)
    if state is InstanceState.LEFT:
        base = current or InstanceRecord(event.instance_id, state, event.time, now)
        return replace(base, state=state, event_time=event.time, updated_at=now)
    return InstanceRecord(
        instance_id=event.instance_id,
        state=state,
        event_time=event.time,
        updated_at=now,
        hostname=event.hostname or (current.hostname if current else None),
        address=event.address,
        slots=event.slots,
        instance_type=event.instance_type or (current.instance_type if current else None),
    )


def _same_facts(a: InstanceRecord, b: InstanceRecord) -> bool:
    return replace(a, updated_at=b.updated_at, expires_at=b.expires_at) == b


def _decision(
    event: InstanceEvent,
    current: InstanceRecord | None,
    new: InstanceRecord | None,
    final: InstanceRecord,
) -> Decision:
    if new is None:
        superseded_by_terminate = current is not None and (
            current.state is InstanceState.TERMINATED
        )
        name = "event_after_terminate_ignored" if superseded_by_terminate else "event_superseded"
    elif new is current:
        name = "event_already_applied"
    else:
        name = {
            InstanceState.LAUNCHED: "instance_launched",
            InstanceState.READY: "host_registered",
            InstanceState.LEFT: "host_unregistered",
            InstanceState.TERMINATED: "instance_terminated",
        }[final.state]
    return Decision(name, event.instance_id, final.hostname)


def update_owners(owners: dict[str, str], records: Iterable[InstanceRecord]) -> None:
    """Keep the hostname -> instance map in step with rows just written."""
    for record in records:
        if record.hostname is None:
            continue
        if record.state is InstanceState.READY:
            owners[record.hostname] = record.instance_id
        elif owners.get(record.hostname) == record.instance_id:
            del owners[record.hostname]


def owners_of(records: Iterable[InstanceRecord]) -> dict[str, str]:
    owners: dict[str, str] = {}
    # Oldest first, so the newest registration of a reused name wins.
    live = (r for r in records if r.state is InstanceState.READY)
    update_owners(owners, sorted(live, key=lambda r: r.event_time))
    return owners
