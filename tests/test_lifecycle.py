"""lifecycle.coalesce and lifecycle.plan: what a batch of instance events does."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, note, settings
from hypothesis import strategies as st

from cfncluster_node.node import lifecycle
from cfncluster_node.node.lifecycle import Decision, Plan
from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.schedulers import Host

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TOMBSTONE_FOR = timedelta(days=7)
EXPIRES_AT = int((NOW + TOMBSTONE_FOR).timestamp())
DEFAULT_SLOTS = 2
A = "i-0000000000000000a"
B = "i-0000000000000000b"
HOST = "ip-10-0-0-5"


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def event(
    kind: EventKind,
    instance: str,
    minute: int,
    hostname: str | None = None,
    *,
    slots: int | None = None,
    address: str | None = None,
) -> InstanceEvent:
    return InstanceEvent(kind, instance, at(minute), hostname, address, slots)


def launch(instance: str, minute: int) -> InstanceEvent:
    return event(EventKind.LAUNCH, instance, minute)


def ready(instance: str, minute: int, hostname: str = HOST, **facts: int | str) -> InstanceEvent:
    return event(EventKind.READY, instance, minute, hostname, **facts)  # type: ignore[arg-type]


def leave(instance: str, minute: int, hostname: str | None = HOST) -> InstanceEvent:
    return event(EventKind.LEAVE, instance, minute, hostname)


def terminate(instance: str, minute: int) -> InstanceEvent:
    return event(EventKind.TERMINATE, instance, minute)


def row(
    instance: str, state: InstanceState, minute: int, hostname: str | None = HOST
) -> InstanceRecord:
    joined = at(minute) if state is InstanceState.READY else None
    return InstanceRecord(instance, state, at(minute), T0, hostname=hostname, joined_at=joined)


def plan_batch(events: Iterable[InstanceEvent], rows: Iterable[InstanceRecord] = ()) -> Plan:
    """Plan a batch against a table holding ``rows``; hostnames belong as the rows say."""
    records = {record.instance_id: record for record in rows}
    return lifecycle.plan(
        lifecycle.coalesce(events),
        records,
        lifecycle.Hostnames(records.values()),
        now=NOW,
        default_slots=DEFAULT_SLOTS,
        tombstone_for=TOMBSTONE_FOR,
    )


def winners(events: Iterable[InstanceEvent]) -> dict[str, InstanceEvent]:
    """The event that decides each instance's state: the last of its coalesced events."""
    return {i: history[-1] for i, history in lifecycle.coalesce(events).items()}


def decision_names(plan: Plan) -> list[str]:
    return [decision.event for decision in plan.decisions]


# --- coalesce ---------------------------------------------------------------------------


def test_latest_join_or_leave_wins() -> None:
    assert winners([ready(A, 1), leave(A, 2)]) == {A: leave(A, 2)}
    assert winners([leave(A, 2), ready(A, 3)]) == {A: ready(A, 3)}
    assert winners([ready(A, 3), leave(A, 2)]) == {A: ready(A, 3)}


def test_terminate_beats_a_later_ready() -> None:
    assert winners([terminate(A, 1), ready(A, 5)]) == {A: terminate(A, 1)}
    assert winners([ready(A, 5), terminate(A, 1)]) == {A: terminate(A, 1)}


def test_launch_never_overrides_ready_or_left() -> None:
    assert winners([ready(A, 1), launch(A, 9)]) == {A: ready(A, 1)}
    assert winners([leave(A, 1), launch(A, 9)]) == {A: leave(A, 1)}
    assert winners([launch(A, 0)]) == {A: launch(A, 0)}


def test_duplicate_events_collapse_to_one() -> None:
    duplicates = [ready(A, 1), ready(A, 1), ready(A, 1)]

    plan = plan_batch(duplicates)

    assert lifecycle.coalesce(duplicates) == {A: [ready(A, 1)]}
    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, A)]
    assert len(plan.records) == 1


def test_each_instance_keeps_its_own_winner() -> None:
    decided = winners([ready(A, 1), terminate(B, 2), leave(A, 3), launch(B, 0)])

    assert decided == {A: leave(A, 3), B: terminate(B, 2)}


# --- plan: joins ------------------------------------------------------------------------


def test_ready_registers_the_host_with_its_slots_and_address() -> None:
    plan = plan_batch([ready(A, 1, slots=36, address="10.0.0.5")])

    assert plan.register == [Host(HOST, 36, "10.0.0.5", A)]
    assert plan.unregister == {}
    assert [(r.instance_id, r.state, r.hostname, r.slots) for r in plan.records] == [
        (A, InstanceState.READY, HOST, 36)
    ]
    assert plan.decisions == [Decision("host_registered", A, HOST)]


