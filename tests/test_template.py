"""The stack template: cfn-lint clean, and every part as the cluster config asks.

moto creates most of the stack (tests/test_launcher.py) but skips the queue policy, the
alarms and the scaling policies: those are checked here, from the template's JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cfncluster_node import config, protocol
from cfncluster_node.config import Config, ConfigError
from cfncluster_node.stack import template
from cfncluster_node.stack.clusterconfig import ClusterConfig
from tests.clusters import cluster_config

FULL = cluster_config(
    cluster={"region": "us-east-1", "key_name": "ops"},
    network={"ssh_from": "203.0.113.0/24", "public_ip": False},
    compute={"purchase": "spot", "spot_max_price": 0.25, "min_size": 1, "desired_size": 2},
    shared_volume={
        "size": 500,
        "type": "gp3",
        "iops": 6000,
        "throughput": 500,
        "kms_key_id": "alias/cluster",
        "snapshot_id": "snap-0123456789abcdef0",
        "on_stack_delete": "snapshot",
    },
    s3_access=[
        {"bucket": "inputs-bucket", "prefix": "runs/", "access": "read-only"},
        {"bucket": "results-bucket", "access": "read-write"},
    ],
)
STATIC = cluster_config(scaling={"mode": "static"}, shared_volume={"type": "io2", "iops": 4000})


def resources(cluster: ClusterConfig) -> dict[str, Any]:
    rendered: dict[str, Any] = template.render(cluster)["Resources"]
    return rendered


@pytest.mark.real
@pytest.mark.parametrize(
    "cluster", [cluster_config(), FULL, STATIC], ids=["default", "full", "static"]
)
def test_cfn_lint_passes(cluster: ClusterConfig, tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(template.to_json(template.render(cluster)))
    lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(lint), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_elastic_alarms_watch_the_published_metric_and_step_the_group() -> None:
    found = resources(cluster_config(scaling={"threshold": 2, "evaluation_periods": 3}))
    small, large = found["PendingAlarm"]["Properties"], found["PendingLargeAlarm"]["Properties"]
    for alarm in (small, large):
        assert alarm["Namespace"] == protocol.METRIC_NAMESPACE
        assert alarm["MetricName"] == protocol.PENDING_METRIC
        assert alarm["Dimensions"] == [{"Name": "Stack", "Value": {"Ref": "AWS::StackName"}}]
        assert alarm["Period"] == 60
        assert alarm["EvaluationPeriods"] == 3
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert (small["Statistic"], small["Threshold"]) == ("Average", 2)
    assert (large["Statistic"], large["Threshold"]) == ("Sum", 200)
    assert small["AlarmActions"] == [{"Ref": "ScaleUpPolicy"}]
    assert large["AlarmActions"] == [{"Ref": "ScaleUpLargePolicy"}]
    step, big_step = found["ScaleUpPolicy"]["Properties"], found["ScaleUpLargePolicy"]["Properties"]
    assert step["AutoScalingGroupName"] == {"Ref": "ComputeGroup"}
    assert (step["ScalingAdjustment"], big_step["ScalingAdjustment"]) == (1, 10)
    assert step["AdjustmentType"] == "ChangeInCapacity"
    assert step["Cooldown"] == "300"


def test_static_mode_has_no_alarms_and_no_scale_in() -> None:
    found = resources(STATIC)
    kinds = {resource["Type"] for resource in found.values()}
    assert "AWS::CloudWatch::Alarm" not in kinds
    assert "AWS::AutoScaling::ScalingPolicy" not in kinds
    assert "scalein" not in node_config(STATIC).supervisor.services


def test_only_the_topic_may_send_to_the_queue_and_failures_go_to_the_dead_letter_queue() -> None:
    found = resources(cluster_config())
    [statement] = found["QueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Ref": "Topic"}}}
    assert found["Topic"]["Properties"]["Subscription"] == [
        {"Protocol": "sqs", "Endpoint": {"Fn::GetAtt": ["Queue", "Arn"]}}
    ]
    redrive = found["Queue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_a_message_is_retried_through_a_long_outage_and_its_tombstone_outlives_it() -> None:
    queue = resources(cluster_config())["Queue"]["Properties"]
    receives = queue["RedrivePolicy"]["maxReceiveCount"]
    cap = config.SqsWatcherSettings.model_fields["retry_backoff_max"].default
    waited = sum(protocol.retry_delay(n, cap) for n in range(1, receives))
    # Five receives once dead-lettered a join after 75 s of DynamoDB failing.
    assert waited >= 3600, f"a message is dead-lettered after {waited} s of failures"
    tombstone_s = config.ClusterSettings.model_fields["tombstone_days"].default * 86400
    assert tombstone_s >= queue["MessageRetentionPeriod"]


def test_the_group_notifies_the_topic_and_waits_for_the_head_node() -> None:
    group = resources(cluster_config())["ComputeGroup"]
    assert group["DependsOn"] == template.HEAD_NODE
    [notifications] = group["Properties"]["NotificationConfigurations"]
    assert notifications["TopicARN"] == {"Ref": "Topic"}
    assert set(notifications["NotificationTypes"]) == {
        "autoscaling:EC2_INSTANCE_LAUNCH",
        "autoscaling:EC2_INSTANCE_LAUNCH_ERROR",
        "autoscaling:EC2_INSTANCE_TERMINATE",
        "autoscaling:EC2_INSTANCE_TERMINATE_ERROR",
    }
    sizes = {k: group["Properties"][k] for k in ("MinSize", "DesiredCapacity", "MaxSize")}
    assert sizes == {"MinSize": "0", "DesiredCapacity": "0", "MaxSize": "8"}


def test_spot_compute_nodes_carry_their_max_price() -> None:
    data = resources(FULL)["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
            "MaxPrice": "0.25",
        },
    }
    on_demand = resources(cluster_config())["ComputeLaunchTemplate"]["Properties"]
    assert "InstanceMarketOptions" not in on_demand["LaunchTemplateData"]


def test_every_ebs_setting_reaches_the_volume_which_outlives_the_stack_by_default() -> None:
    volume = resources(FULL)["SharedVolume"]
    assert volume["DeletionPolicy"] == "Snapshot"
    assert volume["Properties"] | {"Tags": None} == {
        "AvailabilityZone": {"Ref": "AvailabilityZone"},
        "Size": 500,
        "VolumeType": "gp3",
        "Iops": 6000,
        "Throughput": 500,
        "Encrypted": True,
        "KmsKeyId": "alias/cluster",
        "SnapshotId": "snap-0123456789abcdef0",
        "Tags": None,
    }
    plain = resources(cluster_config())["SharedVolume"]
    assert plain["DeletionPolicy"] == "Retain"
    assert {"Iops", "Throughput", "KmsKeyId", "SnapshotId"}.isdisjoint(plain["Properties"])


def test_instances_get_no_s3_access_unless_asked() -> None:
    assert "S3AccessPolicy" not in resources(cluster_config())
    statements = resources(FULL)["S3AccessPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_resource = {s["Resource"][0]["Fn::Sub"]: s for s in statements}
    reads = by_resource["arn:${AWS::Partition}:s3:::inputs-bucket/runs/*"]
    assert reads["Action"] == ["s3:GetObject"]
    listing = by_resource["arn:${AWS::Partition}:s3:::inputs-bucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["runs/*", "runs"]}}
    writes = by_resource["arn:${AWS::Partition}:s3:::results-bucket/*"]
    assert "s3:PutObject" in writes["Action"]
    assert "Condition" not in by_resource["arn:${AWS::Partition}:s3:::results-bucket"]


def node_config(cluster: ClusterConfig) -> Config:
    """The head node's node.toml as CloudFormation's Fn::Sub would fill it in."""
    text = template.node_config(cluster)
    for name, value in {
        "${AWS::StackName}": "c1",
        "${AWS::Region}": "us-east-1",
        "${InstanceTable}": "c1-instances",
        "${Queue}": "https://sqs.us-east-1.amazonaws.com/123456789012/c1-queue",
        "${Topic}": "arn:aws:sns:us-east-1:123456789012:c1-events",
        "${ComputeSubnetCidr}": "10.0.1.0/24",
        "${ComputeRole.RoleId}": "AROAEXAMPLEROLEID0001",
        "${SharedVolume}": "vol-0123456789abcdef0",
        "${MungeKey}": "arn:aws:secretsmanager:us-east-1:123456789012:secret:c1-munge-key-AbCdEf",
    }.items():
        text = text.replace(name, value)
    assert "${" not in text
    return config.parse(text, source="user data")


def test_the_head_node_config_names_the_stacks_resources() -> None:
    settings = node_config(FULL)
    assert settings.cluster.table == "c1-instances"
    assert settings.cluster.compute_group == "c1-compute"
    assert settings.cluster.signal_resource == template.HEAD_NODE
    assert settings.cluster.max_size is None  # read from the group: resizing is no change here
    assert settings.sqswatcher.queue.endswith("/c1-queue")
    # Who may send on the queue: the stack's topic, and the compute role's sessions.
    assert settings.sqswatcher.topic_arn.endswith(":c1-events")
    assert settings.sqswatcher.compute_role_id == "AROAEXAMPLEROLEID0001"
    assert settings.supervisor.services == ["sqswatcher", "publisher", "reconciler", "scalein"]
    [shared] = settings.storage.shared
    assert (shared.volume_id, shared.device) == ("vol-0123456789abcdef0", template.SHARED_DEVICE)
    # Exported to the compute subnet alone, not the VPC, root squashed.
    assert [str(network) for network in shared.export_to] == ["10.0.1.0/24"]
    assert shared.root_squash
    assert settings.storage.scratch is not None


def test_the_head_node_waits_for_its_signal() -> None:
    head = resources(cluster_config(head_node={"ready_timeout_minutes": 45}))[template.HEAD_NODE]
    assert head["CreationPolicy"] == {"ResourceSignal": {"Count": 1, "Timeout": "PT45M"}}
    script = head["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "CFNCLUSTER_CONFIG_PARAMETER=/cfncluster/${AWS::StackName}/node.toml\n" in script


def test_node_toml_lives_in_a_parameter_so_a_change_never_stops_the_head_node() -> None:
    cluster = cluster_config()
    parameter = resources(cluster)["HeadNodeConfig"]["Properties"]

    assert parameter["Name"] == {"Fn::Sub": "/cfncluster/${AWS::StackName}/node.toml"}
    assert parameter["Value"] == {"Fn::Sub": template.node_config(cluster)}
    # The head node's own user data does not depend on any setting of the cluster.
    scripts = {
        json.dumps(resources(c)[template.HEAD_NODE]["Properties"]["UserData"])
        for c in (cluster, FULL, STATIC)
    }
    assert len(scripts) == 1


def test_a_node_toml_too_large_for_its_parameter_is_refused_naming_the_fix() -> None:
    hooks = {"post_install": {"url": "https://example.com/post.sh", "args": ["x" * 4000]}}

    with pytest.raises(ConfigError, match="more than an SSM parameter holds"):
        template.render(cluster_config(hooks=hooks))


def test_compute_nodes_get_their_compute_toml_and_start_their_unit() -> None:
    cluster = cluster_config()
    data = template.render(cluster)["Resources"]["ComputeLaunchTemplate"]["Properties"]
    script = data["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]

    end = template.USER_DATA_END
    assert f"compute.toml <<'{end}'\n{template.compute_config(cluster)}{end}\n" in script
    assert script.rstrip().endswith("systemctl enable --now cfncluster-compute.service")
    for placeholder in ("${Queue}", "${HeadNode.PrivateIp}", "${MungeKey}", "${AWS::Region}"):
        assert placeholder in template.compute_config(cluster)


def test_every_instance_requires_imdsv2_with_a_hop_limit_of_one() -> None:
    found = resources(FULL)
    launch_data = found["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]

    for options in (
        found[template.HEAD_NODE]["Properties"]["MetadataOptions"],
        launch_data["MetadataOptions"],
    ):
        assert options == {
            "HttpEndpoint": "enabled",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 1,
        }


def test_the_head_node_opens_only_its_services_to_the_compute_nodes() -> None:
    found = resources(FULL)
    rules = {
        logical_id: resource["Properties"]
        for logical_id, resource in found.items()
        if resource["Type"] == "AWS::EC2::SecurityGroupIngress"
    }

    def opened(group: str, source: str) -> set[tuple[str, int | None, int | None]]:
        return {
            (rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort"))
            for rule in rules.values()
            if rule["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
            and rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [source, "GroupId"]}
        }

    head, compute = "HeadNodeSecurityGroup", "ComputeSecurityGroup"
    # slurmctld, srun's steps, NFSv4, SGE's qmaster: and nothing else.
    assert opened(head, compute) == {
        ("tcp", 6817, 6817),
        ("tcp", 60001, 63000),
        ("tcp", 2049, 2049),
        ("tcp", 6444, 6444),
    }
    # slurmd, SGE's execd, SSH.
    assert opened(compute, head) == {("tcp", 6818, 6818), ("tcp", 6445, 6445), ("tcp", 22, 22)}
    # Among compute nodes, their jobs' MPI and srun: anything.
    assert opened(compute, compute) == {("-1", None, None)}
    assert opened(head, head) == set()
    # From outside, SSH to the head node alone, from ssh_from; no CIDR opens anything else.
    inline = found[head]["Properties"]["SecurityGroupIngress"]
    assert inline == [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "CidrIp": "203.0.113.0/24",
            "Description": "SSH to the head node",
        }
    ]
    assert found[compute]["Properties"]["SecurityGroupIngress"] == []
    assert "CidrIp" not in json.dumps(rules)


def test_a_cluster_may_keep_root_unsquashed_on_its_shared_volume() -> None:
    unsquashed = cluster_config(shared_volume={"root_squash": False})

    [shared] = node_config(unsquashed).storage.shared

    assert not shared.root_squash
