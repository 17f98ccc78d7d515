"""The registry of compute instances: table rows and scheduler hosts, kept in step.

The one place instance events take effect, whoever produced them: the SQS watcher from
the queue, the reconciler from what EC2 and the scheduler say. Batches are applied one at
a time (a lock), so every plan is made against what the previous one left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cfncluster_node import logs
from cfncluster_node.node import lifecycle
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.messages import InstanceEvent
from cfncluster_node.schedulers import HostsRefused, Scheduler, SchedulerError

_GIVE_UP_AFTER = 3  # consecutive single-host failures: the scheduler itself is down

T = TypeVar("T")


@dataclass(frozen=True)
class Applied:
    """What a batch did not do. retry: instances whose effect did not happen yet (it
    may next time). refused: those whose host the scheduler will never take, and why."""

    retry: frozenset[str] = frozenset()
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> set[str]:
        return set(self.retry) | set(self.refused)


class Registry:
    """table: the instance table. scheduler: where hosts are registered. default_slots:
    slots of a host whose join did not say. tombstone_for: how long a terminated
    instance's row blocks late joins."""

    def __init__(
        self,
        table: InstanceTable,
        scheduler: Scheduler,
        *,
        default_slots: int,
        tombstone_for: timedelta,
    ) -> None:
        self.table = table
        self.scheduler = scheduler
        self._default_slots = default_slots
        self._tombstone_for = tombstone_for
        self._hostnames: lifecycle.Hostnames | None = None
        self._lock = asyncio.Lock()
        self._log = logs.get()

    async def hostnames(self) -> lifecycle.Hostnames:
        """Who holds each hostname, read from the table once, then kept up to date."""
        if self._hostnames is None:
            self._hostnames = lifecycle.Hostnames(await self.table.scan())
        return self._hostnames

    async def apply(self, events: Iterable[InstanceEvent]) -> Applied:
        """Apply events; say which instances' effect did not happen."""
        async with self._lock:
            return await self._apply(list(events))

    async def remove_unowned(self, hostnames: Iterable[str]) -> list[str]:
        """Remove the scheduler hosts that no joined instance holds; return them.

        Checked again under the lock against a fresh read of the table, not the cache:
        a host seen unowned a moment ago may have been registered since, and by another
        writer (a one-off ``sqswatcher --burst``) whose rows this process never saw.
        """
        candidates = set(hostnames)
        if not candidates:
            return []
        async with self._lock:
            self._hostnames = lifecycle.Hostnames(await self.table.scan())
            unowned = sorted(n for n in candidates if self._hostnames.owner(n) is None)
            if unowned:
                await self.scheduler.remove_hosts(unowned)
            return unowned

    async def _apply(self, events: list[InstanceEvent]) -> Applied:
        histories = lifecycle.coalesce(events)
        records = await self.table.get_many(histories)
        plan = lifecycle.plan(
            histories,
            records,
            await self.hostnames(),
            now=datetime.now(UTC),
            default_slots=self._default_slots,
            tombstone_for=self._tombstone_for,
        )
        # Rows first: a crash after this leaves a row that the redelivered event
        # completes, and a later terminate finds the hostname it must remove.
        conflicts = await self.table.put_many(plan.records, read=records)
        self._hostnames = plan.hostnames
        if conflicts:
            # Another writer changed these rows since they were read: their plan is void,
            # and their events come back to be planned against what the table holds.
            self._log.warning("rows_changed_meanwhile", instance_ids=sorted(conflicts))
            for record in (await self.table.get_many(conflicts)).values():
                self._hostnames.note(record)
        removed = await _isolating(
            self.scheduler.remove_hosts,
            [(name, name, i) for name, i in plan.unregister.items() if i not in conflicts],
            self._log,
        )
        added = await _isolating(
            self.scheduler.add_hosts,
            [
                (h, h.hostname, h.instance_id or "")
                for h in plan.register
                if h.instance_id not in conflicts
            ],
            self._log,
        )
        applied = Applied(
            frozenset(conflicts | removed.retry | added.retry),
            {**removed.refused, **added.refused},
        )
        for decision in plan.decisions:
            if decision.instance_id not in applied.failed:
                self._log.info(
                    decision.event, instance_id=decision.instance_id, hostname=decision.hostname
                )
        return applied


async def _isolating(
    operation: Callable[[list[T]], Awaitable[None]],
    items: list[tuple[T, str, str]],
    log: Any,
) -> Applied:
    """Apply ``operation`` to all items (each with its hostname and instance id) at once.

    Hosts the scheduler refuses by name are set aside and the rest tried again at once:
    a refusal says which hosts, so it costs no search. Only a failure that names none
    has each item tried alone, so one bad host delays only its own events; after a few
    failures in a row the scheduler is taken to be down and the rest are not tried.
    """
    refused: dict[str, str] = {}
    for _ in range(2):
        if not items:
            return Applied(refused=refused)
        try:
            await operation([item for item, _, _ in items])
            return Applied(refused=refused)
        except HostsRefused as exc:
            log.warning("scheduler_hosts_refused", hostnames=sorted(exc.refused))
            refused |= {
                i: f"{name}: {exc.refused[name]}" for _, name, i in items if name in exc.refused
            }
            items = [entry for entry in items if entry[1] not in exc.refused]
        except SchedulerError as exc:
            log.warning("scheduler_batch_failed", error=str(exc), items=len(items))
            break
    retry: set[str] = set()
    streak = 0
    for item, name, instance_id in items:
        if streak >= _GIVE_UP_AFTER:
            retry.add(instance_id)
            continue
        try:
            await operation([item])
            streak = 0
        except HostsRefused as exc:
            refused[instance_id] = f"{name}: {exc.refused.get(name, exc)}"
        except SchedulerError as exc:
            streak += 1
            retry.add(instance_id)
            log.error("scheduler_update_failed", instance_id=instance_id, error=str(exc))
    return Applied(frozenset(retry), refused)