def test_ready_without_slots_registers_the_default_slot_count() -> None:
    plan = plan_batch([ready(A, 1)])

    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, A)]
    assert plan.records[0].slots is None


def test_launch_writes_a_row_and_registers_nothing() -> None:
    plan = plan_batch([launch(A, 0)])

    assert [(r.state, r.event_time, r.hostname) for r in plan.records] == [
        (InstanceState.LAUNCHED, at(0), None)
    ]
    assert plan.register == []
    assert plan.unregister == {}
    assert decision_names(plan) == ["instance_launched"]


def test_launch_after_ready_is_superseded() -> None:
    plan = plan_batch([launch(A, 5)], [row(A, InstanceState.READY, 1)])

    assert plan.records == []
    assert decision_names(plan) == ["event_superseded"]
    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, A)]


def test_ready_after_terminate_does_not_resurrect_host() -> None:
    tombstone = row(A, InstanceState.TERMINATED, 1)

    plan = plan_batch([ready(A, 5)], [tombstone])

    # The tombstone only learns when the instance joined; it stays a tombstone.
    assert [(r.state, r.joined_at) for r in plan.records] == [(InstanceState.TERMINATED, at(5))]
    assert plan.register == []
    assert plan.decisions == [Decision("event_after_terminate_ignored", A, HOST)]


def test_ready_after_a_tombstone_without_hostname_is_ignored() -> None:
    plan = plan_batch([ready(A, 5)], [row(A, InstanceState.TERMINATED, 1, hostname=None)])

    assert plan.register == []
    # The name it learns is made sure to be absent: the instance is gone.
    assert plan.unregister == {HOST: A}
    assert decision_names(plan) == ["event_after_terminate_ignored"]


def test_replayed_ready_writes_nothing_but_registers_again() -> None:
    first = plan_batch([ready(A, 1, slots=4)])

    replay = plan_batch([ready(A, 1, slots=4)], first.records)

    assert replay.records == []
    # A batch that failed after writing its rows is completed by its redelivery.
    assert replay.register == first.register == [Host(HOST, 4, None, A)]


def test_replayed_terminate_writes_nothing_but_unregisters_again() -> None:
    first = plan_batch([terminate(A, 2)], [row(A, InstanceState.READY, 1)])

    replay = plan_batch([terminate(A, 2)], first.records)

    assert replay.records == []
    assert replay.unregister == first.unregister == {HOST: A}


def test_reboot_after_leave_registers_the_host_again() -> None:
    plan = plan_batch([ready(A, 5)], [row(A, InstanceState.LEFT, 3)])

    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, A)]
    assert [(r.state, r.event_time) for r in plan.records] == [(InstanceState.READY, at(5))]
    assert decision_names(plan) == ["host_registered"]


def test_rejoin_under_a_new_name_unregisters_the_old_name() -> None:
    current = row(A, InstanceState.LEFT, 3, hostname="ip-10-0-0-5")

    plan = plan_batch([ready(A, 5, "ip-10-0-0-9")], [current])

    assert plan.register == [Host("ip-10-0-0-9", DEFAULT_SLOTS, None, A)]
    assert plan.unregister == {"ip-10-0-0-5": A}


# --- plan: leaves and terminates --------------------------------------------------------


def test_leave_unregisters_the_host_and_keeps_the_row() -> None:
    plan = plan_batch([leave(A, 3)], [row(A, InstanceState.READY, 1)])

    assert plan.unregister == {HOST: A}
    assert plan.register == []
    assert [(r.state, r.event_time, r.hostname) for r in plan.records] == [
        (InstanceState.LEFT, at(3), HOST)
    ]
    assert decision_names(plan) == ["host_unregistered"]


def test_stale_leave_is_superseded_by_a_newer_ready() -> None:
    plan = plan_batch([leave(A, 2)], [row(A, InstanceState.READY, 3)])

    assert plan.records == []
    assert plan.unregister == {}
    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, A)]
    assert decision_names(plan) == ["event_superseded"]


def test_terminate_of_a_ready_instance_unregisters_its_host() -> None:
    plan = plan_batch([terminate(A, 9)], [row(A, InstanceState.READY, 1)])

    assert plan.unregister == {HOST: A}
    assert plan.register == []
    [tombstone] = plan.records
    assert (tombstone.state, tombstone.event_time, tombstone.hostname) == (
        InstanceState.TERMINATED,
        at(9),
        HOST,
    )
    assert tombstone.expires_at == EXPIRES_AT
    assert tombstone.updated_at == NOW
    assert plan.decisions == [Decision("instance_terminated", A, HOST)]


