"""messages.parse: every body shape the queue carries (docs/protocol.md section 1)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cfncluster_node import protocol
from cfncluster_node.local import cloud
from cfncluster_node.node import messages
from cfncluster_node.node.messages import Dropped, EventKind, InstanceEvent, MessageError

SENT_AT = datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC)
WHEN = datetime(2026, 11, 26, 8, 50, 27, 538000, tzinfo=UTC)
ENVELOPE_STAMP = "2026-11-26T08:50:30.000Z"
ENVELOPE_TIME = datetime(2026, 11, 26, 8, 50, 30, tzinfo=UTC)
INSTANCE = "i-0123456789abcdef0"
SAFE_HOSTNAME = re.compile(r"[a-z0-9-]+")


def sns(message: str, *, timestamp: str | None = ENVELOPE_STAMP) -> str:
    """An SQS body as SNS delivers it without raw delivery (moto: pretty, sorted keys)."""
    envelope: dict[str, Any] = {
        "Message": message,
        "MessageId": "22b53e55-bba1-4ac7-aba7-d431b4ff0cf8",
        "Signature": "ZmFrZQ==",
        "SignatureVersion": "2",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0.pem",
        "Subject": "Auto Scaling: launch for group compute",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:cluster-events",
        "Type": "Notification",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }
    if timestamp is not None:
        envelope["Timestamp"] = timestamp
    return json.dumps(envelope, indent=2, sort_keys=True)


def inner(event: str = "cfncluster:COMPUTE_READY", **fields: object) -> dict[str, Any]:
    """A compute node's inner object; keyword arguments add or override fields."""
    body: dict[str, Any] = {
        "Event": event,
        "EC2InstanceId": INSTANCE,
        "StatusCode": "Complete",
        "Description": f"{event} {INSTANCE}",
    }
    body.update(fields)
    return body


def ready(event: str = "cfncluster:COMPUTE_READY", **fields: object) -> str:
    return sns(json.dumps(inner(event, **fields)))


def parse(body: str) -> InstanceEvent | Dropped:
    return messages.parse(body, SENT_AT).event


def parse_event(body: str) -> InstanceEvent:
    parsed = parse(body)
    assert isinstance(parsed, InstanceEvent), parsed
    return parsed


# --- Auto Scaling notifications ---------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ("autoscaling:EC2_INSTANCE_LAUNCH", EventKind.LAUNCH),
        ("autoscaling:EC2_INSTANCE_TERMINATE", EventKind.TERMINATE),
    ],
)
def test_sns_wrapped_autoscaling_notification_parses_to_its_kind(
    event: str, kind: EventKind
) -> None:
    body = sns(cloud.autoscaling_notification(event, INSTANCE, when=WHEN))

    parsed = parse_event(body)

    assert parsed.kind is kind
    assert parsed.instance_id == INSTANCE
    assert parsed.time == WHEN
    assert parsed.hostname is None
    assert parsed.address is None
    assert parsed.slots is None


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("autoscaling:EC2_INSTANCE_LAUNCH_ERROR", "launch_error"),
        ("autoscaling:EC2_INSTANCE_TERMINATE_ERROR", "terminate_error"),
    ],
)
def test_failed_scaling_activity_is_dropped_with_its_cause(event: str, reason: str) -> None:
    body = sns(cloud.autoscaling_notification(event, INSTANCE, when=WHEN))

    parsed = parse(body)

    assert isinstance(parsed, Dropped)
    assert (parsed.reason, parsed.event, parsed.instance_id) == (reason, event, INSTANCE)
    # StatusMessage is empty in these notifications, so the detail is the Cause.
    assert parsed.detail is not None
    assert parsed.detail.startswith("At 2026-11-26T08:50:27.538Z")


def test_launch_error_without_an_instance_is_still_understood() -> None:
    notification = json.loads(
        cloud.autoscaling_notification("autoscaling:EC2_INSTANCE_LAUNCH_ERROR", INSTANCE, when=WHEN)
    )
    notification["EC2InstanceId"] = ""

    parsed = parse(sns(json.dumps(notification)))

    assert parsed == Dropped(
        "launch_error", "autoscaling:EC2_INSTANCE_LAUNCH_ERROR", None, parsed.detail
    )


def test_test_notification_is_dropped_although_it_has_no_instance_id() -> None:
    notification = json.loads(
        cloud.autoscaling_notification("autoscaling:TEST_NOTIFICATION", INSTANCE, when=WHEN)
    )
    del notification["EC2InstanceId"]

    parsed = parse(sns(json.dumps(notification)))

    assert parsed == Dropped("test_notification", "autoscaling:TEST_NOTIFICATION")


