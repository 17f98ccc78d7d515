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
from cfncluster_node.stack.clusterconfig import ClusterConfig, S3Access

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


# Batch APIs are authorized by their single-message action; S3's heads by their gets.
_ACTION_OF_API = {
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
}


def iam_action(service: str, api: str) -> str:
    """The IAM action an API call needs: DeleteMessageBatch needs ``sqs:DeleteMessage``."""
    return _ACTION_OF_API.get((service, api), f"{service}:{api}")


# --- the operator's policy: what `cfncluster-node launch` needs ------------------------

TEMPLATE_BUCKET = "cfncluster-node-${AWS::AccountId}-${AWS::Region}"


def _arn(service: str, resource: str, *, region: bool = True, account: bool = True) -> Json:
    where = ":".join(["${AWS::Region}" if region else "", "${AWS::AccountId}" if account else ""])
    return _sub(f"{_ARN}:{service}:{where}:{resource}")


# What an instance is launched with: EC2 authorizes RunInstances on each.
_INSTANCE_PARTS = (
    "instance",
    "volume",
    "network-interface",
    "security-group",
    "subnet",
    "launch-template",
    "key-pair",
)


def _ec2(*kinds: str) -> list[Json]:
    """This account's and region's EC2 resources of these kinds."""
    return [_arn("ec2", f"{kind}/*") for kind in kinds]