def test_terminate_of_an_unknown_instance_writes_a_tombstone_and_removes_nothing() -> None:
    plan = plan_batch([terminate(A, 9)])

    assert plan.records == [
        InstanceRecord(A, InstanceState.TERMINATED, at(9), NOW, expires_at=EXPIRES_AT)
    ]
    assert plan.unregister == {}
    assert plan.register == []
    assert plan.decisions == [Decision("instance_terminated", A, None)]


def test_terminate_does_not_unregister_a_hostname_now_owned_by_a_newer_instance() -> None:
    rows = [row(A, InstanceState.READY, 1), row(B, InstanceState.READY, 8)]

    plan = plan_batch([terminate(A, 9)], rows)

    assert plan.unregister == {}
    assert plan.records[0].state is InstanceState.TERMINATED


def test_old_terminate_and_new_ready_for_one_hostname_in_one_batch_keep_the_host() -> None:
    rows = [row(A, InstanceState.READY, 1)]

    plan = plan_batch([terminate(A, 9), ready(B, 12)], rows)

    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, B)]
    assert HOST not in plan.unregister


# --- owners -----------------------------------------------------------------------------


def test_a_reused_hostname_belongs_to_its_newest_ready_instance() -> None:
    hostnames = lifecycle.Hostnames(
        [
            row(B, InstanceState.READY, 8),
            row(A, InstanceState.READY, 1),
            row("i-0000000000000000c", InstanceState.TERMINATED, 9, hostname="ip-10-0-0-6"),
        ]
    )

    assert hostnames.owner(HOST) == B
    assert hostnames.owner("ip-10-0-0-6") is None
    assert len(hostnames) == 1


def test_a_hostname_belongs_to_nobody_while_its_last_joiner_is_not_joined() -> None:
    hostnames = lifecycle.Hostnames([row(B, InstanceState.READY, 8)])

    # A joined with the name long before B: its terminate does not touch B's host.
    hostnames.note(replace(row(A, InstanceState.TERMINATED, 9), joined_at=at(1)))
    assert hostnames.owner(HOST) == B

    hostnames.note(replace(row(B, InstanceState.LEFT, 10), joined_at=at(8)))
    assert hostnames.owner(HOST) is None


def test_an_instance_that_rejoins_under_another_name_releases_the_old_one() -> None:
    hostnames = lifecycle.Hostnames([row(A, InstanceState.READY, 1)])

    hostnames.note(row(A, InstanceState.READY, 2, hostname="ip-10-0-0-6"))

    assert hostnames.owner(HOST) is None
    assert hostnames.owner("ip-10-0-0-6") == A


# --- convergence ------------------------------------------------------------------------


@dataclass
class Cluster:
    """The table, the owners map and the scheduler's hosts, all in memory."""

    table: dict[str, InstanceRecord] = field(default_factory=dict)
    hostnames: lifecycle.Hostnames = field(default_factory=lifecycle.Hostnames)
    hosts: dict[str, str] = field(default_factory=dict)  # hostname -> instance id

    def apply(self, batch: Sequence[InstanceEvent]) -> None:
        histories = lifecycle.coalesce(batch)
        rows = {i: self.table[i] for i in histories if i in self.table}
        plan = lifecycle.plan(
            histories,
            rows,
            self.hostnames,
            now=NOW,
            default_slots=DEFAULT_SLOTS,
            tombstone_for=TOMBSTONE_FOR,
        )
        for record in plan.records:
            self.table[record.instance_id] = record
        self.hostnames = plan.hostnames
        for hostname in plan.unregister:
            self.hosts.pop(hostname, None)
        for host in plan.register:
            self.hosts[host.hostname] = host.instance_id or ""

    def rows(self) -> dict[str, tuple[object, ...]]:
        return {i: (r.state, r.event_time, r.hostname) for i, r in self.table.items()}


def run(batches: Iterable[Sequence[InstanceEvent]]) -> Cluster:
    cluster = Cluster()
    for batch in batches:
        cluster.apply(batch)
    return cluster


def test_stale_ready_of_an_old_instance_does_not_take_a_reused_hostname() -> None:
    # A held the name until its terminate at minute 2; B got the same private IP at 3.
    # A's join was delayed (a retry) and arrives after B's, its terminate last of all.
    cluster = run([[ready(B, 3)], [ready(A, 1)], [terminate(A, 2)]])

    assert cluster.hosts == {HOST: B}


def test_stale_ready_is_not_registered_over_a_newer_owner() -> None:
    plan = plan_batch([ready(A, 1)], [row(B, InstanceState.READY, 3)])

    assert plan.register == []


