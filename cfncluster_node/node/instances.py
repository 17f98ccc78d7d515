"""The DynamoDB instance table: what the head node knows of each compute instance.

Consistent batch reads, one conditional write per row, and the scan; the rows themselves
are ``records.InstanceRecord``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.node.records import LEGACY_TIME, InstanceRecord
from cfncluster_node.protocol import TABLE_KEY

_GET_CHUNK = 100  # BatchGetItem's limit
_WRITERS = 32
_UNPROCESSED_ATTEMPTS = 8


class InstanceTable:
    def __init__(self, aws: Aws, name: str) -> None:
        self._aws = aws
        self.name = name

    async def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        """Consistent reads of the given rows; absent ids are absent from the result."""
        ids = sorted(set(instance_ids))
        chunks = [ids[i : i + _GET_CHUNK] for i in range(0, len(ids), _GET_CHUNK)]
        found: dict[str, InstanceRecord] = {}
        for items in await asyncio.gather(*(self._get_chunk(chunk) for chunk in chunks)):
            for item in items:
                record = InstanceRecord.from_item(item)
                found[record.instance_id] = record
        return found

    async def _get_chunk(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            self.name: {"Keys": [{TABLE_KEY: {"S": i}} for i in ids], "ConsistentRead": True}
        }
        items: list[dict[str, Any]] = []
        for attempt in range(_UNPROCESSED_ATTEMPTS):
            response = await self._aws.call("dynamodb", "batch_get_item", RequestItems=request)
            items += response.get("Responses", {}).get(self.name, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return items
            await _backoff(attempt)
        raise AwsError("dynamodb", "batch_get_item", "UnprocessedKeys", "throttled too long")

    async def put_many(
        self, records: Sequence[InstanceRecord], read: Mapping[str, InstanceRecord]
    ) -> set[str]:
        """Write rows, each only if the table still holds the row ``read`` (or none).

        Returns the instances whose row changed since it was read: another writer (an
        operator's one-off run beside the daemon) got there first, and their events must
        be planned again. Each row is its own conditional write, so a conflict on one
        instance delays no other.
        """
        limit = asyncio.Semaphore(_WRITERS)
        conflicts: set[str] = set()

        async def write(record: InstanceRecord) -> None:
            async with limit:
                try:
                    await self._aws.call(
                        "dynamodb", "put_item", **self._put(record, read.get(record.instance_id))
                    )
                except AwsError as exc:
                    if exc.code != "ConditionalCheckFailedException":
                        raise
                    conflicts.add(record.instance_id)

        try:
            async with asyncio.TaskGroup() as group:
                for record in records:
                    group.create_task(write(record))
        except* AwsError as failed:
            raise failed.exceptions[0] from None
        return conflicts

    def _put(self, record: InstanceRecord, seen: InstanceRecord | None) -> dict[str, Any]:
        put: dict[str, Any] = {"TableName": self.name, "Item": record.to_item()}
        if seen is None:
            put["ConditionExpression"] = f"attribute_not_exists({TABLE_KEY})"
        elif seen.updated_at == LEGACY_TIME:
            put["ConditionExpression"] = "attribute_not_exists(updatedAt)"
        else:
            put["ConditionExpression"] = "updatedAt = :seen"
            put["ExpressionAttributeValues"] = {":seen": {"S": seen.updated_at.isoformat()}}
        return put

    async def scan(self) -> list[InstanceRecord]:
        return [
            InstanceRecord.from_item(item)
            async for page in self._aws.pages(
                "dynamodb", "scan", TableName=self.name, ConsistentRead=True
            )
            for item in page.get("Items", [])
        ]


async def _backoff(attempt: int) -> None:
    # Full jitter, as AWS recommends for unprocessed batch items.
    await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
