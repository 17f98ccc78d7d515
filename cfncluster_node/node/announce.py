"""The compute side: a node announces that it joined (at boot) or leaves (at shutdown).

What the node is (instance id, hostname, type, address) comes from the instance metadata
service (IMDSv2); each value can be given instead. The message is the SNS-shaped body the
lineage's compute nodes sent, so the head node treats old and new nodes alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from cfncluster_node import imds, logs
from cfncluster_node.aws import Aws
from cfncluster_node.node import messages


class AnnounceError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    instance_id: str
    hostname: str
    instance_type: str | None
    address: str | None
    slots: int


async def identify(
    *,
    instance_id: str | None = None,
    hostname: str | None = None,
    instance_type: str | None = None,
    address: str | None = None,
    slots: int | None = None,
) -> Identity:
    """This node's identity: given values win, the rest is read from IMDSv2."""
    given = {
        "instance-id": instance_id,
        "local-hostname": hostname,
        "instance-type": instance_type,
        "local-ipv4": address,
    }
    missing = [key for key, value in given.items() if value is None]
    found = await imds.read(missing) if missing else {}
    values = {key: given[key] or found.get(key) for key in given}
    try:
        return Identity(
            instance_id=messages.instance_id(values["instance-id"]),
            hostname=_maybe(_checked_hostname, values["local-hostname"]) or "",
            instance_type=_maybe(messages.instance_type, values["instance-type"]),
            address=_maybe(messages.address, values["local-ipv4"]),
            slots=messages.slots(slots if slots is not None else os.cpu_count() or 1),
        )
    except messages.MessageError as exc:
        raise AnnounceError(str(exc)) from None


def _checked_hostname(value: str) -> str:
    messages.short_hostname(value)
    return value


def _maybe(validate: object, value: str | None) -> str | None:
    return None if value is None else validate(value)  # type: ignore[operator]


async def send(aws: Aws, queue_url: str, event: str, identity: Identity) -> str:
    body = messages.compute_notice(
        event,
        identity.instance_id,
        datetime.now(UTC),
        hostname=identity.hostname or None,
        address=identity.address,
        slots=identity.slots,
        instance_type=identity.instance_type,
    )
    response = await aws.call("sqs", "send_message", QueueUrl=queue_url, MessageBody=body)
    message_id: str = response["MessageId"]
    logs.get().info(
        "announced",
        event_name=event,
        instance_id=identity.instance_id,
        hostname=identity.hostname,
        message_id=message_id,
    )
    return message_id