def test_raw_delivery_body_parses_like_the_sns_wrapped_one() -> None:
    raw = cloud.autoscaling_notification("autoscaling:EC2_INSTANCE_TERMINATE", INSTANCE, when=WHEN)

    assert parse(raw) == parse(sns(raw))
    assert parse_event(raw).kind is EventKind.TERMINATE


def test_the_topic_an_envelope_names_is_kept_and_a_raw_body_has_none() -> None:
    raw = cloud.autoscaling_notification("autoscaling:EC2_INSTANCE_TERMINATE", INSTANCE, when=WHEN)

    assert messages.parse(sns(raw), SENT_AT).topic_arn == (
        "arn:aws:sns:us-east-1:123456789012:cluster-events"
    )
    assert messages.parse(raw, SENT_AT).topic_arn is None


def test_raw_delivery_test_notification_is_dropped() -> None:
    raw = json.dumps({"Event": "autoscaling:TEST_NOTIFICATION", "Service": "AWS Auto Scaling"})

    assert parse(raw) == Dropped("test_notification", "autoscaling:TEST_NOTIFICATION")


# --- compute-node messages --------------------------------------------------------------


@pytest.mark.parametrize("event", ["cfncluster:COMPUTE_READY", "parallelcluster:COMPUTE_READY"])
def test_compute_ready_with_every_optional_field(event: str) -> None:
    body = ready(
        event=event,
        Slots="36",
        LocalHostname="IP-10-0-1-23.EC2.Internal.",
        EC2InstanceType="c5.9xlarge",
        LocalIpv4="10.0.1.23",
        Time="2026-11-26T08:50:27.538Z",
    )

    assert parse_event(body) == InstanceEvent(
        kind=EventKind.READY,
        instance_id=INSTANCE,
        time=SENT_AT,
        hostname="ip-10-0-1-23",
        address="10.0.1.23",
        slots=36,
        instance_type="c5.9xlarge",
    )


@pytest.mark.parametrize("event", ["cfncluster:COMPUTE_READY", "parallelcluster:COMPUTE_READY"])
def test_compute_ready_from_an_old_node_without_optional_fields(event: str) -> None:
    parsed = parse_event(ready(event=event))

    assert parsed.kind is EventKind.READY
    assert parsed.instance_id == INSTANCE
    assert (parsed.hostname, parsed.address, parsed.slots, parsed.instance_type) == (
        None,
        None,
        None,
        None,
    )


def test_empty_optional_fields_count_as_absent() -> None:
    parsed = parse_event(ready(Slots="", LocalHostname="", EC2InstanceType="", LocalIpv4=""))

    assert (parsed.hostname, parsed.address, parsed.slots, parsed.instance_type) == (
        None,
        None,
        None,
        None,
    )


def test_slots_may_also_arrive_as_a_plain_integer() -> None:
    assert parse_event(ready(Slots=4)).slots == 4
    assert parse_event(ready(Slots=str(messages.MAX_SLOTS))).slots == messages.MAX_SLOTS


def test_short_hostname_is_already_short() -> None:
    assert parse_event(ready(LocalHostname="node-7")).hostname == "node-7"


def test_ipv6_address_is_normalised() -> None:
    assert parse_event(ready(LocalIpv4="FD00:0:0::0A")).address == "fd00::a"


def test_compute_leave_says_only_who_leaves() -> None:
    body = ready(
        event="cfncluster:COMPUTE_LEAVE",
        LocalHostname="ip-10-0-1-23.ec2.internal",
        LocalIpv4="10.0.1.23",
        Slots="4",
    )

    assert parse_event(body) == InstanceEvent(EventKind.LEAVE, INSTANCE, SENT_AT)


@pytest.mark.parametrize(
    "event", ["cfncluster:COMPUTE_REBOOT", "autoscaling:EC2_INSTANCE_LAUNCHING", "", "READY"]
)
def test_unknown_event_is_dropped_without_looking_at_the_rest(event: str) -> None:
    body = sns(json.dumps({"Event": event, "EC2InstanceId": "not an id"}))

    assert parse(body) == Dropped("unknown_event", event)


def test_an_unknown_event_name_is_kept_only_in_part() -> None:
    body = json.dumps({"Event": "x" * 200_000})

    assert parse(body) == Dropped("unknown_event", "x" * 80)


# --- event time -------------------------------------------------------------------------


