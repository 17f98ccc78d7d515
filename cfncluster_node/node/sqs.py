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
from typing import Any

from cfncluster_node import logs
from cfncluster_node.aws import Aws, AwsError

BATCH = 10  # most messages per receive and per batch call


@dataclass
class Received:
    message_id: str
    receipt: str
    body: str
    sent_at: datetime
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
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        return [_received(message) for message in response.get("Messages", [])]

    async def send_to_dead_letter(self, message: Received, reason: str) -> None:
        """A copy of ``message`` on the dead-letter queue, with the reason beside it;
        AwsError if it could not be sent."""
        assert self.dead_letter_url is not None
        await self._aws.call(
            "sqs",
            "send_message",
            QueueUrl=self.dead_letter_url,
            MessageBody=message.body,
            MessageAttributes={
                "error": {"DataType": "String", "StringValue": reason},
                "sourceMessageId": {"DataType": "String", "StringValue": message.message_id},
            },
        )

    async def delete(self, messages: Sequence[Received]) -> None:
        await self._per_ten("delete_message_batch", messages, lambda _: {})

    async def set_visibility(
        self, messages: Sequence[Received], seconds: Callable[[Received], int]
    ) -> None:
        await self._per_ten(
            "change_message_visibility_batch",
            messages,
            lambda m: {"VisibilityTimeout": seconds(m)},
        )

    async def _per_ten(
        self,
        operation: str,
        messages: Sequence[Received],
        extra: Callable[[Received], dict[str, Any]],
    ) -> None:
        async def one_call(chunk: Sequence[Received]) -> None:
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt, **extra(m)} for i, m in enumerate(chunk)
            ]
            try:
                response = await self._aws.call(
                    "sqs", operation, QueueUrl=self.url, Entries=entries
                )
            except AwsError as exc:
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

        chunks = [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]
        await asyncio.gather(*(one_call(chunk) for chunk in chunks))


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
