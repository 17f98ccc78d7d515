"""Who may say what on the cluster queue, and what EC2 must confirm: pure decisions.

Any job on any compute node can reach the queue: the instance role that may send to it
is one metadata request away. So a body is never believed for what it says of its
sender. Two facts that no sender can write decide instead:

- **SenderId**, which SQS sets from the caller's credentials. An instance role's session
  is ``<role id>:<instance id>`` (for EC2, the session is named after the instance). A
  compute node's join or leave is accepted only from the compute role's session of that
  very instance. Auto Scaling's events reach the queue only through the stack's topic:
  they must be sent by SNS (its own sender id) in an envelope naming that topic. Whoever
  else sends one, an instance, a job on it or an operator, is not Auto Scaling.
- **EC2's description** of the instance, for a join: it must be running, a member of the
  cluster's compute group, and the hostname and address the join gives must be its own.

What fails goes to the dead-letter queue with one log line that names the sender and
why; nothing of it reaches the instance table or the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from cfncluster_node import names, protocol
from cfncluster_node.node.messages import InstanceEvent, Parsed

# The tag Auto Scaling puts on each instance it launches.
GROUP_TAG = "aws:autoscaling:groupName"


@dataclass(frozen=True)
class Senders:
    """topic_arn: the stack's topic, the only way Auto Scaling's events arrive.
    compute_role_id: the compute role's id (``AROA...``), whose sessions are compute nodes.
    topic_sender_id: who SQS says sent what SNS delivers."""

    topic_arn: str
    compute_role_id: str
    topic_sender_id: str = protocol.SNS_SENDER_ID

    def instance_session(self, instance_id: str) -> str:
        """The SenderId of a message sent with ``instance_id``'s role credentials."""
        return f"{self.compute_role_id}:{instance_id}"


def untrusted_sender(parsed: Parsed, sender_id: str, senders: Senders) -> str | None:
    """Why the message's sender may not say what it says; None: it may."""
    sender = repr(sender_id[:128]) if sender_id else "an unknown sender"
    event = parsed.event
    if parsed.from_compute_node:
        assert isinstance(event, InstanceEvent)
        if sender_id != senders.instance_session(event.instance_id):
            return (
                f"a {event.kind.value} of {event.instance_id} sent by {sender}, not by that "
                "instance's compute role session"
            )
        return None
    what = "an Auto Scaling event" if isinstance(event, InstanceEvent) else "an event"
    if parsed.topic_arn != senders.topic_arn:
        envelope = f"topic {parsed.topic_arn!r}" if parsed.topic_arn else "no SNS envelope"
        return f"{what} sent by {sender} with {envelope}, not through the stack's topic"
    if sender_id != senders.topic_sender_id:
        return f"{what} sent by {sender}, not by SNS for the stack's topic"
    return None


class Verdict(Enum):
    """What to do with a join, once EC2 has been asked."""

    ACCEPT = "accept"
    # Not yet running: it comes back, and EC2 is asked again.
    RETRY = "retry"
    # The instance is gone or going: a late join, nothing to do and nothing to blame.
    STALE = "stale"
    # EC2 contradicts it: dead-lettered.
    REFUSE = "refuse"


@dataclass(frozen=True)
class Membership:
    verdict: Verdict
    reason: str = ""
    #: For an accepted join: the event with EC2's hostname, address and type in it.
    event: InstanceEvent | None = None


def membership(event: InstanceEvent, instance: dict[str, Any] | None, group: str) -> Membership:
    """Judge a join against EC2's description of its instance (None: EC2 knows none)."""
    me = event.instance_id
    if instance is None:
        return Membership(Verdict.REFUSE, f"EC2 knows no instance {me}")
    state = instance.get("State", {}).get("Name", "unknown")
    if state == "pending":
        return Membership(Verdict.RETRY, f"{me} is still pending")
    if state != "running":
        return Membership(Verdict.STALE, f"{me} is {state}")
    tags = {tag.get("Key"): tag.get("Value") for tag in instance.get("Tags", [])}
    if tags.get(GROUP_TAG) != group:
        member_of = tags.get(GROUP_TAG)
        elsewhere = f"of {member_of!r}" if member_of else "of no group"
        return Membership(Verdict.REFUSE, f"{me} is not a member of {group!r} but {elsewhere}")
    hostname = names.short_hostname(instance.get("PrivateDnsName") or "")
    address = instance.get("PrivateIpAddress")
    if hostname is None or not address:
        return Membership(Verdict.RETRY, f"EC2 gives {me} no private name and address yet")
    if event.hostname is not None and event.hostname != hostname:
        return Membership(
            Verdict.REFUSE, f"{me} claims hostname {event.hostname!r}, EC2 says {hostname!r}"
        )
    if event.address is not None and event.address != address:
        return Membership(
            Verdict.REFUSE, f"{me} claims address {event.address!r}, EC2 says {address!r}"
        )
    confirmed = InstanceEvent(
        event.kind,
        me,
        event.time,
        hostname=hostname,
        address=address,
        slots=event.slots,
        instance_type=instance.get("InstanceType") or event.instance_type,
    )
    return Membership(Verdict.ACCEPT, event=confirmed)
