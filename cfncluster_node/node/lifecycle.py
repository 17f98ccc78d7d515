"""What a batch of instance events means: pure decisions, no I/O.

Events arrive at least once, in any order. Each is ranked by a total order: a terminate
outranks everything (an instance never comes back), then join and leave by event time,
and a launch only ever creates a row. The instance table keeps the rank of the state it
holds, so an event that ranks lower is superseded whatever batch it arrives in.

Hostnames come from private IPs, which are reused: one name can appear in the rows of
several instances. The name belongs to the row that names it with the latest event; it
is registered only if that row is a join. Both rules depend on the set of rows alone,
never on the order they were written in, so any duplication or reordering of the same
events ends in the same table and the same scheduler hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.schedulers import Host

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


def coalesce(events: Iterable[InstanceEvent]) -> dict[str, list[InstanceEvent]]:
    """Each instance's distinct events, lowest rank first: the last one is the winner.

    The others still count: a terminate carries no hostname, and the tombstone learns it
    from a join in the same batch, as it would had the join come in an earlier one.
    """
    grouped: dict[str, list[InstanceEvent]] = {}
    for event in dict.fromkeys(events):
        grouped.setdefault(event.instance_id, []).append(event)
    return {i: sorted(evs, key=event_rank) for i, evs in grouped.items()}


class Hostnames:
    """Which instance each hostname belongs to, from the rows that name it."""

    def __init__(self, records: Iterable[InstanceRecord] = ()) -> None:
        self._rows: dict[str, dict[str, InstanceRecord]] = {}
        self._name_of: dict[str, str] = {}
        for record in records:
            self.note(record)

    def copy(self) -> Hostnames:
        other = Hostnames()
        other._rows = {name: dict(rows) for name, rows in self._rows.items()}
        other._name_of = dict(self._name_of)
        return other

    def note(self, record: InstanceRecord) -> None:
        """Take a row just written (the latest of its instance) into account."""
        previous = self._name_of.pop(record.instance_id, None)
        if previous is not None:
            rows = self._rows[previous]
            del rows[record.instance_id]
            if not rows:
                del self._rows[previous]
        if record.hostname is not None:
            self._rows.setdefault(record.hostname, {})[record.instance_id] = record
            self._name_of[record.instance_id] = record.hostname

    def name_of(self, instance_id: str) -> str | None:
        """The hostname the instance's row gives."""
        return self._name_of.get(instance_id)

    def owner(self, hostname: str) -> str | None:
        """The instance the host is registered for, or None if it should not exist.

        The name belongs to the instance that joined with it last; while that instance
        is not joined (it left, or is gone), the name is nobody's.
        """
        joined = [r for r in self._rows.get(hostname, {}).values() if r.joined_at is not None]
        if not joined:
            return None
        latest = max(joined, key=lambda r: (r.joined_at, r.instance_id))
        return latest.instance_id if latest.state is InstanceState.READY else None

    def __len__(self) -> int:
        return sum(1 for name in self._rows if self.owner(name) is not None)


@dataclass(frozen=True)
class Decision:
    """What happened to one instance, for the log: ``event`` is the log event name."""

    event: str
    instance_id: str
    hostname: str | None


@dataclass
class Plan:
    hostnames: Hostnames
    records: list[InstanceRecord] = field(default_factory=list)
    register: list[Host] = field(default_factory=list)
    unregister: dict[str, str] = field(default_factory=dict)  # hostname -> instance id
    decisions: list[Decision] = field(default_factory=list)


