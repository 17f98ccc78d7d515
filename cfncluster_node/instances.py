"""The DynamoDB instance table: what the head node knows of each compute instance.

Hash key ``instanceId`` and attribute ``hostname`` are the lineage's contract (PROTOCOL.md
section 2); the other attributes are this project's. A terminated instance keeps its row
as a tombstone until ``expiresAt`` (the table's TTL attribute), so a join message that
arrives after its terminate cannot bring the host back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cfncluster_node.aws import Aws, AwsError

_GET_CHUNK = 100  # BatchGetItem's limit
_WRITERS = 32
_UNPROCESSED_ATTEMPTS = 8


# The time given to rows written by the lineage, which have none.
LEGACY_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class InstanceState(StrEnum):
    LAUNCHED = "launched"
    READY = "ready"
    LEFT = "left"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    state: InstanceState
    event_time: datetime
    updated_at: datetime
    hostname: str | None = None
    address: str | None = None
    slots: int | None = None
    instance_type: str | None = None
    expires_at: int | None = None
    #: When the instance last joined (its latest ready): who holds a reused hostname.
    joined_at: datetime | None = None

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "instanceId": {"S": self.instance_id},
            "state": {"S": self.state.value},
            "eventTime": {"S": self.event_time.isoformat()},
            "updatedAt": {"S": self.updated_at.isoformat()},
        }
        if self.joined_at is not None:
            item["joinedAt"] = {"S": self.joined_at.isoformat()}
        strings = {
            "hostname": self.hostname,
            "address": self.address,
            "instanceType": self.instance_type,
        }
        numbers = {"slots": self.slots, "expiresAt": self.expires_at}
        item.update({key: {"S": value} for key, value in strings.items() if value is not None})
        item.update({key: {"N": str(value)} for key, value in numbers.items() if value is not None})
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> InstanceRecord:
        def text(key: str) -> str | None:
            return item[key]["S"] if key in item else None

        def number(key: str) -> int | None:
            return int(item[key]["N"]) if key in item else None

        # Rows written by the lineage's watcher have only instanceId and hostname: a join
        # of long ago.
        legacy_time = LEGACY_TIME.isoformat()
        state = InstanceState(text("state") or InstanceState.READY)
        event_time = datetime.fromisoformat(text("eventTime") or legacy_time)
        joined = text("joinedAt")
        return cls(
            instance_id=item["instanceId"]["S"],
            state=state,
            event_time=event_time,
            updated_at=datetime.fromisoformat(text("updatedAt") or legacy_time),
            hostname=text("hostname"),
            address=text("address"),
            slots=number("slots"),
            instance_type=text("instanceType"),
            expires_at=number("expiresAt"),
            joined_at=(
                datetime.fromisoformat(joined)
                if joined
                else event_time
                if state is InstanceState.READY
                else None
            ),
        )


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
            self.name: {"Keys": [{"instanceId": {"S": i}} for i in ids], "ConsistentRead": True}
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
            put["ConditionExpression"] = "attribute_not_exists(instanceId)"
        elif seen.updated_at == LEGACY_TIME:
            put["ConditionExpression"] = "attribute_not_exists(updatedAt)"
        else:
            put["ConditionExpression"] = "updatedAt = :seen"
            put["ExpressionAttributeValues"] = {":seen": {"S": seen.updated_at.isoformat()}}
        return put

    async def scan(self) -> list[InstanceRecord]:
        records: list[InstanceRecord] = []
        params: dict[str, Any] = {"TableName": self.name, "ConsistentRead": True}
        while True:
            response = await self._aws.call("dynamodb", "scan", **params)
            records += [InstanceRecord.from_item(item) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                return records
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]


async def _backoff(attempt: int) -> None:
    # Full jitter, as AWS recommends for unprocessed batch items.
    await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))


def table_definition(name: str) -> dict[str, Any]:
    """CreateTable parameters; the stack template and the tests build the table from these."""
    return {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": "instanceId", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "instanceId", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