def operator_statements(cluster: ClusterConfig) -> list[Json]:
    """The IAM statements an operator needs to create, watch, update and delete this
    cluster with ``cfncluster-node launch``: the launcher's own calls, and those
    CloudFormation makes with the operator's credentials to create the stack's resources.

    Every resource named after the stack is scoped to it. EC2's instances, volumes, groups
    and launch templates have ids, not names, and are scoped to the account and region;
    Describe calls support no resource at all.
    """
    bucket = cluster.cluster.template_bucket or TEMPLATE_BUCKET
    stack = "${AWS::StackName}"
    statements = [
        # The launcher: the stack itself.
        _allow(
            [
                "cloudformation:CreateStack",
                "cloudformation:DeleteStack",
                "cloudformation:DescribeStackEvents",
                "cloudformation:DescribeStackResource",
                "cloudformation:DescribeStackResources",
                "cloudformation:GetTemplate",
                "cloudformation:UpdateStack",
            ],
            [_arn("cloudformation", f"stack/{stack}/*")],
        ),
        # `launch list` and `status`: every stack of the region, then its tag.
        _allow(["cloudformation:DescribeStacks"], ["*"]),
        # The template, uploaded to a bucket of this account's (ExpectedBucketOwner).
        _allow(["s3:CreateBucket", "s3:ListBucket"], [_sub(f"{_ARN}:s3:::{bucket}")]),
        _allow(["s3:GetObject", "s3:PutObject"], [_sub(f"{_ARN}:s3:::{bucket}/{stack}/*")]),
        # The account (the bucket's name), and the compute subnet's CIDR (its exports).
        _allow(["ec2:DescribeSubnets", "sts:GetCallerIdentity"], ["*"]),
        # What CloudFormation creates with the operator's credentials, by resource.
        _allow(
            [
                "sqs:CreateQueue",
                "sqs:DeleteQueue",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
                "sqs:TagQueue",
            ],
            [queue_arn(QUEUE), queue_arn(DEAD_LETTER_QUEUE)],
        ),
        _allow(
            [
                "sns:CreateTopic",
                "sns:DeleteTopic",
                "sns:GetTopicAttributes",
                "sns:ListSubscriptionsByTopic",
                "sns:SetTopicAttributes",
                "sns:Subscribe",
                "sns:TagResource",
            ],
            [_arn("sns", TOPIC)],
        ),
        _allow(["sns:Unsubscribe"], ["*"]),
        _allow(
            [
                "dynamodb:CreateTable",
                "dynamodb:DeleteTable",
                "dynamodb:DescribeTable",
                "dynamodb:DescribeTimeToLive",
                "dynamodb:TagResource",
                "dynamodb:UpdateTimeToLive",
            ],
            [table_arn()],
        ),
        _allow(
            [
                "secretsmanager:CreateSecret",
                "secretsmanager:DeleteSecret",
                "secretsmanager:DescribeSecret",
                "secretsmanager:TagResource",
            ],
            [munge_key_arn()],
        ),
        _allow(["secretsmanager:GetRandomPassword"], ["*"]),
        _allow(
            [
                "ssm:AddTagsToResource",
                "ssm:DeleteParameter",
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:PutParameter",
            ],
            [_arn("ssm", f"parameter{protocol.config_parameter(stack)}")],
        ),
        _allow(
            [
                "iam:AddRoleToInstanceProfile",
                "iam:CreateInstanceProfile",
                "iam:CreateRole",
                "iam:DeleteInstanceProfile",
                "iam:DeleteRole",
                "iam:DeleteRolePolicy",
                "iam:GetInstanceProfile",
                "iam:GetRole",
                "iam:GetRolePolicy",
                "iam:PutRolePolicy",
                "iam:RemoveRoleFromInstanceProfile",
                "iam:TagRole",
            ],
            [
                _arn("iam", f"role/{stack}-*", region=False),
                _arn("iam", f"instance-profile/{stack}-*", region=False),
            ],
        ),
        # The instances get the stack's roles, and nothing else may be passed.
        _allow(
            ["iam:PassRole"],
            [_arn("iam", f"role/{stack}-*", region=False)],
            {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),
        # Auto Scaling's own role, made once per account on its first group.
        _allow(
            ["iam:CreateServiceLinkedRole"],
            [
                _arn(
                    "iam",
                    "role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
                    region=False,
                )
            ],
            {"StringEquals": {"iam:AWSServiceName": "autoscaling.amazonaws.com"}},
        ),
        # The head node and the group's instances, with all they are made of.
        _allow(
            ["ec2:CreateTags", "ec2:RunInstances"],
            [*_ec2(*_INSTANCE_PARTS), _arn("ec2", "image/*", account=False)],
        ),
        _allow(
            [
                "ec2:ModifyInstanceAttribute",
                "ec2:StartInstances",
                "ec2:StopInstances",
                "ec2:TerminateInstances",
            ],
            _ec2("instance"),
        ),
        _allow(
            [
                "ec2:AuthorizeSecurityGroupIngress",
                "ec2:CreateSecurityGroup",
                "ec2:DeleteSecurityGroup",
                "ec2:RevokeSecurityGroupIngress",
            ],
            _ec2("security-group", "security-group-rule", "vpc"),
        ),
        _allow(
            [
                "ec2:CreateLaunchTemplate",
                "ec2:CreateLaunchTemplateVersion",
                "ec2:DeleteLaunchTemplate",
            ],
            _ec2("launch-template"),
        ),
        # The shared volume, and its snapshot when the stack's deletion takes one.
        _allow(
            ["ec2:CreateSnapshot", "ec2:CreateVolume", "ec2:DeleteVolume"],
            [*_ec2("volume"), _arn("ec2", "snapshot/*", account=False)],
        ),
        _allow(
            [
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeImages",
                "ec2:DescribeInstances",
                "ec2:DescribeKeyPairs",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeVolumes",
                "ec2:DescribeVpcs",
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeNotificationConfigurations",
                "autoscaling:DescribePolicies",
                "autoscaling:DescribeScalingActivities",
            ],
            ["*"],
        ),
        _allow(
            [
                "autoscaling:CreateAutoScalingGroup",
                "autoscaling:CreateOrUpdateTags",
                "autoscaling:DeleteAutoScalingGroup",
                "autoscaling:DeleteNotificationConfiguration",
                "autoscaling:DeletePolicy",
                "autoscaling:PutNotificationConfiguration",
                "autoscaling:PutScalingPolicy",
                "autoscaling:UpdateAutoScalingGroup",
            ],
            [group_arn()],
        ),
        _allow(
            ["cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms", "cloudwatch:PutMetricAlarm"],
            [_arn("cloudwatch", f"alarm:{stack}-*")],
        ),
    ]
    key = cluster.shared_volume.kms_key_id
    if key is not None and key.startswith("arn:"):
        # The shared volume encrypted with a key of the operator's choosing.
        statements.append(
            _allow(
                [
                    "kms:CreateGrant",
                    "kms:Decrypt",
                    "kms:DescribeKey",
                    "kms:GenerateDataKeyWithoutPlaintext",
                ],
                [key],
            )
        )
    return statements


def resolved(value: Any, *, stack: str, region: str, account: str) -> Any:
    """``value`` (statements, a document) with its ``Fn::Sub`` filled in for one stack of
    one account and region: a policy as IAM reads it."""
    partition = (
        "aws-cn"
        if region.startswith("cn-")
        else "aws-us-gov"
        if region.startswith("us-gov-")
        else "aws"
    )
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        text: str = value["Fn::Sub"]
        for name, concrete in {
            "${AWS::StackName}": stack,
            "${AWS::Region}": region,
            "${AWS::AccountId}": account,
            "${AWS::Partition}": partition,
        }.items():
            text = text.replace(name, concrete)
        return text
    if isinstance(value, dict):
        return {
            key: resolved(item, stack=stack, region=region, account=account)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [resolved(item, stack=stack, region=region, account=account) for item in value]
    return value