def terminate(**fields: object) -> dict[str, Any]:
    notification = json.loads(
        cloud.autoscaling_notification("autoscaling:EC2_INSTANCE_TERMINATE", INSTANCE, when=WHEN)
    )
    notification.update(fields)
    return {key: value for key, value in notification.items() if value is not None}


def test_an_autoscaling_event_keeps_the_time_autoscaling_gave_it() -> None:
    assert parse_event(sns(json.dumps(terminate()))).time == WHEN


def test_time_falls_back_to_the_envelope_timestamp() -> None:
    assert parse_event(sns(json.dumps(terminate(Time=None)))).time == ENVELOPE_TIME


def test_unparseable_inner_time_falls_back_to_the_envelope_timestamp() -> None:
    assert parse_event(sns(json.dumps(terminate(Time="yesterday")))).time == ENVELOPE_TIME


def test_time_falls_back_to_sent_at_without_any_timestamp() -> None:
    body = sns(json.dumps(terminate(Time=None)), timestamp=None)

    assert parse_event(body).time == SENT_AT


def test_raw_body_without_time_uses_sent_at() -> None:
    assert parse_event(json.dumps(terminate(Time=None))).time == SENT_AT


def test_naive_time_is_taken_as_utc() -> None:
    assert parse_event(sns(json.dumps(terminate(Time="2026-11-26T08:50:27.538")))).time == WHEN


def test_time_with_an_offset_keeps_the_instant() -> None:
    parsed = parse_event(sns(json.dumps(terminate(Time="2026-11-26T10:50:27.538+02:00"))))

    assert parsed.time == WHEN
    assert parsed.time.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("event", ["cfncluster:COMPUTE_READY", "cfncluster:COMPUTE_LEAVE"])
@pytest.mark.parametrize("written", ["9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", None])
def test_a_compute_event_happens_when_sqs_says_it_was_sent_whatever_it_writes(
    event: str, written: str | None
) -> None:
    # A node's own Time would let it order its join after every other node's.
    fields = {} if written is None else {"Time": written}

    assert parse_event(ready(event=event, **fields)).time == SENT_AT


# --- invalid bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "message body is not JSON"),
        ("not json", "message body is not JSON"),
        ("{'Event': 'x'}", "message body is not JSON"),
        ("[]", "message body is not a JSON object"),
        ('[{"Event": "cfncluster:COMPUTE_READY"}]', "message body is not a JSON object"),
        ('"a string"', "message body is not a JSON object"),
        ("null", "message body is not a JSON object"),
        ('{"Type": "Notification", "Message": "{not json"}', "SNS 'Message' is not JSON"),
        ('{"Type": "Notification", "Message": "[1, 2]"}', "SNS 'Message' is not a JSON object"),
        ("{}", "no 'Event' field"),
        ('{"Event": 7, "EC2InstanceId": "i-0123456789abcdef0"}', "no 'Event' field"),
        ('{"Type": "Notification", "Message": "{}"}', "no 'Event' field"),
    ],
)
def test_unreadable_body_raises_message_error(body: str, reason: str) -> None:
    with pytest.raises(MessageError) as raised:
        messages.parse(body, SENT_AT)

    assert str(raised.value) == reason


def test_deeply_nested_json_raises_message_error() -> None:
    # An SQS body may be 256 KiB: enough nesting to exhaust the JSON decoder's recursion.
    body = "[" * 100_000

    with pytest.raises(MessageError, match="not JSON"):
        messages.parse(body, SENT_AT)


@pytest.mark.parametrize(
    "value",
    [
        "i-123; rm -rf /",
        "../x",
        "",
        "i-",
        "i-1234567",  # too short
        "i-0123456789abcdef01",  # too long
        "i-0123456789ABCDEF0",  # upper case
        "I-0123456789abcdef0",
        " i-0123456789abcdef0",
        "i-0123456789abcdef0\n",
        "i-01234567\nrm",
        None,
        12345678,
        ["i-0123456789abcdef0"],
    ],
)
def test_bad_instance_id_raises_message_error(value: object) -> None:
    body = sns(json.dumps(inner(EC2InstanceId=value)))

    with pytest.raises(MessageError, match="'EC2InstanceId' is not an instance id"):
        messages.parse(body, SENT_AT)


def test_missing_instance_id_raises_message_error() -> None:
    fields = inner()
    del fields["EC2InstanceId"]

    with pytest.raises(MessageError, match="'EC2InstanceId' is not an instance id: None"):
        messages.parse(sns(json.dumps(fields)), SENT_AT)


