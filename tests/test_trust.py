"""trust: who may say what on the queue, and what EC2 must confirm of a join (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfncluster_node import protocol
from cfncluster_node.local import cloud
from cfncluster_node.node import messages, trust
from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.trust import Verdict

TOPIC = "arn:aws:sns:us-east-1:123456789012:c1-events"
ROLE = "AROARZPUZDIKOADG3LIBZ"
SENDERS = trust.Senders(TOPIC, ROLE)
SNS = "AIDAIT2UOQQY3AUEKVGXU"  # what SQS reports for SNS's deliveries
ME = "i-0123456789abcdef0"
OTHER = "i-0fedcba9876543210"
SENT_AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
GROUP = "c1-compute"


def sns(message: str, topic: str | None = TOPIC) -> str:
    envelope: dict[str, Any] = {"Type": "Notification", "Message": message}
    if topic is not None:
        envelope["TopicArn"] = topic
    return json.dumps(envelope)


def autoscaling(event: str = protocol.TERMINATE_EVENT, instance: str = ME) -> str:
    return cloud.autoscaling_notification(event, instance, when=SENT_AT)


def join(instance: str = ME, **fields: Any) -> str:
    return messages.compute_notice(protocol.READY_EVENT, instance, SENT_AT, **fields)


def refusal(body: str, sender: str) -> str | None:
    return trust.untrusted_sender(messages.parse(body, SENT_AT), sender, SENDERS)


# --- senders ----------------------------------------------------------------------------


@pytest.mark.parametrize("event", [protocol.READY_EVENT, protocol.LEAVE_EVENT])
def test_a_compute_event_is_believed_from_its_own_instances_role_session(event: str) -> None:
    body = messages.compute_notice(event, ME, SENT_AT)

    assert refusal(body, f"{ROLE}:{ME}") is None


@pytest.mark.parametrize("event", [protocol.READY_EVENT, protocol.LEAVE_EVENT])
def test_a_compute_event_about_another_instance_is_refused_naming_the_sender(event: str) -> None:
    body = messages.compute_notice(event, OTHER, SENT_AT)

    reason = refusal(body, f"{ROLE}:{ME}")

    assert reason is not None
    assert f"{ROLE}:{ME}" in reason and OTHER in reason


@pytest.mark.parametrize(
    "sender",
    [
        SNS,  # an SNS-shaped body sent straight to the queue is not SNS's delivery
        "AKIAIOSFODNN7EXAMPLE",  # an IAM user: the operator's credentials
        f"AROAOTHERROLE12345678:{ME}",  # another role's session of the same name
        f"{ROLE}:{ME}x",
        ROLE,
        "",
    ],
)
def test_a_join_from_anyone_but_the_instances_compute_session_is_refused(sender: str) -> None:
    assert refusal(join(), sender) is not None


def test_an_autoscaling_event_is_believed_from_the_stacks_topic() -> None:
    assert refusal(sns(autoscaling()), SNS) is None


@pytest.mark.parametrize(
    ("body", "sender"),
    [
        # A compute node (or a job on it) forging the topic's envelope: its session shows.
        (sns(autoscaling()), f"{ROLE}:{ME}"),
        # So does anyone else who may send to the queue: an operator's IAM user.
        (sns(autoscaling()), "AKIAIOSFODNN7EXAMPLE"),
        (sns(autoscaling(instance=OTHER)), f"{ROLE}:{ME}"),
        # Another topic's notification, or none at all.
        (sns(autoscaling(), topic="arn:aws:sns:us-east-1:123456789012:elsewhere"), SNS),
        (autoscaling(), SNS),
        (sns(autoscaling(), topic=None), SNS),
        (sns(autoscaling()), ""),
    ],
)
def test_an_autoscaling_event_from_elsewhere_is_refused(body: str, sender: str) -> None:
    reason = refusal(body, sender)

    assert reason is not None
    assert "stack's topic" in reason


@pytest.mark.parametrize(
    "event",
    [protocol.TEST_EVENT, protocol.LAUNCH_ERROR_EVENT, "autoscaling:SOMETHING_NEW"],
)
def test_what_only_autoscaling_says_must_come_through_the_topic_too(event: str) -> None:
    body = sns(autoscaling(event))

    assert refusal(body, SNS) is None
    assert refusal(body, f"{ROLE}:{ME}") is not None


def test_a_refusal_names_a_long_sender_only_in_part() -> None:
    reason = refusal(join(), "A" * 100_000)

    assert reason is not None and len(reason) < 400


@given(st.text(max_size=200))
def test_no_sender_but_the_instances_own_session_passes_for_a_join(sender: str) -> None:
    if sender != f"{ROLE}:{ME}":
        assert refusal(join(), sender) is not None


# --- membership -------------------------------------------------------------------------


def described(
    *,
    state: str = "running",
    group: str | None = GROUP,
    dns: str = "ip-10-0-1-7.ec2.internal",
    address: str = "10.0.1.7",
    instance_type: str = "c5.xlarge",
) -> dict[str, Any]:
    tags = [{"Key": trust.GROUP_TAG, "Value": group}] if group else []
    return {
        "InstanceId": ME,
        "State": {"Name": state},
        "Tags": [{"Key": "Name", "Value": "c1-compute"}, *tags],
        "PrivateDnsName": dns,
        "PrivateIpAddress": address,
        "InstanceType": instance_type,
    }


def ready(**fields: Any) -> InstanceEvent:
    return InstanceEvent(EventKind.READY, ME, SENT_AT, **fields)


def test_a_join_ec2_bears_out_is_accepted_with_ec2s_facts() -> None:
    judged = trust.membership(
        ready(hostname="ip-10-0-1-7", address="10.0.1.7", slots=4, instance_type="t3.nano"),
        described(),
        GROUP,
    )

    assert judged.verdict is Verdict.ACCEPT
    assert judged.event == ready(
        hostname="ip-10-0-1-7", address="10.0.1.7", slots=4, instance_type="c5.xlarge"
    )


def test_a_join_that_says_no_name_gets_ec2s() -> None:
    judged = trust.membership(ready(slots=2), described(), GROUP)

    assert judged.verdict is Verdict.ACCEPT
    assert judged.event is not None
    assert (judged.event.hostname, judged.event.address) == ("ip-10-0-1-7", "10.0.1.7")


@pytest.mark.parametrize(
    ("event", "instance", "needle"),
    [
        (ready(), None, "EC2 knows no instance"),
        (ready(), described(group="someone-elses-group"), "not a member of 'c1-compute'"),
        (ready(), described(group=None), "of no group"),
        # A hijack: another node's name, or another node's address.
        (ready(hostname="ip-10-0-1-8"), described(), "claims hostname 'ip-10-0-1-8'"),
        (ready(hostname="slurm-static-1"), described(), "claims hostname"),
        (ready(address="10.0.1.8"), described(), "claims address '10.0.1.8'"),
    ],
)
def test_a_join_ec2_contradicts_is_refused(
    event: InstanceEvent, instance: dict[str, Any] | None, needle: str
) -> None:
    judged = trust.membership(event, instance, GROUP)

    assert judged.verdict is Verdict.REFUSE
    assert needle in judged.reason
    assert judged.event is None


@pytest.mark.parametrize("state", ["shutting-down", "terminated", "stopping", "stopped"])
def test_a_join_of_an_instance_that_is_going_or_gone_is_stale(state: str) -> None:
    judged = trust.membership(ready(), described(state=state), GROUP)

    assert judged.verdict is Verdict.STALE
    assert state in judged.reason


def test_a_join_of_a_pending_instance_waits_for_it_to_run() -> None:
    assert trust.membership(ready(), described(state="pending"), GROUP).verdict is Verdict.RETRY


def test_a_join_ec2_gives_no_name_yet_waits() -> None:
    judged = trust.membership(ready(), described(dns="", address=""), GROUP)

    assert judged.verdict is Verdict.RETRY
