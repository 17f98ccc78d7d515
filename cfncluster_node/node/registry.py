"""The registry of compute instances: table rows and scheduler hosts, kept in step.

The one place instance events take effect, whoever produced them: the SQS watcher from
the queue, the reconciler from what EC2 and the scheduler say. Batches are applied one at
a time (a lock), so every plan is made against what the previous one left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cfncluster_node import logs
from cfncluster_node.node import lifecycle
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.messages import InstanceEvent
from cfncluster_node.schedulers import Scheduler, SchedulerError

_GIVE_UP_AFTER = 3  # consecutive single-host failures: the scheduler itself is down

T = TypeVar("T")


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

    async def apply(self, events: Iterable[InstanceEvent]) -> set[str]:
        """Apply events; return the instances whose effect did not happen (to retry)."""
        async with self._lock:
            return await self._apply(list(events))

    async def remove_unowned(self, hostnames: Iterable[str]) -> list[str]:
        """Remove the scheduler hosts that no joined instance holds; return them.

        Checked again under the lock: a host seen unowned a moment ago may have been
        registered since.
        """
        async with self._lock:
            owners = await self.hostnames()
            unowned = sorted(name for name in set(hostnames) if owners.owner(name) is None)
            if unowned:
                await self.scheduler.remove_hosts(unowned)
            return unowned

    async def _apply(self, events: list[InstanceEvent]) -> set[str]:
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
        failed = conflicts | await _isolating(
            self.scheduler.remove_hosts,
            [(name, i) for name, i in plan.unregister.items() if i not in conflicts],
            self._log,
        )
        failed |= await _isolating(
            self.scheduler.add_hosts,
            [(h, h.instance_id or "") for h in plan.register if h.instance_id not in conflicts],
            self._log,
        )
        for decision in plan.decisions:
            if decision.instance_id not in failed:
                self._log.info(
                    decision.event, instance_id=decision.instance_id, hostname=decision.hostname
                )
        return failed


async def _isolating(
    operation: Callable[[list[T]], Awaitable[None]],
    items: list[tuple[T, str]],
    log: Any,
) -> set[str]:
    """Apply ``operation`` to all items at once; if that fails, to each alone.

    Returns the instance ids whose item failed, so one bad host delays only its own
    events. After a few failures in a row the scheduler is taken to be down and the
    rest are not tried.
    """
    if not items:
        return set()
    try:
        await operation([item for item, _ in items])
        return set()
    except SchedulerError as exc:
        log.warning("scheduler_batch_failed", error=str(exc), items=len(items))
    failed: set[str] = set()
    streak = 0
    for item, instance_id in items:
        if streak >= _GIVE_UP_AFTER:
            failed.add(instance_id)
            continue
        try:
            await operation([item])
            streak = 0
        except SchedulerError as exc:
            streak += 1
            failed.add(instance_id)
            log.error("scheduler_update_failed", instance_id=instance_id, error=str(exc))
    return failed
