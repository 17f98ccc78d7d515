"""What arrives on the cluster's SQS queue, parsed and validated (docs/protocol.md).

Pure functions: a message body in, an ``InstanceEvent`` (or a reason to drop it) out, with
the topic its SNS envelope names. Every id, hostname, address and number is validated
here, before it can reach a scheduler command line. A body that can never be understood
raises ``MessageError``; the watcher sends it to the dead-letter queue.

This is what a body *says*. Whether its sender may say it (the SQS ``SenderId``) and
whether EC2 agrees (the instance, its group, its name) is ``trust``'s to decide.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cfncluster_node import names, protocol


class EventKind(StrEnum):
    LAUNCH = "launch"
    TERMINATE = "terminate"
    READY = "ready"
    LEAVE = "leave"


EVENT_NAMES: dict[str, EventKind] = {
    protocol.LAUNCH_EVENT: EventKind.LAUNCH,
    protocol.TERMINATE_EVENT: EventKind.TERMINATE,
    protocol.READY_EVENT: EventKind.READY,
    protocol.PARALLELCLUSTER_READY_EVENT: EventKind.READY,
    protocol.LEAVE_EVENT: EventKind.LEAVE,
}
# Failed scaling activities: worth a warning, nothing to register (the instance id may be "").
ERROR_EVENTS = {
    protocol.LAUNCH_ERROR_EVENT: "launch_error",
    protocol.TERMINATE_ERROR_EVENT: "terminate_error",
}

MAX_SLOTS = 100_000


class MessageError(ValueError):
    """A message that no retry will ever make valid."""


@dataclass(frozen=True)
class InstanceEvent:
    kind: EventKind
    instance_id: str
    time: datetime
    hostname: str | None = None
    address: str | None = None
    slots: int | None = None
    instance_type: str | None = None


#: What a compute node sends; everything else on the queue is Auto Scaling's.
COMPUTE_EVENTS = frozenset({EventKind.READY, EventKind.LEAVE})
# An event name is logged; a longer one is cut, as a hostile body may be 256 KiB long.
_NAME_MAX = 80


@dataclass(frozen=True)
class Dropped:
    """A well-formed message that asks for nothing: a TEST notification, an unknown event,
    a failed scaling activity (``instance_id`` and ``detail`` say which and why)."""

    reason: str
    event: str
    instance_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Parsed:
    """One body as it states itself: the event, and the topic its SNS envelope names
    (None for a body that is not in one)."""

    event: InstanceEvent | Dropped
    topic_arn: str | None = None

    @property
    def from_compute_node(self) -> bool:
        """Whether the body claims to come from a compute node (a join or a leave)."""
        return isinstance(self.event, InstanceEvent) and self.event.kind in COMPUTE_EVENTS


def parse(body: str, sent_at: datetime) -> Parsed:
    """Parse one SQS body: SNS-wrapped or raw, Auto Scaling or compute node.

    ``sent_at`` is SQS's SentTimestamp. It is the time of a compute node's event: the
    ``Time`` a node writes is its own word, and would let it order its join after
    everyone else's. Auto Scaling's events keep the time Auto Scaling gave them.
    """
    outer = _json_object(body, "message body")
    envelope_time: Any = None
    topic_arn: str | None = None
    if isinstance(outer.get("Message"), str):
        inner = _json_object(outer["Message"], "SNS 'Message'")
        envelope_time = outer.get("Timestamp")
        topic = outer.get("TopicArn")
        topic_arn = topic[:256] if isinstance(topic, str) else None
    else:
        inner = outer
    return Parsed(_event(inner, envelope_time, sent_at), topic_arn)


def _event(
    inner: dict[str, Any], envelope_time: object, sent_at: datetime
) -> InstanceEvent | Dropped:
    name = inner.get("Event")
    if not isinstance(name, str):
        raise MessageError("no 'Event' field")
    if name == protocol.TEST_EVENT:
        return Dropped("test_notification", name)
    if name in ERROR_EVENTS:
        given = inner.get("EC2InstanceId")
        return Dropped(
            ERROR_EVENTS[name], name, instance_id(given) if given else None, _detail(inner)
        )
    kind = EVENT_NAMES.get(name)
    if kind is None:
        return Dropped("unknown_event", name[:_NAME_MAX])
    instance = instance_id(inner.get("EC2InstanceId"))
    if kind is EventKind.LEAVE:
        # A leave says only who leaves: the instance's row knows the rest.
        return InstanceEvent(kind, instance, sent_at)
    if kind is EventKind.READY:
        return InstanceEvent(
            kind=kind,
            instance_id=instance,
            time=sent_at,
            hostname=_optional(short_hostname, inner.get("LocalHostname")),
            address=_optional(address, inner.get("LocalIpv4")),
            slots=_optional(slots, inner.get("Slots")),
            instance_type=_optional(instance_type, inner.get("EC2InstanceType")),
        )
    time = _time(inner.get("Time")) or _time(envelope_time) or sent_at
    return InstanceEvent(kind, instance, time)


def instance_id(value: object) -> str:
    if not isinstance(value, str) or not names.is_instance_id(value):
        raise MessageError(f"'EC2InstanceId' is not an instance id: {value!r:.80}")
    return value


def short_hostname(value: object) -> str:
    """The scheduler's name for a node: the first label of its FQDN, lower case."""
    short = names.short_hostname(value) if isinstance(value, str) else None
    if short is None:
        raise MessageError(f"'LocalHostname' is not a hostname: {value!r:.80}")
    return short


def address(value: object) -> str:
    try:
        parsed = ipaddress.ip_address(str(value))
    except ValueError:
        parsed = None
    # A scope id ("fe80::1%eth0") is free text: it must not reach a command line.
    if parsed is None or getattr(parsed, "scope_id", None):
        raise MessageError(f"'LocalIpv4' is not an IP address: {value!r:.80}")
    return str(parsed)


def slots(value: object) -> int:
    # Slots arrives as a string holding an integer; accept a plain integer too.
    text = (
        str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    )
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_SLOTS))
    if not digits or not 1 <= int(text) <= MAX_SLOTS:
        raise MessageError(f"'Slots' is not a slot count from 1 to {MAX_SLOTS}: {value!r:.80}")
    return int(text)


def instance_type(value: object) -> str:
    if not isinstance(value, str) or not names.is_instance_type(value):
        raise MessageError(f"'EC2InstanceType' is not an instance type: {value!r:.80}")
    return value


def _optional(validate: Any, value: object) -> Any:
    return None if value is None or value == "" else validate(value)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise MessageError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise MessageError(f"{what} is not a JSON object")
    return value


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _detail(inner: dict[str, Any]) -> str | None:
    text = inner.get("StatusMessage") or inner.get("Cause") or inner.get("Description")
    return str(text)[:500] if text else None


def compute_notice(
    event: str,
    instance: str,
    time: datetime,
    *,
    hostname: str | None = None,
    address: str | None = None,
    slots: int | None = None,
    instance_type: str | None = None,
) -> str:
    """The body a compute node sends: the SNS-shaped envelope that old nodes used."""
    inner: dict[str, Any] = {
        "Event": event,
        "EC2InstanceId": instance,
        "StatusCode": "Complete",
        "Description": f"{event} {instance}",
        "Time": time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    optional = {
        "LocalHostname": hostname,
        "LocalIpv4": address,
        "Slots": None if slots is None else str(slots),
        "EC2InstanceType": instance_type,
    }
    inner.update({key: value for key, value in optional.items() if value is not None})
    return json.dumps({"Type": "Notification", "Message": json.dumps(inner)})
