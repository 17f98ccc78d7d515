"""Least privilege: the IAM policies of the head node and the compute nodes.

Each statement lists the API actions the daemons really call, scoped to this stack's own
resources wherever the action supports resource-level permissions. The test suite records
every AWS call the code makes (``Aws.observers``) and fails when one is not allowed here,
or when a statement here allows an action no code calls (tests/test_privilege.py).

Resource expressions are CloudFormation intrinsics: the stack template embeds them as is.
"""

from __future__ import annotations

from typing import Any

from cfncluster_node import protocol
from cfncluster_node.config import HooksSettings
from cfncluster_node.stack.clusterconfig import S3Access

Json = dict[str, Any]

# Names the template gives its resources: a policy can name them before they exist, and
# the head node's config can name the compute group without a dependency cycle.
QUEUE = "${AWS::StackName}-queue"
DEAD_LETTER_QUEUE = "${AWS::StackName}-dlq"
TOPIC = "${AWS::StackName}-events"
TABLE = "${AWS::StackName}-instances"
MUNGE_KEY = "${AWS::StackName}-munge-key"
COMPUTE_GROUP = "${AWS::StackName}-compute"

_ARN = "arn:${AWS::Partition}"
_HERE = "${AWS::Region}:${AWS::AccountId}"


def _sub(text: str) -> Json:
    return {"Fn::Sub": text}


def queue_arn(name: str) -> Json:
    return _sub(f"{_ARN}:sqs:{_HERE}:{name}")


def munge_key_arn() -> Json:
    # Secrets Manager appends six characters of its own to the name.
    return _sub(f"{_ARN}:secretsmanager:{_HERE}:secret:{MUNGE_KEY}-??????")


def table_arn() -> Json:
    return _sub(f"{_ARN}:dynamodb:{_HERE}:table/{TABLE}")


def group_arn() -> Json:
    return _sub(
        f"{_ARN}:autoscaling:{_HERE}:autoScalingGroup:*:autoScalingGroupName/{COMPUTE_GROUP}"
    )


def _allow(actions: list[str], resources: list[Any], condition: Json | None = None) -> Json:
    statement: Json = {"Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def head_node_statements(hooks: HooksSettings) -> list[Json]:
    stack_tag = {
        "StringEquals": {"aws:ResourceTag/aws:cloudformation:stack-name": _sub("${AWS::StackName}")}
    }
    return [
        # The SQS watcher: receive, hold, delete; poison messages go to the dead-letter queue.
        _allow(
            [
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:ReceiveMessage",
            ],
            [queue_arn(QUEUE)],
        ),
        _allow(["sqs:GetQueueUrl", "sqs:SendMessage"], [queue_arn(DEAD_LETTER_QUEUE)]),
        # The instance table.
        _allow(["dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:Scan"], [table_arn()]),
        # Scale-in, the reconciler and the publisher's direct mode change the compute group.
        _allow(
            [
                "autoscaling:SetDesiredCapacity",
                "autoscaling:SetInstanceProtection",
                "autoscaling:TerminateInstanceInAutoScalingGroup",
            ],
            [group_arn()],
        ),
        # Describe calls support no resource-level permissions.
        _allow(
            [
                "autoscaling:DescribeAutoScalingGroups",
                "ec2:DescribeInstances",
                "ec2:DescribeVolumes",
            ],
            ["*"],
        ),
        # Storage attaches the stack's shared volume to this instance, both tagged by the stack.
        _allow(
            ["ec2:AttachVolume"],
            [
                _sub(f"{_ARN}:ec2:{_HERE}:volume/*"),
                _sub(f"{_ARN}:ec2:{_HERE}:instance/*"),
            ],
            stack_tag,
        ),
        # PutMetricData has no resources: the condition keeps it to the cluster's namespace.
        _allow(
            ["cloudwatch:PutMetricData"],
            ["*"],
            {"StringEquals": {"cloudwatch:namespace": protocol.METRIC_NAMESPACE}},
        ),
        # The bootstrap installs the cluster's munge key.
        _allow(["secretsmanager:GetSecretValue"], [munge_key_arn()]),
        # node.toml, read at start and followed while running.
        _allow(
            ["ssm:GetParameter"],
            [_sub(f"{_ARN}:ssm:{_HERE}:parameter{protocol.config_parameter('${AWS::StackName}')}")],
        ),
        # Readiness: the head node signals its creation policy.
        _allow(
            ["cloudformation:SignalResource"],
            [_sub(f"{_ARN}:cloudformation:{_HERE}:stack/${{AWS::StackName}}/*")],
        ),
        *hook_statements(hooks),
    ]


def compute_node_statements(hooks: HooksSettings) -> list[Json]:
    return [
        # Its join and leave messages.
        _allow(["sqs:SendMessage"], [queue_arn(QUEUE)]),
        # The bootstrap installs the cluster's munge key.
        _allow(["secretsmanager:GetSecretValue"], [munge_key_arn()]),
        *hook_statements(hooks),
    ]


def hook_statements(hooks: HooksSettings) -> list[Json]:
    """Every node fetches the operator's hook scripts that live in S3, and only those."""
    scripts = [
        hook.url.removeprefix("s3://")
        for hook in (hooks.pre_install, hooks.post_install)
        if hook is not None and hook.url.startswith("s3://")
    ]
    if not scripts:
        return []
    return [_allow(["s3:GetObject"], [_sub(f"{_ARN}:s3:::{path}") for path in sorted(scripts)])]


def s3_statements(grants: list[S3Access]) -> list[Json]:
    """The optional S3 access of the instances' jobs: none unless the cluster asks."""
    statements = []
    for grant in grants:
        prefix = grant.prefix.strip("/")
        objects = f"arn:aws:s3:::{grant.bucket}/{prefix + '/' if prefix else ''}*"
        actions = ["s3:GetObject"]
        if grant.access == "read-write":
            actions += ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
        statements.append(_allow(actions, [_sub(objects.replace("arn:aws", _ARN))]))
        listing = {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}} if prefix else None
        statements.append(_allow(["s3:ListBucket"], [_sub(f"{_ARN}:s3:::{grant.bucket}")], listing))
    return statements


def document(statements: list[Json]) -> Json:
    return {"Version": "2012-10-17", "Statement": statements}


# Batch APIs are authorized by their single-message action.
_ACTION_OF_API = {
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
}


def iam_action(service: str, api: str) -> str:
    """The IAM action an API call needs: DeleteMessageBatch needs ``sqs:DeleteMessage``."""
    return _ACTION_OF_API.get((service, api), f"{service}:{api}")
