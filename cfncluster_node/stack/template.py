"""The cluster's CloudFormation template, rendered from its ``ClusterConfig``.

One stack holds everything a cluster is: the queue (with its dead-letter queue) fed by
the Auto Scaling topic, the instance table, the compute group and its launch template,
the pending-jobs alarms and scaling policies (elastic mode), the shared EBS volume, the
head node with its creation policy, the IAM roles (``policy``), the security group.

The head node learns its configuration from its user data: ``node_config`` renders the
``node.toml`` it writes, with ``${...}`` placeholders that ``Fn::Sub`` fills in.
"""

from __future__ import annotations

import json
from typing import Any

from cfncluster_node import protocol
from cfncluster_node.config import ConfigError, HookSettings, HooksSettings
from cfncluster_node.stack import policy
from cfncluster_node.stack.clusterconfig import ClusterConfig

Json = dict[str, Any]

HEAD_NODE = "HeadNode"  # the logical id the head node signals
SHARED_DEVICE = "/dev/sdf"
HEAD_ENV_PATH = "/etc/default/cfncluster-node"
USER_DATA_END = "CFNCLUSTER_FILE"
_PARAMETER_MAX = 4096  # a standard SSM parameter's value
COMPUTE_CONFIG_PATH = "/etc/cfncluster/compute.toml"
# Auto Scaling's notifications the SQS watcher acts on.
NOTIFICATIONS = [
    protocol.LAUNCH_EVENT,
    protocol.LAUNCH_ERROR_EVENT,
    protocol.TERMINATE_EVENT,
    protocol.TERMINATE_ERROR_EVENT,
]
_RETENTION_S = 14 * 24 * 3600  # SQS's maximum: a stuck head node loses nothing for two weeks
_VISIBILITY_S = 120  # the SQS watcher's default visibility_timeout


def _ref(name: str) -> Json:
    return {"Ref": name}


def _att(name: str, attribute: str) -> Json:
    return {"Fn::GetAtt": [name, attribute]}


def _sub(text: str) -> Json:
    return {"Fn::Sub": text}


def _tags(name: str) -> list[Json]:
    return [{"Key": "Name", "Value": _sub(name)}]


# IMDSv2 only (a token first, so a forwarded request cannot read it), and a hop limit of
# one: a container or anything routed through the node gets no answer. Who on the node
# may ask at all is the bootstrap's business (node/metadata.py).
METADATA_OPTIONS: Json = {
    "HttpEndpoint": "enabled",
    "HttpTokens": "required",
    "HttpPutResponseHopLimit": 1,
}


def render(cluster: ClusterConfig) -> Json:
    resources: Json = {
        **_messaging(),
        **_munge_key(),
        **_head_node_config(cluster),
        **_table(),
        **_security(cluster),
        **_roles(cluster),
        **_head_node(cluster),
        **_shared_volume(cluster),
        **_compute(cluster),
    }
    if cluster.scaling.mode == "elastic":
        resources.update(_scaling(cluster))
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "cfncluster-node: an elastic HPC cluster",
        "Parameters": {
            name: {"Type": kind, "Description": description}
            for name, (kind, description) in _NETWORK_PARAMETERS.items()
        },
        "Resources": resources,
        "Outputs": _outputs(cluster),
    }


def to_json(template: Json) -> str:
    return json.dumps(template, indent=1, sort_keys=True)


# Where the cluster lives is passed as parameters, so CloudFormation checks they exist.
_NETWORK_PARAMETERS = {
    "VpcId": ("AWS::EC2::VPC::Id", "the cluster's VPC"),
    "SubnetId": ("AWS::EC2::Subnet::Id", "the subnet of every instance"),
    "AvailabilityZone": ("AWS::EC2::AvailabilityZone::Name", "the subnet's zone"),
    "ComputeSubnetCidr": ("String", "the compute subnet's CIDR: NFS exports go to it alone"),
}


def parameters(cluster: ClusterConfig, compute_cidr: str) -> list[dict[str, str]]:
    """CreateStack's Parameters for ``render(cluster)``; ``compute_cidr``: the CIDR of
    the compute nodes' subnet, as EC2 describes it."""
    network = cluster.network
    values = {
        "VpcId": network.vpc_id,
        "SubnetId": network.subnet_id,
        "AvailabilityZone": network.availability_zone,
        "ComputeSubnetCidr": compute_cidr,
    }
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()]


