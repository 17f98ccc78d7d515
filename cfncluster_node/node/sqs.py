"""The cluster queue as the watcher uses it: receive, delete, change visibility and
dead-letter, in SQS's batches of ten.

No batch call raises: a message that was not deleted comes back and is applied again, to
no effect, and a visibility that was not changed keeps the queue's default. Failures are
logged (``sqs_batch_call_failed``, ``sqs_batch_entry_failed``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cfncluster_node import logs
from cfncluster_node.aws import Aws, AwsError

BATCH = 10  # most messages per receive and per batch call

Item = TypeVar("Item")


@dataclass
class Received:
    message_id: str
    receipt: str
    body: str
    #: SQS's own facts, which no sender can write: when it was sent, and by whom (the
    #: IAM user or role session of the credentials it was sent with).
    sent_at: datetime
    sender_id: str
    receive_count: int
    extended_at: float = field(default_factory=time.monotonic)


class ClusterQueue:
    """url: the queue. dead_letter_url, max_receives: its redrive policy, if it has one."""

    def __init__(
        self, aws: Aws, url: str, dead_letter_url: str | None, max_receives: int | None
    ) -> None:
        self._aws = aws
        self.url = url
        self.dead_letter_url = dead_letter_url
        self.max_receives = max_receives
        self._log = logs.get()

    @classmethod
    async def open(cls, aws: Aws, name_or_url: str) -> ClusterQueue:
        """The queue by name or URL, with the dead-letter queue its redrive policy names."""
        if name_or_url.startswith(("https://", "http://")):
            url = name_or_url
        else:
            url = (await aws.call("sqs", "get_queue_url", QueueName=name_or_url))["QueueUrl"]
        attributes = (
            await aws.call(
                "sqs", "get_queue_attributes", QueueUrl=url, AttributeNames=["RedrivePolicy"]
            )
        ).get("Attributes", {})
        if "RedrivePolicy" not in attributes:
            logs.get().warning("dead_letter_queue_missing", queue_url=url)
            return cls(aws, url, None, None)
        policy = json.loads(attributes["RedrivePolicy"])
        dead_letter_name = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
        dead_letter_url = (await aws.call("sqs", "get_queue_url", QueueName=dead_letter_name))[
            "QueueUrl"
        ]
        return cls(aws, url, dead_letter_url, int(policy["maxReceiveCount"]))

    async def receive(self, *, wait_s: int, visibility_timeout: int) -> list[Received]:
        """One long poll; AwsError once the SDK's own retries are spent."""
        response = await self._aws.call(
            "sqs",
            "receive_message",
            QueueUrl=self.url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_timeout,
            MessageSystemAttributeNames=["SenderId", "SentTimestamp", "ApproximateReceiveCount"],
        )
        return [_received(message) for message in response.get("Messages", [])]

    async def send_to_dead_letter(self, doomed: Sequence[tuple[Received, str]]) -> list[Received]:
        """Copies of messages on the dead-letter queue, each with its reason and sender
        beside it; returns the messages that were sent."""
        assert self.dead_letter_url is not None

        def entry(item: tuple[Received, str]) -> dict[str, Any]:
            message, reason = item
            facts = {
                "error": reason,
                "sourceMessageId": message.message_id,
                "senderId": message.sender_id,
            }
            return {
                "MessageBody": message.body,
                "MessageAttributes": {
                    name: {"DataType": "String", "StringValue": value}
                    for name, value in facts.items()
                    if value
                },
            }

        sent = await self._per_ten("send_message_batch", doomed, entry, self.dead_letter_url)
        return [message for message, _ in sent]

    async def delete(self, messages: Sequence[Received]) -> None:
        await self._per_ten("delete_message_batch", messages, _receipt)

    async def set_visibility(
        self, messages: Sequence[Received], seconds: Callable[[Received], int]
    ) -> None:
        await self._per_ten(
            "change_message_visibility_batch",
            messages,
            lambda m: {**_receipt(m), "VisibilityTimeout": seconds(m)},
        )

    async def _per_ten(
        self,
        operation: str,
        items: Sequence[Item],
        entry: Callable[[Item], dict[str, Any]],
        url: str | None = None,
    ) -> list[Item]:
        """``operation`` on every item, ten to a call, all calls at once; the items it
        succeeded for."""

        async def one_call(chunk: Sequence[Item]) -> list[Item]:
            entries = [{"Id": str(i), **entry(item)} for i, item in enumerate(chunk)]
            try:
                response = await self._aws.call(
                    "sqs", operation, QueueUrl=url or self.url, Entries=entries
                )
            except AwsError as exc:
                self._log.warning(
                    "sqs_batch_call_failed",
                    operation=operation,
                    messages=len(chunk),
                    error=str(exc),
                )
                return []
            failed = {int(failure["Id"]): failure for failure in response.get("Failed", [])}
            for i, failure in sorted(failed.items()):
                self._log.warning(
                    "sqs_batch_entry_failed",
                    operation=operation,
                    message_id=_message_id(chunk[i]),
                    code=failure.get("Code"),
                )
            return [item for i, item in enumerate(chunk) if i not in failed]

        chunks = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
        results = await asyncio.gather(*(one_call(chunk) for chunk in chunks))
        return [item for result in results for item in result]


def _receipt(message: Received) -> dict[str, Any]:
    return {"ReceiptHandle": message.receipt}


def _message_id(item: object) -> str:
    message = item[0] if isinstance(item, tuple) else item
    return message.message_id if isinstance(message, Received) else "?"


def _received(message: dict[str, Any]) -> Received:
    attributes = message.get("Attributes", {})
    sent_ms = int(attributes.get("SentTimestamp", time.time() * 1000))
    return Received(
        message_id=message["MessageId"],
        receipt=message["ReceiptHandle"],
        body=message.get("Body", ""),
        sent_at=datetime.fromtimestamp(sent_ms / 1000, UTC),
        sender_id=attributes.get("SenderId", ""),
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
    )
