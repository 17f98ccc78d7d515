"""Least privilege, proven: the roles' policies allow exactly what the code calls.

Every test runs under the ``least_privilege`` fixture (conftest), which fails a test whose
code makes a call its role may not make. The last test here checks the other direction
over the whole session: no statement allows an action that no code called.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import privilege
from tests.clusters import CLUSTER_CONFIG
from tests.conftest import POLICIES, REGION, SESSION_CALLS

ARN = "arn:aws:sqs:us-east-1:123456789012"


def call(role: str, action: str, *resources: str, **context: str) -> privilege.Call:
    return privilege.Call(role, action, resources, tuple(context.items()))


def tagged(call: privilege.Call, stack: str) -> privilege.Call:
    """The call, its resources tagged as stack ``stack``'s."""
    tags = (("aws:cloudformation:stack-name", stack),)
    return privilege.Call(
        call.role, call.action, call.resources, tags=tuple((r, tags) for r in call.resources)
    )


EC2 = "arn:aws:ec2:us-east-1:123456789012"
BUCKET = "arn:aws:s3:::cfncluster-node-123456789012-us-east-1"
ATTACH = call(privilege.HEAD, "ec2:AttachVolume", f"{EC2}:volume/vol-1", f"{EC2}:instance/i-1")


@pytest.mark.parametrize(
    ("attempt", "allowed"),
    [
        (call(privilege.HEAD, "sqs:ReceiveMessage", f"{ARN}:c1-queue"), True),
        (call(privilege.HEAD, "sqs:ReceiveMessage", f"{ARN}:jobs"), False),
        (call(privilege.HEAD, "sqs:SendMessage", f"{ARN}:c1-queue"), False),
        (call(privilege.HEAD, "sqs:SendMessage", f"{ARN}:c1-dlq"), True),
        (call(privilege.HEAD, "sqs:DeleteQueue", f"{ARN}:c1-queue"), False),
        (call(privilege.COMPUTE, "sqs:SendMessage", f"{ARN}:c1-queue"), True),
        (call(privilege.COMPUTE, "sqs:ReceiveMessage", f"{ARN}:c1-queue"), False),
        (call(privilege.COMPUTE, "dynamodb:PutItem"), False),
        (
            call(
                privilege.HEAD, "cloudwatch:PutMetricData", **{"cloudwatch:namespace": "cfncluster"}
            ),
            True,
        ),
        (
            call(privilege.HEAD, "cloudwatch:PutMetricData", **{"cloudwatch:namespace": "AWS/EC2"}),
            False,
        ),
        (
            call(
                privilege.HEAD,
                "autoscaling:SetDesiredCapacity",
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:"
                "0-0:autoScalingGroupName/someone-elses-group",
            ),
            False,
        ),
        (
            call(
                privilege.HEAD,
                "dynamodb:DeleteTable",
                "arn:aws:dynamodb:us-east-1:123456789012:table/c1-instances",
            ),
            False,
        ),
        # Another stack's: the head node of c1 has no business with c2's queue.
        (call(privilege.HEAD, "sqs:ReceiveMessage", f"{ARN}:c2-queue"), False),
        # A call that names no resource needs a statement on "*": Describe, yes...
        (call(privilege.HEAD, "ec2:DescribeInstances"), True),
        # ... a queue action with no queue shown, no.
        (call(privilege.HEAD, "sqs:ReceiveMessage"), False),
        # Tag conditions against the resources' real tags.
        (tagged(ATTACH, "c1"), True),
        (tagged(ATTACH, "c2"), False),
        (ATTACH, False),  # untagged, as a volume the stack did not make is
        # The operator's launch, on its own stack and bucket.
        (
            call(
                privilege.OPERATOR,
                "cloudformation:CreateStack",
                "arn:aws:cloudformation:us-east-1:123456789012:stack/c1/0-0",
            ),
            True,
        ),
        (
            call(
                privilege.OPERATOR,
                "s3:PutObject",
                "arn:aws:s3:::cfncluster-node-123456789012-us-east-1/c1/t.json",
            ),
            True,
        ),
        (call(privilege.OPERATOR, "s3:PutObject", "arn:aws:s3:::someone-elses/c1/t.json"), False),
        (call(privilege.OPERATOR, "s3:PutObject", f"{BUCKET}/c2/template.json"), False),
        # A module with no role is checked too: it may do nothing.
        (call(privilege.UNATTRIBUTED, "sqs:ReceiveMessage", f"{ARN}:c1-queue"), False),
    ],
)
def test_the_checker_allows_the_stacks_own_resources_and_nothing_else(
    attempt: privilege.Call, allowed: bool
) -> None:
    assert POLICIES.allows(attempt, "c1") is allowed


def attributed_through(*modules: str) -> tuple[str, str]:
    """role_of_stack() as seen from a call made through a function of each module in
    turn, the first outermost (it looks two frames up, past the call itself)."""
    probe: object = lambda: privilege.role_of_stack()  # noqa: E731
    for module in reversed(modules):
        namespace = {"__name__": module}
        exec("def call(inner):\n    return lambda: inner()\n", namespace)
        probe = namespace["call"](probe)
    found: tuple[str, str] = probe()  # type: ignore[operator]
    return found


def test_a_call_is_attributed_to_the_outermost_module_with_a_role() -> None:
    found = attributed_through("cfncluster_node.node.scalein", "cfncluster_node.node.group")
    assert found == (privilege.HEAD, "cfncluster_node.node.scalein")


def test_the_playground_playing_the_head_node_is_the_head_node() -> None:
    found = attributed_through("cfncluster_node.local.demo", "cfncluster_node.node.readiness")

    assert found == (privilege.HEAD, "cfncluster_node.node.readiness")


def test_a_call_from_a_module_with_no_role_is_not_left_unchecked() -> None:
    assert attributed_through("cfncluster_node.cli") == (
        privilege.UNATTRIBUTED,
        "cfncluster_node.cli",
    )


@pytest.mark.after_all
def test_no_statement_allows_an_action_no_code_calls(request: pytest.FixtureRequest) -> None:
    ran = {Path(str(item.path)).name for item in request.session.items}
    every = {path.name for path in Path(__file__).parent.glob("test_*.py")}
    if ran != every:
        pytest.skip(f"needs the whole suite: {len(every - ran)} test files did not run")
    policies = privilege.Policies.of(CLUSTER_CONFIG, REGION)
    for role in (privilege.HEAD, privilege.COMPUTE):
        called = {c.action for c in SESSION_CALLS if c.role == role}
        unused = policies.actions(role) - called
        assert not unused, f"the {role} role allows actions no code calls: {sorted(unused)}"