def _messaging() -> Json:
    return {
        "DeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": _sub(policy.DEAD_LETTER_QUEUE),
                "MessageRetentionPeriod": _RETENTION_S,
                "SqsManagedSseEnabled": True,
            },
        },
        "Queue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": _sub(policy.QUEUE),
                "MessageRetentionPeriod": _RETENTION_S,
                "VisibilityTimeout": _VISIBILITY_S,
                "SqsManagedSseEnabled": True,
                "RedrivePolicy": {
                    "deadLetterTargetArn": _att("DeadLetterQueue", "Arn"),
                    "maxReceiveCount": protocol.MAX_RECEIVES,
                },
            },
        },
        # Only the topic may send on its own; compute nodes send through their role.
        "QueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [_ref("Queue")],
                "PolicyDocument": policy.document(
                    [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "sns.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": _att("Queue", "Arn"),
                            "Condition": {"ArnEquals": {"aws:SourceArn": _ref("Topic")}},
                        }
                    ]
                ),
            },
        },
        # Inline subscription (not AWS::SNS::Subscription): one resource, created with it.
        "Topic": {
            "Type": "AWS::SNS::Topic",
            "Properties": {
                "TopicName": _sub(policy.TOPIC),
                "Subscription": [{"Protocol": "sqs", "Endpoint": _att("Queue", "Arn")}],
            },
        },
    }


def _munge_key() -> Json:
    # Generated here, with the cluster: in no image, the same on every node of it.
    return {
        "MungeKey": {
            "Type": "AWS::SecretsManager::Secret",
            "Properties": {
                "Name": _sub(policy.MUNGE_KEY),
                "Description": _sub("${AWS::StackName}: the munge key of every node"),
                "GenerateSecretString": {"PasswordLength": 512, "ExcludePunctuation": True},
            },
        }
    }


def _table() -> Json:
    definition = protocol.table_definition("unused")
    return {
        "InstanceTable": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": _sub(policy.TABLE),
                "AttributeDefinitions": definition["AttributeDefinitions"],
                "KeySchema": definition["KeySchema"],
                "BillingMode": definition["BillingMode"],
                "TimeToLiveSpecification": {
                    "AttributeName": protocol.TABLE_TTL_ATTRIBUTE,
                    "Enabled": True,
                },
            },
        }
    }


# What the head node serves the compute nodes, and what they serve it: nothing else
# crosses between them. (name, protocol, first port, last port).
_HEAD_SERVES = [
    ("Slurmctld", "tcp", protocol.SLURMCTLD_PORT, protocol.SLURMCTLD_PORT),
    ("SrunSteps", "tcp", *protocol.SRUN_PORTS),
    ("Nfs", "tcp", protocol.NFS_PORT, protocol.NFS_PORT),
    ("SgeQmaster", "tcp", protocol.SGE_QMASTER_PORT, protocol.SGE_QMASTER_PORT),
]
_COMPUTE_SERVES = [
    ("Slurmd", "tcp", protocol.SLURMD_PORT, protocol.SLURMD_PORT),
    ("SgeExecd", "tcp", protocol.SGE_EXECD_PORT, protocol.SGE_EXECD_PORT),
    ("Ssh", "tcp", protocol.SSH_PORT, protocol.SSH_PORT),
]


def _security(cluster: ClusterConfig) -> Json:
    """One group for the head node, one for the compute nodes. Between them, only the
    ports the schedulers, NFS and SSH use; among the compute nodes, anything, as their
    jobs' MPI and srun need; from outside, SSH to the head node from ``ssh_from``."""
    network = cluster.network
    head_ingress: list[Json] = []
    if network.ssh_from is not None:
        head_ingress.append(
            {
                "IpProtocol": "tcp",
                "FromPort": protocol.SSH_PORT,
                "ToPort": protocol.SSH_PORT,
                "CidrIp": str(network.ssh_from),
                "Description": "SSH to the head node",
            }
        )
    resources: Json = {
        "HeadNodeSecurityGroup": _security_group("${AWS::StackName} head node", head_ingress),
        "ComputeSecurityGroup": _security_group("${AWS::StackName} compute nodes", []),
        "ComputeFromCompute": _ingress(
            "ComputeSecurityGroup", "ComputeSecurityGroup", "-1", None, "the jobs' traffic"
        ),
    }
    for name, ip_protocol, first, last in _HEAD_SERVES:
        resources[f"HeadFromCompute{name}"] = _ingress(
            "HeadNodeSecurityGroup", "ComputeSecurityGroup", ip_protocol, (first, last), name
        )
    for name, ip_protocol, first, last in _COMPUTE_SERVES:
        resources[f"ComputeFromHead{name}"] = _ingress(
            "ComputeSecurityGroup", "HeadNodeSecurityGroup", ip_protocol, (first, last), name
        )
    return resources


