"""A row of the instance table, to and from DynamoDB's item form: pure.

``instanceId`` (the table's key) and ``hostname`` are the lineage's contract; the other
attributes are this project's (docs/protocol.md, "The instance table"). A terminated
instance keeps its row as a tombstone until ``expiresAt`` (the table's TTL attribute), so
a join that arrives after its terminate cannot bring the host back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cfncluster_node.protocol import TABLE_KEY, TABLE_TTL_ATTRIBUTE

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
            TABLE_KEY: {"S": self.instance_id},
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
        numbers = {"slots": self.slots, TABLE_TTL_ATTRIBUTE: self.expires_at}
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
            instance_id=item[TABLE_KEY]["S"],
            state=state,
            event_time=event_time,
            updated_at=datetime.fromisoformat(text("updatedAt") or legacy_time),
            hostname=text("hostname"),
            address=text("address"),
            slots=number("slots"),
            instance_type=text("instanceType"),
            expires_at=number(TABLE_TTL_ATTRIBUTE),
            joined_at=(
                datetime.fromisoformat(joined)
                if joined
                else event_time
                if state is InstanceState.READY
                else None
            ),
        )