def test_two_readies_for_one_hostname_in_one_batch_register_the_newer_instance() -> None:
    # B joined first with the name and was terminated; A got the name later.
    plan = plan_batch([ready(B, 1), ready(A, 3)])

    assert plan.register == [Host(HOST, DEFAULT_SLOTS, None, A)]


def test_leave_of_an_unknown_instance_keeps_the_hostname_it_carries() -> None:
    plan = plan_batch([leave(A, 5)])

    assert [(r.state, r.hostname) for r in plan.records] == [(InstanceState.LEFT, HOST)]


def test_tombstone_learns_the_hostname_of_a_ready_that_arrives_after_it() -> None:
    # The same table as the clean history (ready, then terminate) gives.
    cluster = run([[terminate(A, 2)], [ready(A, 1)]])

    assert cluster.table[A].hostname == HOST
    assert cluster.table[A].state is InstanceState.TERMINATED
    assert cluster.hosts == {}


HOSTNAMES = ("ip-10-0-0-1", "ip-10-0-0-2", "ip-10-0-0-3")


@st.composite
def histories(draw: st.DrawFn) -> list[InstanceEvent]:
    """What really happened, in time order: launch -> ready -> (leave -> ready)* -> terminate.

    A private IP, hence a hostname, is held from the first join until the terminate, and
    only then is it free for another instance: names are reused, never shared.
    """
    events: list[InstanceEvent] = []
    state: dict[str, InstanceState] = {}
    name: dict[str, str] = {}
    free = list(HOSTNAMES)
    for minute in range(draw(st.integers(1, 16))):
        choices: list[tuple[str, str]] = []
        if len(state) < 4:
            choices.append(("launch", f"i-{len(state) + 1:017x}"))
        for instance, now in state.items():
            if (now is InstanceState.LAUNCHED and free) or now is InstanceState.LEFT:
                choices.append(("ready", instance))
            if now is InstanceState.READY:
                choices.append(("leave", instance))
            if now is not InstanceState.TERMINATED:
                choices.append(("terminate", instance))
        if not choices:
            break
        action, instance = draw(st.sampled_from(choices))
        if action == "launch":
            state[instance] = InstanceState.LAUNCHED
            events.append(launch(instance, minute))
        elif action == "ready":
            if instance not in name:
                name[instance] = draw(st.sampled_from(free))
                free.remove(name[instance])
            state[instance] = InstanceState.READY
            slots = draw(st.sampled_from([None, 4]))
            events.append(ready(instance, minute, name[instance], slots=slots))  # type: ignore[arg-type]
        elif action == "leave":
            state[instance] = InstanceState.LEFT
            events.append(leave(instance, minute, name[instance]))
        else:
            state[instance] = InstanceState.TERMINATED
            if instance in name:
                free.append(name[instance])
            events.append(terminate(instance, minute))
    return events


@st.composite
def deliveries(draw: st.DrawFn, history: list[InstanceEvent]) -> list[list[InstanceEvent]]:
    """The same events at least once each, in any order, cut into batches."""
    extra = draw(st.lists(st.sampled_from(history), max_size=len(history))) if history else []
    shuffled = draw(st.permutations(history + extra))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(shuffled) - 1)), max_size=6)))
    bounds = [0, *cuts, len(shuffled)]
    return [shuffled[lo:hi] for lo, hi in itertools.pairwise(bounds) if lo < hi]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[InstanceEvent], list[list[InstanceEvent]]]:
    history = draw(histories())
    return history, draw(deliveries(history))


def describe(events: Iterable[InstanceEvent]) -> str:
    """``ready 1@4 ip-10-0-0-1``: kind, the instance's last hex digit, minute, hostname."""
    return ", ".join(
        f"{e.kind.value} {e.instance_id[-1]}@{(e.time - T0) // timedelta(minutes=1)}"
        + (f" {e.hostname}" if e.hostname else "")
        for e in events
    )


def explain(history: list[InstanceEvent], batches: list[list[InstanceEvent]]) -> None:
    note(f"history: {describe(history)}")
    for number, batch in enumerate(batches, 1):
        note(f"batch {number}: {describe(batch)}")


@settings(max_examples=1000, deadline=None)
@given(scenarios())
def test_any_duplication_and_reordering_converges_to_the_clean_history(
    scenario: tuple[list[InstanceEvent], list[list[InstanceEvent]]],
) -> None:
    history, batches = scenario
    explain(history, batches)
    expected = run([event] for event in history)

    actual = run(batches)

    assert actual.hosts == expected.hosts
    assert actual.rows() == expected.rows()