def _security_group(description: str, ingress: list[Json]) -> Json:
    return {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": _sub(description),
            "VpcId": _ref("VpcId"),
            "SecurityGroupIngress": ingress,
            "Tags": _tags(description.replace(" ", "-")),
        },
    }


def _ingress(
    group: str, source: str, ip_protocol: str, ports: tuple[int, int] | None, what: str
) -> Json:
    """A rule of its own: a group that names another (or itself) cannot be inline."""
    properties: Json = {
        "GroupId": _att(group, "GroupId"),
        "SourceSecurityGroupId": _att(source, "GroupId"),
        "IpProtocol": ip_protocol,
        "Description": what,
    }
    if ports is not None:
        properties.update(FromPort=ports[0], ToPort=ports[1])
    return {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": properties}


def _role(name: str, statements: list[Json]) -> Json:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": policy.document(
                [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ]
            ),
            "Path": "/",
            "Policies": [{"PolicyName": name, "PolicyDocument": policy.document(statements)}],
        },
    }


def _roles(cluster: ClusterConfig) -> Json:
    jobs = policy.s3_statements(cluster.s3_access)
    resources: Json = {
        "HeadNodeRole": _role("head-node", policy.head_node_statements(cluster.hooks)),
        "ComputeRole": _role("compute-node", policy.compute_node_statements(cluster.hooks)),
        "HeadNodeProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Path": "/", "Roles": [_ref("HeadNodeRole")]},
        },
        "ComputeProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Path": "/", "Roles": [_ref("ComputeRole")]},
        },
    }
    if jobs:
        resources["S3AccessPolicy"] = {
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "PolicyName": "s3-access",
                "PolicyDocument": policy.document(jobs),
                "Roles": [_ref("HeadNodeRole"), _ref("ComputeRole")],
            },
        }
    return resources


def node_config(cluster: ClusterConfig) -> str:
    """The head node's node.toml, with ``${...}`` for ``Fn::Sub`` (``$${`` escapes none here)."""
    elastic = cluster.scaling.mode == "elastic"
    services = ["sqswatcher", "publisher", "reconciler", *(["scalein"] if elastic else [])]
    volume = cluster.shared_volume
    lines = [
        "[cluster]",
        'stack_name = "${AWS::StackName}"',
        'region = "${AWS::Region}"',
        f'scheduler = "{cluster.cluster.scheduler}"',
        'table = "${InstanceTable}"',
        f'compute_group = "{policy.COMPUTE_GROUP}"',
        f'signal_resource = "{HEAD_NODE}"',
        "",
        "[sqswatcher]",
        'queue = "${Queue}"',
        'topic_arn = "${Topic}"',
        'compute_role_id = "${ComputeRole.RoleId}"',
        f"visibility_timeout = {_VISIBILITY_S}",
        "",
        "[scalein]",
        f"idle_minutes = {cluster.scaling.idle_minutes}",
        "",
        "[supervisor]",
        f"services = {json.dumps(services)}",
        "",
        "[storage.scratch]",
        'mount_point = "/scratch"',
        "",
        "[[storage.shared]]",
        f'device = "{SHARED_DEVICE}"',
        'volume_id = "${SharedVolume}"',
        f'mount_point = "{volume.mount_point}"',
        f'fs_type = "{volume.fs_type}"',
        'export_to = ["${ComputeSubnetCidr}"]',
        f"root_squash = {json.dumps(volume.root_squash)}",
        "",
        "[bootstrap]",
        'munge_key_secret = "${MungeKey}"',
        "",
        *hooks_config(cluster.hooks),
    ]
    return "\n".join(lines)


def hooks_config(hooks: HooksSettings) -> list[str]:
    """The [hooks] tables of node.toml and compute.toml; ``${`` in a value is escaped
    for Fn::Sub, which would take it for a reference."""

    def string(value: str) -> str:
        return json.dumps(value).replace("${", "${!")

    lines = ["[hooks]", f"timeout = {hooks.timeout}", ""]
    for name in ("pre_install", "post_install"):
        hook: HookSettings | None = getattr(hooks, name)
        if hook is not None:
            args = ", ".join(string(arg) for arg in hook.args)
            lines += [f"[hooks.{name}]", f"url = {string(hook.url)}", f"args = [{args}]", ""]
    return lines


def _script(*lines: str) -> str:
    return "\n".join(["#!/bin/bash", "set -euo pipefail", *lines, ""])