@pytest.mark.parametrize(
    "value",
    [
        "node1;reboot",
        "node1 && reboot",
        "$(reboot)",
        "`reboot`",
        "node|x",
        "node>x",
        "node 1",
        " node1",
        "node[1-3]",
        "node1,node2",
        "node_1",
        "-node1",
        "node1-",
        "node1..ec2.internal",
        ".",
        "a" * 64,
        "a" * 63 + ".ec2.internal." + "b" * 64,
        ("a" * 60 + ".") * 5,  # over 253 characters
        "node1\n",
        "node1\n.ec2.internal",
        "nöde1",
        7,
        ["node1"],
    ],
)
def test_bad_hostname_raises_message_error(value: object) -> None:
    with pytest.raises(MessageError, match="'LocalHostname' is not a hostname"):
        messages.parse(ready(LocalHostname=value), SENT_AT)


def test_longest_valid_label_is_accepted() -> None:
    assert parse_event(ready(LocalHostname="a" * 63)).hostname == "a" * 63


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "-1",
        "abc",
        "1e3",
        "1.5",
        "+4",
        "0x10",
        "100001",
        "9" * 30,
        "1" * 5000,
        "²",
        0,
        -1,
        True,
    ],
    ids=lambda value: f"{value!r:.24}",
)
def test_bad_slot_count_raises_message_error(value: object) -> None:
    with pytest.raises(MessageError, match="'Slots' is not a slot count from 1 to 100000"):
        messages.parse(ready(Slots=value), SENT_AT)


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0",
        "10.0.0.256",
        "10.0.0.1; reboot",
        "localhost",
        "10.0.0.1/24",
        " 10.0.0.1",
        "fe80::1%$(reboot)",
        "fe80::1%eth0 x",
        167772161,
        ["10.0.0.1"],
    ],
)
def test_bad_address_raises_message_error(value: object) -> None:
    with pytest.raises(MessageError, match="'LocalIpv4' is not an IP address"):
        messages.parse(ready(LocalIpv4=value), SENT_AT)


@pytest.mark.parametrize("value", ["c5", "c5.xlarge; reboot", "C5.XLARGE", "c5.xlarge\n", 5])
def test_bad_instance_type_raises_message_error(value: object) -> None:
    with pytest.raises(MessageError, match="'EC2InstanceType' is not an instance type"):
        messages.parse(ready(EC2InstanceType=value), SENT_AT)


def test_error_message_shows_a_shortened_copy_of_the_bad_value() -> None:
    with pytest.raises(MessageError) as raised:
        messages.parse(ready(LocalHostname="x;" * 1000), SENT_AT)

    assert len(str(raised.value)) < 120
    assert "'x;x;" in str(raised.value)


# --- properties -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Bodies nested deeper than the JSON decoder's recursion limit (SQS allows 256 KiB).
deep_bodies = st.builds(
    lambda opener, depth: opener * depth,
    st.sampled_from(["[", '{"a":', '{"Message": ']),
    st.integers(min_value=500, max_value=50_000),
)
# Unanchored patterns: besides near-valid values, hypothesis generates the trailing
# newline that ``$`` lets through.
near_values: dict[str, st.SearchStrategy[object]] = {
    "EC2InstanceId": st.from_regex(r"^i-[0-9a-f]{6,19}$"),
    "LocalHostname": st.from_regex(r"^[a-zA-Z0-9-]{1,64}(\.[a-zA-Z0-9-]{1,10}){0,3}\.?$"),
    "LocalIpv4": st.ip_addresses().map(str)
    | st.builds(lambda ip, scope: f"{ip}%{scope}", st.ip_addresses(v=6), st.text(min_size=1)),
    "Slots": st.integers(-2, messages.MAX_SLOTS + 2).map(str)
    | st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)
    | st.integers(4290, 4400).map(lambda width: "1" * width),
    "EC2InstanceType": st.from_regex(r"^[a-z0-9]{1,6}\.[a-z0-9]{1,8}$"),
    "Time": st.datetimes().map(datetime.isoformat) | st.text(max_size=30),
}
generic_values = (
    st.none()
    | st.integers()
    | st.text(max_size=80)
    | st.from_regex(r"[a-zA-Z0-9.\-\n;$ \[\],_%]{0,40}", fullmatch=True)
    | json_values
)
known_events = st.sampled_from([*messages.EVENT_NAMES, protocol.TEST_EVENT, "other:EVENT"])
inner_objects = st.fixed_dictionaries(
    {"Event": known_events | st.text(max_size=20)},
    optional={
        "Description": generic_values,
        "Cause": generic_values,
        **{key: near | generic_values for key, near in near_values.items()},
    },
)


