"""The SQS watcher: instance events from the cluster queue become scheduler hosts and rows.

Several receivers long-poll the queue into one inbox; one applier takes everything the
inbox holds and hands it to the registry as one batch: coalesced per instance, written as
conditional rows, then one scheduler update. A message is deleted only once its effect is
durable (the row is written and the scheduler has answered); until then a heartbeat keeps
it invisible. A
failed message is left to come back with a growing delay, and the queue's redrive policy
moves it to the dead-letter queue after its last try; a message that can never be
understood goes there at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cfncluster_node import ec2, logs, messages
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import SqsWatcherSettings
from cfncluster_node.messages import EventKind, InstanceEvent, MessageError
from cfncluster_node.registry import Registry

_SQS_BATCH = 10
_LONG_POLL_S = 20
_BURST_POLL_S = 1
_STOP = object()


@dataclass
class Received:
    message_id: str
    receipt: str
    body: str
    sent_at: datetime
    receive_count: int
    extended_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Queue:
    url: str
    dead_letter_url: str | None
    max_receives: int | None


class SqsWatcher:
    """Long-polls the cluster queue and applies what arrives.

    aws: the client factory. settings: the ``[sqswatcher]`` section. registry: where
    events take effect (the instance table and the scheduler). burst: return once the
    queue is empty instead of polling forever (tests, benchmarks, one-off catch-up runs).
    """

    name = "sqswatcher"

    def __init__(
        self,
        aws: Aws,
        settings: SqsWatcherSettings,
        registry: Registry,
        *,
        burst: bool = False,
    ) -> None:
        self._aws = aws
        self._settings = settings
        self._registry = registry
        self._burst = burst
        self._log = logs.get()
        self._held: dict[str, Received] = {}
        self._room = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        queue = await self._open_queue()
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

    async def _open_queue(self) -> Queue:
        name_or_url = self._settings.queue
        if name_or_url.startswith(("https://", "http://")):
            url = name_or_url
        else:
            url = (await self._aws.call("sqs", "get_queue_url", QueueName=name_or_url))["QueueUrl"]
        attributes = (
            await self._aws.call(
                "sqs", "get_queue_attributes", QueueUrl=url, AttributeNames=["RedrivePolicy"]
            )
        ).get("Attributes", {})
        if "RedrivePolicy" not in attributes:
            self._log.warning("dead_letter_queue_missing", queue_url=url)
            return Queue(url, None, None)
        policy = json.loads(attributes["RedrivePolicy"])
        dead_letter_name = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
        dead_letter_url = (
            await self._aws.call("sqs", "get_queue_url", QueueName=dead_letter_name)
        )["QueueUrl"]
        return Queue(url, dead_letter_url, int(policy["maxReceiveCount"]))

    async def _receive(self, queue: Queue, inbox: asyncio.Queue[Any]) -> None:
        limit = max(self._settings.max_batch, _SQS_BATCH)
        failures = 0
        while True:
            async with self._room:
                await self._room.wait_for(lambda: len(self._held) < limit)
            try:
                response = await self._aws.call(
                    "sqs",
                    "receive_message",
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=_SQS_BATCH,
                    WaitTimeSeconds=_BURST_POLL_S if self._burst else _LONG_POLL_S,
                    VisibilityTimeout=self._settings.visibility_timeout,
                    MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
                )
            except AwsError as exc:
                # The SDK has already retried; keep polling, more slowly, rather than
                # tear down the batch in flight.
                failures += 1
                self._log.warning("receive_failed", error=str(exc), failures=failures)
                await asyncio.sleep(min(60.0, 2.0**failures))
                continue
            failures = 0
            batch = [_received(m) for m in response.get("Messages", [])]
            if not batch and self._burst:
                return
            for message in batch:
                self._held[message.receipt] = message
                inbox.put_nowait(message)

    async def _heartbeat(self, queue: Queue) -> None:
        """Keep held messages invisible while their batch is still being applied."""
        period = self._settings.visibility_timeout / 3
        while True:
            await asyncio.sleep(period / 2)
            due = [m for m in self._held.values() if time.monotonic() - m.extended_at > period]
            for message in due:
                message.extended_at = time.monotonic()
            await self._set_visibility(queue, due, lambda _: self._settings.visibility_timeout)

    async def _apply_loop(
        self,
        queue: Queue,
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

    async def _settle(self, queue: Queue, done: list[Received], retry: list[Received]) -> None:
        await asyncio.gather(self._delete(queue, done), self._retry(queue, retry))
        async with self._room:
            self._room.notify_all()

    async def _apply(
        self, queue: Queue, batch: list[Received]
    ) -> tuple[list[Received], list[Received]]:
        """Apply a batch; return the messages to delete and those to retry."""
        started = time.monotonic()
        done: list[Received] = []
        retry: list[Received] = []
        events: list[tuple[Received, InstanceEvent]] = []
        for message in batch:
            log = self._log.bind(message_id=message.message_id)
            try:
                parsed = messages.parse(message.body, message.sent_at)
            except MessageError as exc:
                dead = await self._dead_letter(queue, message, str(exc))
                (done if dead else retry).append(message)
                continue
            if isinstance(parsed, messages.Dropped):
                level = log.warning if parsed.reason in messages.ERROR_EVENTS.values() else log.info
                level(
                    "message_dropped",
                    reason=parsed.reason,
                    event_name=parsed.event,
                    instance_id=parsed.instance_id,
                    detail=parsed.detail,
                )
                done.append(message)
            else:
                events.append((message, parsed))
        failed: set[str] = set()
        if events:
            try:
                named = await self._named_from_ec2([event for _, event in events])
                failed = await self._registry.apply(named)
            except AwsError as exc:
                self._log.error("batch_failed", error=str(exc), messages=len(events))
                failed = {event.instance_id for _, event in events}
        done += [message for message, event in events if event.instance_id not in failed]
        retry += [message for message, event in events if event.instance_id in failed]
        self._log.info(
            "batch_applied",
            messages=len(batch),
            done=len(done),
            retried=len(retry),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return done, retry

    async def _named_from_ec2(self, events: list[InstanceEvent]) -> list[InstanceEvent]:
        """Old compute nodes may not say their hostname: ask EC2 for it."""
        unnamed = sorted(
            {e.instance_id for e in events if e.kind is EventKind.READY and not e.hostname}
        )
        if not unnamed:
            return events
        found = await ec2.describe_instances(self._aws, unnamed)
        named = []
        for event in events:
            instance = found.get(event.instance_id)
            if event.kind is EventKind.READY and not event.hostname:
                if not instance or not instance.get("PrivateDnsName"):
                    self._log.warning(
                        "ready_without_hostname_dropped", instance_id=event.instance_id
                    )
                    continue
                event = _named(event, instance)
            named.append(event)
        return named

    async def _dead_letter(self, queue: Queue, message: Received, reason: str) -> bool:
        """Move a message that can never succeed to the dead-letter queue; False: not yet."""
        log = self._log.bind(message_id=message.message_id)
        if queue.dead_letter_url is None:
            log.error("message_discarded", reason=reason, body=message.body[:500])
            return True
        try:
            await self._aws.call(
                "sqs",
                "send_message",
                QueueUrl=queue.dead_letter_url,
                MessageBody=message.body,
                MessageAttributes={
                    "error": {"DataType": "String", "StringValue": reason},
                    "sourceMessageId": {"DataType": "String", "StringValue": message.message_id},
                },
            )
        except AwsError as exc:
            # It comes back, and the redrive policy moves it after its last try.
            log.warning("dead_letter_send_failed", reason=reason, error=str(exc))
            return False
        log.error("message_dead_lettered", reason=reason)
        return True

    async def _delete(self, queue: Queue, batch: Sequence[Received]) -> None:
        await self._per_ten(queue, "delete_message_batch", batch, lambda _: {})
        for message in batch:
            self._held.pop(message.receipt, None)

    async def _retry(self, queue: Queue, batch: Sequence[Received]) -> None:
        cap = self._settings.retry_backoff_max
        for message in batch:
            if queue.max_receives is not None and message.receive_count >= queue.max_receives:
                self._log.error(
                    "message_dead_lettered",
                    message_id=message.message_id,
                    reason=f"failed {message.receive_count} times",
                )
        await self._set_visibility(queue, batch, lambda m: min(cap, 5 * 2 ** (m.receive_count - 1)))
        for message in batch:
            self._held.pop(message.receipt, None)

    async def _release(self, queue: Queue, batch: Iterable[Received]) -> None:
        """Give unapplied messages back to the queue now, for the next watcher."""
        pending = list(batch)
        if pending:
            await self._set_visibility(queue, pending, lambda _: 0)
            self._log.info("messages_released", messages=len(pending))

    async def _set_visibility(
        self, queue: Queue, batch: Sequence[Received], seconds: Callable[[Received], int]
    ) -> None:
        await self._per_ten(
            queue,
            "change_message_visibility_batch",
            batch,
            lambda m: {"VisibilityTimeout": seconds(m)},
        )

    async def _per_ten(
        self,
        queue: Queue,
        operation: str,
        batch: Sequence[Received],
        extra: Callable[[Received], dict[str, Any]],
    ) -> None:
        async def one_call(chunk: Sequence[Received]) -> None:
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt, **extra(m)} for i, m in enumerate(chunk)
            ]
            try:
                response = await self._aws.call(
                    "sqs", operation, QueueUrl=queue.url, Entries=entries
                )
            except AwsError as exc:
                # Not fatal: an undeleted message comes back and is applied again, to no
                # effect; a visibility not changed keeps the queue's default.
                self._log.warning(
                    "sqs_batch_call_failed",
                    operation=operation,
                    messages=len(chunk),
                    error=str(exc),
                )
                return
            for failure in response.get("Failed", []):
                self._log.warning(
                    "sqs_batch_entry_failed",
                    operation=operation,
                    message_id=chunk[int(failure["Id"])].message_id,
                    code=failure.get("Code"),
                )

        chunks = [batch[i : i + _SQS_BATCH] for i in range(0, len(batch), _SQS_BATCH)]
        await asyncio.gather(*(one_call(chunk) for chunk in chunks))


async def _stop_when_set(stop: asyncio.Event, inbox: asyncio.Queue[Any]) -> None:
    await stop.wait()
    inbox.put_nowait(_STOP)


async def _stop_when_done(tasks: list[asyncio.Task[None]], inbox: asyncio.Queue[Any]) -> None:
    """In burst mode the receivers end once the queue is empty, and so does the applier."""
    await asyncio.wait(tasks)
    inbox.put_nowait(_STOP)


def _received(message: dict[str, Any]) -> Received:
    attributes = message.get("Attributes", {})
    sent_ms = int(attributes.get("SentTimestamp", time.time() * 1000))
    return Received(
        message_id=message["MessageId"],
        receipt=message["ReceiptHandle"],
        body=message.get("Body", ""),
        sent_at=datetime.fromtimestamp(sent_ms / 1000, UTC),
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
    )


def _named(event: InstanceEvent, instance: dict[str, Any]) -> InstanceEvent:
    return replace(
        event,
        hostname=messages.short_hostname(instance["PrivateDnsName"]),
        instance_type=event.instance_type or instance.get("InstanceType"),
    )