def _head_node_config(cluster: ClusterConfig) -> Json:
    # node.toml lives here, not in the user data: a change reaches the running head node
    # (node/nodeconfig.py), where one in the user data would stop and start it.
    text = node_config(cluster)
    if len(text) > _PARAMETER_MAX:
        raise ConfigError(
            f"the head node's node.toml is {len(text)} characters, more than an SSM "
            f"parameter holds ({_PARAMETER_MAX}): shorten the hooks' arguments"
        )
    return {
        "HeadNodeConfig": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {
                "Name": _sub(protocol.config_parameter("${AWS::StackName}")),
                "Type": "String",
                "Description": _sub("${AWS::StackName}: the head node's node.toml"),
                "Value": _sub(text),
            },
        }
    }


def _user_data(path: str, text: str, unit: str) -> str:
    """What cloud-init runs once per instance: one file written, one unit enabled and
    started. The unit does the rest, at this boot and every later one."""
    return _script(
        f"mkdir -p {path.rsplit('/', 1)[0]}",
        f"cat > {path} <<'{USER_DATA_END}'",
        text.rstrip("\n"),
        USER_DATA_END,
        f"systemctl enable --now {unit}",
    )


def _head_node_user_data() -> str:
    # The unit fetches node.toml and signals CloudFormation itself, success or failure.
    parameter = protocol.config_parameter("${AWS::StackName}")
    return _user_data(
        HEAD_ENV_PATH,
        f"{protocol.CONFIG_PARAMETER_ENV}={parameter}\nAWS_REGION=${{AWS::Region}}\n",
        "cfncluster-node.service",
    )


def _head_node(cluster: ClusterConfig) -> Json:
    head = cluster.head_node
    properties: Json = {
        "ImageId": head.image_id,
        "InstanceType": head.instance_type,
        "IamInstanceProfile": _ref("HeadNodeProfile"),
        "NetworkInterfaces": [
            {
                "DeviceIndex": "0",
                "SubnetId": _ref("SubnetId"),
                "GroupSet": [_ref("HeadNodeSecurityGroup")],
                "AssociatePublicIpAddress": cluster.network.public_ip,
            }
        ],
        "UserData": {"Fn::Base64": _sub(_head_node_user_data())},
        "MetadataOptions": METADATA_OPTIONS,
        "Tags": _tags("${AWS::StackName}-head"),
    }
    if cluster.cluster.key_name:
        properties["KeyName"] = cluster.cluster.key_name
    return {
        HEAD_NODE: {
            "Type": "AWS::EC2::Instance",
            "CreationPolicy": {
                "ResourceSignal": {"Count": 1, "Timeout": f"PT{head.ready_timeout_minutes}M"}
            },
            "Properties": properties,
        }
    }


def _shared_volume(cluster: ClusterConfig) -> Json:
    volume = cluster.shared_volume
    properties: Json = {
        "AvailabilityZone": _ref("AvailabilityZone"),
        "Size": volume.size,
        "VolumeType": volume.type,
        "Encrypted": volume.encrypted,
        "Tags": _tags("${AWS::StackName}-shared"),
    }
    optional = {
        "Iops": volume.iops,
        "Throughput": volume.throughput,
        "KmsKeyId": volume.kms_key_id,
        "SnapshotId": volume.snapshot_id,
    }
    properties.update({key: value for key, value in optional.items() if value is not None})
    deletion = volume.on_stack_delete.capitalize()
    return {
        "SharedVolume": {
            "Type": "AWS::EC2::Volume",
            "DeletionPolicy": deletion,
            "UpdateReplacePolicy": deletion,
            "Properties": properties,
        }
    }


def compute_config(cluster: ClusterConfig) -> str:
    """A compute node's compute.toml, with ``${...}`` for ``Fn::Sub``."""
    lines = [
        "[compute]",
        'region = "${AWS::Region}"',
        'queue_url = "${Queue}"',
        'head_node = "${HeadNode.PrivateIp}"',
        'munge_key_secret = "${MungeKey}"',
        f'shared = ["{cluster.shared_volume.mount_point}"]',
        "",
        "[storage.scratch]",
        'mount_point = "/scratch"',
        "",
        *hooks_config(cluster.hooks),
    ]
    return "\n".join(lines)


def _compute_user_data(cluster: ClusterConfig) -> str:
    # Configures the node, joins at boot and leaves at shutdown.
    return _user_data(COMPUTE_CONFIG_PATH, compute_config(cluster), "cfncluster-compute.service")