def _parse_or_message_error(body: str) -> InstanceEvent | Dropped | None:
    try:
        return parse(body)
    except MessageError:
        return None
    except Exception as exc:  # the property under test: nothing else may escape
        pytest.fail(f"parse raised {type(exc).__name__}: {exc!s:.200} for {body!r:.300}")


@given(st.text() | deep_bodies)
@example("[" * 100_000)
def test_parse_of_any_text_raises_nothing_but_message_error(body: str) -> None:
    result = _parse_or_message_error(body)

    assert result is None or isinstance(result, InstanceEvent | Dropped)


@given(json_values)
def test_parse_of_any_json_value_raises_nothing_but_message_error(value: object) -> None:
    body = json.dumps(value)

    for shape in (body, sns(body)):
        result = _parse_or_message_error(shape)
        assert result is None or isinstance(result, InstanceEvent | Dropped)


@given(inner_objects, st.booleans())
@example({"Event": "cfncluster:COMPUTE_READY", "EC2InstanceId": INSTANCE, "Slots": "²"}, True)
@example(
    {"Event": "cfncluster:COMPUTE_READY", "EC2InstanceId": INSTANCE, "Slots": "1" * 5000}, True
)
@example(
    {"Event": "cfncluster:COMPUTE_READY", "EC2InstanceId": INSTANCE, "LocalHostname": "a\n"}, True
)
def test_any_accepted_message_is_safe_for_a_command_line(
    fields: dict[str, Any], wrapped: bool
) -> None:
    body = json.dumps(fields)
    result = _parse_or_message_error(sns(body) if wrapped else body)

    if isinstance(result, InstanceEvent):
        assert re.fullmatch(r"i-[0-9a-f]{8,17}", result.instance_id), result.instance_id
        if result.hostname is not None:
            assert SAFE_HOSTNAME.fullmatch(result.hostname), result.hostname
        if result.address is not None:
            assert re.fullmatch(r"[0-9a-f.:]+", result.address), result.address
        if result.slots is not None:
            assert 1 <= result.slots <= messages.MAX_SLOTS
        if result.instance_type is not None:
            assert re.fullmatch(r"[a-z0-9.-]+", result.instance_type), result.instance_type
        assert result.time.tzinfo is not None
    else:
        assert result is None or isinstance(result, Dropped)


@given(st.text(max_size=300) | near_values["LocalHostname"])
@example("node1\n")
@example("IP-10-0-0-5.EC2.INTERNAL.")
def test_any_accepted_hostname_is_a_plain_lower_case_name(hostname: object) -> None:
    try:
        short = messages.short_hostname(hostname)
    except MessageError:
        return
    assert SAFE_HOSTNAME.fullmatch(short), short
    assert 0 < len(short) <= 63


# --- round trip -------------------------------------------------------------------------

hostname_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)


@given(
    event=st.sampled_from(
        ["cfncluster:COMPUTE_READY", "parallelcluster:COMPUTE_READY", "cfncluster:COMPUTE_LEAVE"]
    ),
    instance=st.from_regex(r"i-[0-9a-f]{8,17}", fullmatch=True),
    time=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))]),
    ),
    hostname=st.none() | hostname_labels,
    address=st.none() | ipv4,
    slots=st.none() | st.integers(1, messages.MAX_SLOTS),
    instance_type=st.none() | st.sampled_from(["c5.xlarge", "t3.micro", "hpc7g.16xlarge"]),
)
def test_compute_notice_parses_back_to_the_same_fields(
    event: str,
    instance: str,
    time: datetime,
    hostname: str | None,
    address: str | None,
    slots: int | None,
    instance_type: str | None,
) -> None:
    fqdn = None if hostname is None else f"{hostname}.ec2.internal"
    body = messages.compute_notice(
        event,
        instance,
        time,
        hostname=fqdn,
        address=address,
        slots=slots,
        instance_type=instance_type,
    )

    parsed = parse_event(body)

    assert parsed.kind is messages.EVENT_NAMES[event]
    assert parsed.instance_id == instance
    # The time is SQS's, whatever the node wrote; a leave says only who leaves.
    assert parsed.time == SENT_AT
    joined = parsed.kind is EventKind.READY
    assert parsed.hostname == (hostname if joined else None)
    assert parsed.address == (address if joined else None)
    assert parsed.slots == (slots if joined else None)
    assert parsed.instance_type == (instance_type if joined else None)