def plan(
    events: Mapping[str, Sequence[InstanceEvent]],
    records: Mapping[str, InstanceRecord],
    hostnames: Hostnames,
    *,
    now: datetime,
    default_slots: int,
    tombstone_for: timedelta,
) -> Plan:
    """Decide the rows to write and the hosts to add and remove for coalesced events.

    The plan enforces the final state even when the row already holds it, so a batch that
    failed half-way is completed by its redelivery. ``Plan.hostnames`` is ``hostnames``
    after the plan's rows are written.
    """
    after = hostnames.copy()
    finals: dict[str, tuple[InstanceEvent, InstanceRecord | None, InstanceRecord]] = {}
    result = Plan(after)
    for instance_id, history in sorted(events.items()):
        current = records.get(instance_id)
        final = current
        for event in history:
            final = _apply(event, final, now=now, tombstone_for=tombstone_for)
        assert final is not None
        if current is not None and _same_facts(final, current):
            final = current
        else:
            result.records.append(final)
        after.note(final)
        finals[instance_id] = (history[-1], current, final)
    for instance_id, (event, current, final) in finals.items():
        names = {final.hostname, current.hostname if current else None} - {None}
        owned = False
        for name in sorted(n for n in names if n is not None):
            owner = after.owner(name)
            if owner == instance_id and name == final.hostname:
                owned = True
                slots = final.slots or default_slots
                result.register.append(Host(name, slots, final.address, instance_id))
            elif owner is None:
                result.unregister[name] = instance_id
        result.decisions.append(_decision(event, current, final, owned=owned))
    return result


def _apply(
    event: InstanceEvent,
    current: InstanceRecord | None,
    *,
    now: datetime,
    tombstone_for: timedelta,
) -> InstanceRecord:
    """The row after ``event``."""
    state = _STATE_OF[event.kind]
    joined = event.time if state is InstanceState.READY else None
    if current is not None and _superseded(event, current):
        # Superseded, but what the event knows still counts: which name the instance had
        # and when it joined. Then the row does not depend on the order events came in.
        return replace(
            current,
            hostname=current.hostname or event.hostname,
            address=current.address or event.address,
            slots=current.slots or event.slots,
            instance_type=current.instance_type or event.instance_type,
            joined_at=_latest(current.joined_at, joined),
            updated_at=now,
        )
    if state is InstanceState.LEFT or state is InstanceState.TERMINATED:
        base = current or InstanceRecord(event.instance_id, state, event.time, now)
        terminated = state is InstanceState.TERMINATED
        return replace(
            base,
            state=state,
            event_time=event.time,
            updated_at=now,
            hostname=base.hostname or event.hostname,
            expires_at=int((now + tombstone_for).timestamp()) if terminated else None,
        )
    return InstanceRecord(
        instance_id=event.instance_id,
        state=state,
        event_time=event.time,
        updated_at=now,
        hostname=event.hostname or (current.hostname if current else None),
        address=event.address,
        slots=event.slots,
        instance_type=event.instance_type or (current.instance_type if current else None),
        joined_at=_latest(current.joined_at if current else None, joined),
    )


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max(a, b) if a is not None and b is not None else a or b


def _superseded(event: InstanceEvent, current: InstanceRecord) -> bool:
    return event.kind is EventKind.LAUNCH or rank(current.state, current.event_time) > event_rank(
        event
    )


def _same_facts(a: InstanceRecord, b: InstanceRecord) -> bool:
    return replace(a, updated_at=b.updated_at, expires_at=b.expires_at) == b


def _decision(
    event: InstanceEvent,
    current: InstanceRecord | None,
    final: InstanceRecord,
    *,
    owned: bool,
) -> Decision:
    if current is not None and _superseded(event, current):
        superseded_by_terminate = current.state is InstanceState.TERMINATED
        name = "event_after_terminate_ignored" if superseded_by_terminate else "event_superseded"
    elif current is final:
        name = "event_already_applied"
    elif final.state is InstanceState.READY and not owned:
        name = "hostname_taken_by_newer_instance"
    else:
        name = {
            InstanceState.LAUNCHED: "instance_launched",
            InstanceState.READY: "host_registered",
            InstanceState.LEFT: "host_unregistered",
            InstanceState.TERMINATED: "instance_terminated",
        }[final.state]
    return Decision(name, event.instance_id, final.hostname)