def _compute(cluster: ClusterConfig) -> Json:
    compute = cluster.compute
    data: Json = {
        "ImageId": compute.image_id,
        "InstanceType": compute.instance_type,
        "IamInstanceProfile": {"Arn": _att("ComputeProfile", "Arn")},
        "SecurityGroupIds": [_ref("ComputeSecurityGroup")],
        "UserData": {"Fn::Base64": _sub(_compute_user_data(cluster))},
        "MetadataOptions": METADATA_OPTIONS,
    }
    if cluster.cluster.key_name:
        data["KeyName"] = cluster.cluster.key_name
    if compute.purchase == "spot":
        spot: Json = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if compute.spot_max_price is not None:
            spot["MaxPrice"] = f"{compute.spot_max_price:g}"
        data["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    return {
        "ComputeLaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateName": _sub("${AWS::StackName}-compute"),
                "LaunchTemplateData": data,
            },
        },
        "ComputeGroup": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            # Compute nodes announce themselves to a head node that is up.
            "DependsOn": HEAD_NODE,
            "Properties": {
                "AutoScalingGroupName": _sub(policy.COMPUTE_GROUP),
                "LaunchTemplate": {
                    "LaunchTemplateId": _ref("ComputeLaunchTemplate"),
                    "Version": _att("ComputeLaunchTemplate", "LatestVersionNumber"),
                },
                "MinSize": str(compute.min_size),
                "MaxSize": str(compute.max_size),
                "DesiredCapacity": str(compute.desired_size),
                "VPCZoneIdentifier": [_ref("SubnetId")],
                "NotificationConfigurations": [
                    {"TopicARN": _ref("Topic"), "NotificationTypes": NOTIFICATIONS}
                ],
                "Tags": [
                    {
                        "Key": "Name",
                        "Value": _sub("${AWS::StackName}-compute"),
                        "PropagateAtLaunch": True,
                    }
                ],
            },
        },
    }


def _scaling(cluster: ClusterConfig) -> Json:
    """docs/protocol.md: a step on the average, a larger one on the sum."""
    scaling = cluster.scaling
    steps = [
        ("", "Average", scaling.threshold, scaling.adjustment),
        ("Large", "Sum", scaling.large_threshold, scaling.large_adjustment),
    ]
    resources: Json = {}
    for suffix, statistic, threshold, adjustment in steps:
        resources[f"ScaleUp{suffix}Policy"] = {
            "Type": "AWS::AutoScaling::ScalingPolicy",
            "Properties": {
                "AutoScalingGroupName": _ref("ComputeGroup"),
                "PolicyType": "SimpleScaling",
                "AdjustmentType": "ChangeInCapacity",
                "ScalingAdjustment": adjustment,
                "Cooldown": str(scaling.cooldown),
            },
        }
        resources[f"Pending{suffix}Alarm"] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmDescription": _sub(
                    f"${{AWS::StackName}}: add {adjustment} compute node(s) when the "
                    f"{statistic.lower()} of pending work is {threshold:g} or more"
                ),
                "Namespace": protocol.METRIC_NAMESPACE,
                "MetricName": protocol.PENDING_METRIC,
                "Dimensions": [
                    {"Name": protocol.METRIC_DIMENSION, "Value": _ref("AWS::StackName")}
                ],
                "Statistic": statistic,
                "Period": 60,
                "EvaluationPeriods": scaling.evaluation_periods,
                "Threshold": threshold,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "TreatMissingData": "notBreaching",
                "AlarmActions": [_ref(f"ScaleUp{suffix}Policy")],
            },
        }
    return resources


def _outputs(cluster: ClusterConfig) -> Json:
    outputs: Json = {
        "HeadNodeInstanceId": _ref(HEAD_NODE),
        "HeadNodePrivateIp": _att(HEAD_NODE, "PrivateIp"),
        "QueueUrl": _ref("Queue"),
        "DeadLetterQueueUrl": _ref("DeadLetterQueue"),
        "TopicArn": _ref("Topic"),
        "InstanceTable": _ref("InstanceTable"),
        "ComputeGroup": _ref("ComputeGroup"),
        "SharedVolume": _ref("SharedVolume"),
        "MungeKeySecret": _ref("MungeKey"),
        # Compute nodes send as this role's sessions, named after their instances.
        "ComputeRoleArn": _att("ComputeRole", "Arn"),
    }
    if cluster.network.public_ip:
        outputs["HeadNodePublicIp"] = _att(HEAD_NODE, "PublicIp")
    return {key: {"Value": value} for key, value in outputs.items()}
