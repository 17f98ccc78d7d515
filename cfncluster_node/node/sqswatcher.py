"""The SQS watcher: instance events from the cluster queue become scheduler hosts and rows.

Several receivers long-poll the queue into one inbox; one applier takes everything the
inbox holds and hands it to the registry as one batch: coalesced per instance, written as
conditional rows, then one scheduler update. A message is deleted only once its effect is
durable (the row is written and the scheduler has answered); until then a heartbeat keeps
it invisible. A failed message is left to come back with a growing delay, and the queue's
redrive policy moves it to the dead-letter queue after its last try; a message that can
never be understood goes there at once. The queue itself is ``sqs.ClusterQueue``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cfncluster_node import logs, protocol
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import SqsWatcherSettings
from cfncluster_node.node import ec2, messages, sqs, trust
from cfncluster_node.node.messages import EventKind, InstanceEvent, MessageError
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.service import Progress
from cfncluster_node.node.sqs import ClusterQueue, Received

_LONG_POLL_S = 20
_BURST_POLL_S = 1
_STOP = object()


@dataclass
class _Fate:
    """Where each message of a batch ends: deleted, retried, or dead-lettered (why)."""

    done: list[Received] = field(default_factory=list)
    retry: list[Received] = field(default_factory=list)
    doomed: list[tuple[Received, str]] = field(default_factory=list)


class SqsWatcher:
    """Long-polls the cluster queue and applies what arrives.

    aws: the client factory. settings: the ``[sqswatcher]`` section (the queue, and who
    may send on it). registry: where events take effect (the instance table and the
    scheduler). compute_group: the Auto Scaling group every joining instance must be a
    member of. burst: return once the queue is empty instead of polling forever (tests,
    benchmarks, one-off catch-up runs).
    """

    name = "sqswatcher"

    def __init__(
        self,
        aws: Aws,
        settings: SqsWatcherSettings,
        registry: Registry,
        *,
        compute_group: str,
        burst: bool = False,
    ) -> None:
        self._aws = aws
        self._settings = settings
        self._senders = trust.Senders(
            settings.topic_arn, settings.compute_role_id, settings.topic_sender_id
        )
        self._group = compute_group
        self._registry = registry
        self._burst = burst
        self._log = logs.get()
        self._held: dict[str, Received] = {}
        self._room = asyncio.Condition()
        self.progress = Progress()

    async def run(self, stop: asyncio.Event) -> None:
        queue = await ClusterQueue.open(self._aws, self._settings.queue)
        hostnames = await self._registry.hostnames()
        self._held = {}
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._log.info(
            "sqswatcher_started",
            queue_url=queue.url,
            dead_letter_url=queue.dead_letter_url,
            receivers=self._settings.receivers,
            hosts_known=len(hostnames),
        )
        async with asyncio.TaskGroup() as group:
            receivers = [
                group.create_task(self._receive(queue, inbox))
                for _ in range(self._settings.receivers)
            ]
            heartbeat = group.create_task(self._heartbeat(queue))
            watchers = [
                group.create_task(_stop_when_set(stop, inbox)),
                group.create_task(_stop_when_done(receivers, inbox)),
            ]
            await self._apply_loop(queue, inbox, stop, group)
            for task in [*receivers, heartbeat, *watchers]:
                task.cancel()
        await self._release(queue, self._held.values())
        self._log.info("sqswatcher_stopped")

    async def _receive(self, queue: ClusterQueue, inbox: asyncio.Queue[Any]) -> None:
        limit = max(self._settings.max_batch, sqs.BATCH)
        failures = 0
        while True:
            async with self._room:
                await self._room.wait_for(lambda: len(self._held) < limit)
            try:
                batch = await queue.receive(
                    wait_s=_BURST_POLL_S if self._burst else _LONG_POLL_S,
                    visibility_timeout=self._settings.visibility_timeout,
                )
            except AwsError as exc:
                # The SDK has already retried; keep polling, more slowly, rather than
                # tear down the batch in flight.
                failures += 1
                self.progress.failed()
                self._log.warning("receive_failed", error=str(exc), failures=failures)
                await asyncio.sleep(min(60.0, 2.0**failures))
                continue
            failures = 0
            self.progress.succeeded()
            if not batch and self._burst:
                return
            for message in batch:
                self._held[message.receipt] = message
                inbox.put_nowait(message)

    async def _heartbeat(self, queue: ClusterQueue) -> None:
        """Keep held messages invisible while their batch is still being applied."""
        period = self._settings.visibility_timeout / 3
        while True:
            await asyncio.sleep(period / 2)
            due = [m for m in self._held.values() if time.monotonic() - m.extended_at > period]
            for message in due:
                message.extended_at = time.monotonic()
            await queue.set_visibility(due, lambda _: self._settings.visibility_timeout)

    async def _apply_loop(
        self,
        queue: ClusterQueue,
        inbox: asyncio.Queue[Any],
        stop: asyncio.Event,
        group: asyncio.TaskGroup,
    ) -> None:
        while not stop.is_set():
            first = await inbox.get()
            if first is _STOP or stop.is_set():
                return
            batch = [first]
            while not inbox.empty() and len(batch) < self._settings.max_batch:
                item = inbox.get_nowait()
                if item is _STOP:
                    inbox.put_nowait(item)
                    break
                batch.append(item)
            done, retry = await self._apply(queue, batch)
            # The effects are durable: the next batch need not wait for the deletes.
            group.create_task(self._settle(queue, done, retry))

    async def _settle(
        self, queue: ClusterQueue, done: list[Received], retry: list[Received]
    ) -> None:
        await asyncio.gather(self._delete(queue, done), self._retry(queue, retry))
        async with self._room:
            self._room.notify_all()

    async def _apply(
        self, queue: ClusterQueue, batch: list[Received]
    ) -> tuple[list[Received], list[Received]]:
        """Apply a batch; return the messages to delete and those to retry."""
        started = time.monotonic()
        fate = _Fate()
        claims = self._screen(batch, fate)
        events: list[tuple[Received, InstanceEvent]] | None = None
        try:
            events = await self._confirm(claims, fate)
            outcome = await self._registry.apply(event for _, event in events)
        except Exception as exc:
            if isinstance(exc, AwsError):
                self._log.error("batch_failed", error=str(exc), messages=len(claims))
            else:
                # A bug must not take the watcher down with the batch held: the messages
                # come back after their backoff; the redrive policy ends one that never works.
                self._log.exception("batch_crashed", messages=len(claims))
            fate.retry += [message for message, _ in (claims if events is None else events)]
        else:
            for message, event in events:
                if event.instance_id in outcome.refused:
                    fate.doomed.append((message, outcome.refused[event.instance_id]))
                elif event.instance_id in outcome.retry:
                    fate.retry.append(message)
                else:
                    fate.done.append(message)
        await self._dead_letter(queue, fate)
        self._log.info(
            "batch_applied",
            messages=len(batch),
            done=len(fate.done),
            retried=len(fate.retry),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return fate.done, fate.retry

    def _screen(self, batch: list[Received], fate: _Fate) -> list[tuple[Received, InstanceEvent]]:
        """What each message says, kept only where its sender may say it."""
        claims = []
        for message in batch:
            try:
                parsed = messages.parse(message.body, message.sent_at)
            except MessageError as exc:
                fate.doomed.append((message, str(exc)))
                continue
            refusal = trust.untrusted_sender(parsed, message.sender_id, self._senders)
            if refusal is not None:
                fate.doomed.append((message, refusal))
            elif isinstance(parsed.event, messages.Dropped):
                dropped = parsed.event
                level = (
                    self._log.warning
                    if dropped.reason in messages.ERROR_EVENTS.values()
                    else self._log.info
                )
                level(
                    "message_dropped",
                    message_id=message.message_id,
                    reason=dropped.reason,
                    event_name=dropped.event,
                    instance_id=dropped.instance_id,
                    detail=dropped.detail,
                )
                fate.done.append(message)
            else:
                claims.append((message, parsed.event))
        return claims

    async def _confirm(
        self, claims: list[tuple[Received, InstanceEvent]], fate: _Fate
    ) -> list[tuple[Received, InstanceEvent]]:
        """The claims EC2 bears out, joins with EC2's own name and address in them: one
        describe for all the batch's joins. AwsError if EC2 could not be asked."""
        joining = {e.instance_id for _, e in claims if e.kind is EventKind.READY}
        described = await ec2.describe_instances(self._aws, joining) if joining else {}
        confirmed = []
        for message, event in claims:
            if event.kind is not EventKind.READY:
                confirmed.append((message, event))
                continue
            judged = trust.membership(event, described.get(event.instance_id), self._group)
            log = self._log.bind(message_id=message.message_id, instance_id=event.instance_id)
            match judged.verdict:
                case trust.Verdict.ACCEPT:
                    assert judged.event is not None
                    confirmed.append((message, judged.event))
                case trust.Verdict.RETRY:
                    log.info("join_not_confirmed_yet", reason=judged.reason)
                    fate.retry.append(message)
                case trust.Verdict.STALE:
                    log.info("join_of_gone_instance_dropped", reason=judged.reason)
                    fate.done.append(message)
                case trust.Verdict.REFUSE:
                    fate.doomed.append((message, judged.reason))
        return confirmed

    async def _dead_letter(self, queue: ClusterQueue, fate: _Fate) -> None:
        """Move the messages that can never succeed to the dead-letter queue, one log line
        each; one that could not be moved comes back, and the redrive policy moves it
        after its last try."""
        if not fate.doomed:
            return
        if queue.dead_letter_url is None:
            for message, reason in fate.doomed:
                self._log.error(
                    "message_discarded",
                    message_id=message.message_id,
                    sender_id=message.sender_id,
                    reason=reason,
                )
            fate.done += [message for message, _ in fate.doomed]
            fate.doomed.clear()
            return
        moved = {id(message) for message in await queue.send_to_dead_letter(fate.doomed)}
        for message, reason in fate.doomed:
            if id(message) in moved:
                self._log.error(
                    "message_dead_lettered",
                    message_id=message.message_id,
                    sender_id=message.sender_id,
                    reason=reason,
                )
                fate.done.append(message)
            else:
                fate.retry.append(message)
        fate.doomed.clear()

    async def _delete(self, queue: ClusterQueue, batch: Sequence[Received]) -> None:
        await queue.delete(batch)
        for message in batch:
            self._held.pop(message.receipt, None)

    async def _retry(self, queue: ClusterQueue, batch: Sequence[Received]) -> None:
        cap = self._settings.retry_backoff_max
        for message in batch:
            if queue.max_receives is not None and message.receive_count >= queue.max_receives:
                self._log.error(
                    "message_dead_lettered",
                    message_id=message.message_id,
                    reason=f"failed {message.receive_count} times",
                )
        await queue.set_visibility(batch, lambda m: protocol.retry_delay(m.receive_count, cap))
        for message in batch:
            self._held.pop(message.receipt, None)

    async def _release(self, queue: ClusterQueue, batch: Iterable[Received]) -> None:
        """Give unapplied messages back to the queue now, for the next watcher."""
        pending = list(batch)
        if pending:
            await queue.set_visibility(pending, lambda _: 0)
            self._log.info("messages_released", messages=len(pending))


async def _stop_when_set(stop: asyncio.Event, inbox: asyncio.Queue[Any]) -> None:
    await stop.wait()
    inbox.put_nowait(_STOP)


async def _stop_when_done(tasks: list[asyncio.Task[None]], inbox: asyncio.Queue[Any]) -> None:
    """In burst mode the receivers end once the queue is empty, and so does the applier."""
    await asyncio.wait(tasks)
    inbox.put_nowait(_STOP)
