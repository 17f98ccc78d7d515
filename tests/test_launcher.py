"""The launcher against moto's CloudFormation, and the daemons on the stack it makes.

moto creates the queues, topic (with its subscription), table, roles, launch template,
group, volume and head node; our motoserver adds creation policies and SignalResource,
so ``launch create`` really waits for the head node's signal.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from rich.console import Console

from cfncluster_node import config, imds
from cfncluster_node.aws import Aws
from cfncluster_node.config import Config, ConfigError, StorageSettings
from cfncluster_node.local.cloud import (
    ACCOUNT,
    Instances,
    MotoServer,
    publish_autoscaling,
    queue_depth,
)
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import readiness, services
from cfncluster_node.stack import clusterconfig, launcher, template
from cfncluster_node.stack.clusterconfig import ClusterConfig
from cfncluster_node.storage import ebs
from tests.clusters import cluster_config, on_moto
from tests.conftest import REGION, MetadataService

# A cluster whose templates go to a bucket of its own choosing.
OPS_BUCKET = cluster_config(cluster={"region": REGION, "template_bucket": "ops-templates"})


def console() -> Console:
    return Console(file=io.StringIO(), width=200)


def printed(out: Console) -> str:
    assert isinstance(out.file, io.StringIO)
    return out.file.getvalue()


async def stack_status(aws: Aws, name: str) -> str | None:
    found = await launcher.Launcher(aws, REGION, console()).describe(name)
    return found.status if found else None


async def until_status(aws: Aws, name: str, wanted: str) -> None:
    for _ in range(600):
        if await stack_status(aws, name) == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {wanted}")


async def head_node_comes_up(
    aws: Aws, name: str, slurm: LocalSlurm, metadata_service: MetadataService, **storage: object
) -> Config:
    """Play the head node: its config from the stack, then storage, scheduler and signal.

    The private Slurm stands in for the head node's, configured and started already: the
    bootstrap, which would configure this machine's munge and Slurm under systemd, is
    left out (the VM test runs it). Storage is left out unless given: this machine has
    no EBS devices (tests/test_ebs.py attaches the volume)."""
    await until_status(aws, name, "CREATE_IN_PROGRESS")
    text = await launcher.Launcher(aws, REGION, console()).node_config(name)
    settings = config.parse(text, source="user data").model_copy(
        update={
            "slurm": slurm.settings,
            "storage": StorageSettings.model_validate(storage),
            "bootstrap": None,
        }
    )
    os.environ[imds.IMDS_ENV] = await metadata_service(
        {"instance-id": await launcher.Launcher(aws, REGION, console()).head_node_id(name)}
    )
    await readiness.bring_up(settings, aws, services.build_registry(settings, aws))
    return settings


@pytest.mark.privilege(stack="c1")
async def test_create_waits_for_the_head_node_and_the_daemons_use_every_resource(
    aws: Aws, slurm: LocalSlurm, metadata_service: MetadataService
) -> None:
    cluster = await on_moto(aws)
    out = console()
    stacks = launcher.Launcher(aws, REGION, out, poll_s=0.05)
    creating = asyncio.create_task(stacks.create("c1", cluster))
    settings = await head_node_comes_up(aws, "c1", slurm, metadata_service)
    created = await creating

    assert created.ok, printed(out)
    assert "Received SUCCESS signal with UniqueId i-" in printed(out)
    outputs = created.outputs
    assert outputs["QueueUrl"] == settings.sqswatcher.queue
    assert outputs["InstanceTable"] == settings.cluster.table
    assert outputs["ComputeGroup"] == settings.cluster.compute_group == "c1-compute"
    assert {"HeadNodeInstanceId", "HeadNodePrivateIp", "HeadNodePublicIp"} <= set(outputs)

    # The group launches; Auto Scaling's notification reaches the queue through the topic.
    await aws.call(
        "autoscaling", "set_desired_capacity", AutoScalingGroupName="c1-compute", DesiredCapacity=1
    )
    [member] = (
        await aws.call(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=["c1-compute"]
        )
    )["AutoScalingGroups"][0]["Instances"]
    await publish_autoscaling(
        aws, outputs["TopicArn"], "autoscaling:EC2_INSTANCE_LAUNCH", member["InstanceId"]
    )
    # The node joins as itself: the stack's compute role, in a session named after it.
    async with Instances(
        aws, group="c1-compute", queue_url=outputs["QueueUrl"], role_arn=outputs["ComputeRoleArn"]
    ) as instances:
        [node] = await instances.describe([member["InstanceId"]])
        await instances.join(node, slots=2)
        await instances.send(node.instance_id, ["{not json"])

    registry = services.build_registry(settings, aws)
    for name in settings.supervisor.services:
        await services.build(name, settings, aws, registry, burst=True).run(asyncio.Event())

    assert [h.hostname for h in await registry.scheduler.list_hosts()] == [node.hostname]
    [row] = await registry.table.scan()
    assert (row.instance_id, row.hostname, row.address) == (
        node.instance_id,
        node.hostname,
        node.address,
    )
    assert await queue_depth(aws, outputs["DeadLetterQueueUrl"]) == 1
    metric = await aws.call(
        "cloudwatch",
        "list_metrics",
        Namespace="cfncluster",
        MetricName="pending",
        Dimensions=[{"Name": "Stack", "Value": "c1"}],
    )
    assert metric["Metrics"], "the publisher feeds the metric the alarms watch"
    await ebs.attach(aws, outputs["SharedVolume"], outputs["HeadNodeInstanceId"], "/dev/sdf")
    [volume] = (await aws.call("ec2", "describe_volumes", VolumeIds=[outputs["SharedVolume"]]))[
        "Volumes"
    ]
    assert volume["Attachments"][0]["InstanceId"] == outputs["HeadNodeInstanceId"]

    deleted = await stacks.delete("c1")
    assert deleted is not None and deleted.status == "DELETE_COMPLETE"
    # The users' data outlives the cluster unless the config says otherwise.
    assert await aws.call("ec2", "describe_volumes", VolumeIds=[outputs["SharedVolume"]])
    assert await stacks.delete("c1") is None
    assert "no such stack, nothing to delete" in printed(out)


@pytest.mark.parametrize(
    ("rollback", "final", "device", "reason"),
    [
        pytest.param(
            True,
            "ROLLBACK_COMPLETE",
            "/dev/xvdz-missing",
            "/dev/xvdz-missing: no such device",
            id="missing-rollback",
        ),
        pytest.param(
            False,
            "CREATE_FAILED",
            "/dev/xvdz-missing",
            "/dev/xvdz-missing: no such device",
            id="missing",
        ),
        # Not a StorageError: blkid's own failure, which once sent no signal at all.
        pytest.param(
            False,
            "CREATE_FAILED",
            "/dev/shm",  # a directory: blkid says "nothing found" of what it cannot open
            "blkid -p -o export /dev/shm cannot read",
            id="unreadable",
        ),
    ],
)
@pytest.mark.privilege(stack="c2")
async def test_a_head_node_whose_setup_fails_fails_the_stack_with_the_reason(
    aws: Aws,
    slurm: LocalSlurm,
    metadata_service: MetadataService,
    rollback: bool,
    final: str,
    device: str,
    reason: str,
) -> None:
    cluster = await on_moto(aws)
    out = console()
    stacks = launcher.Launcher(aws, REGION, out, poll_s=0.05)
    creating = asyncio.create_task(stacks.create("c2", cluster, rollback=rollback))
    shared = [{"device": device, "mount_point": "/shared"}]
    with pytest.raises(Exception):  # noqa: B017 - any failure must reach the stack
        await head_node_comes_up(aws, "c2", slurm, metadata_service, shared=shared)
    failed = await creating

    assert failed.status == final
    [failure] = failed.failures
    assert failure.logical_id == template.HEAD_NODE
    assert failure.reason.startswith("Received FAILURE signal with UniqueId i-")
    assert f"storage: {reason}"[:40] in failure.reason
    launcher.report(out, failed)
    assert f"failed: {template.HEAD_NODE} (AWS::EC2::Instance): Received FAILURE" in printed(out)


@pytest.mark.privilege(stack="c3")
async def test_list_shows_the_clusters_and_update_applies_a_changed_config(
    aws: Aws, slurm: LocalSlurm, metadata_service: MetadataService
) -> None:
    cluster = await on_moto(aws)
    out = console()
    stacks = launcher.Launcher(aws, REGION, out, poll_s=0.05)
    creating = asyncio.create_task(stacks.create("c3", cluster))
    await head_node_comes_up(aws, "c3", slurm, metadata_service)
    await creating
    other = {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}
    await aws.call(
        "cloudformation", "create_stack", StackName="not-a-cluster", TemplateBody=json.dumps(other)
    )

    assert [view.name for view in await stacks.clusters()] == ["c3"]

    bigger = ClusterConfig.model_validate(
        cluster.model_dump() | {"compute": cluster.compute.model_dump() | {"max_size": 20}}
    )
    updated = await stacks.update("c3", bigger)
    assert updated.status == "UPDATE_COMPLETE"
    assert "stops and starts the head node" not in printed(out)
    described = await aws.call(
        "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=["c3-compute"]
    )
    assert described["AutoScalingGroups"][0]["MaxSize"] == 20


def launch(moto: MotoServer, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cfncluster_node", "launch", *args],
        env={**os.environ, **moto.env, "AWS_REGION": REGION},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


@pytest.mark.privilege(stack="c4")
async def test_ctrl_c_while_waiting_leaves_the_stack_and_says_how_to_resume(
    aws: Aws, moto: MotoServer, tmp_path: Path
) -> None:
    cluster = await on_moto(aws)
    path = tmp_path / "cluster.toml"
    path.write_text(toml_of(cluster))
    creating = launch(moto, "create", "c4", "--config", str(path))
    await until_status(aws, "c4", "CREATE_IN_PROGRESS")
    creating.send_signal(signal.SIGINT)
    output, _ = creating.communicate(timeout=30)

    assert creating.returncode == 130, output
    assert "Resume with: cfncluster-node launch status c4 --region us-east-1 --watch" in output
    assert await stack_status(aws, "c4") == "CREATE_IN_PROGRESS"

    status = launch(moto, "status", "c4")
    assert "c4: CREATE_IN_PROGRESS" in status.communicate(timeout=30)[0]
    deleted = launch(moto, "delete", "c4")
    assert "DELETE_COMPLETE" in deleted.communicate(timeout=30)[0]
    assert deleted.returncode == 0
    again = launch(moto, "delete", "c4")
    assert "no such stack" in again.communicate(timeout=30)[0]
    assert again.returncode == 0


async def test_a_bad_cluster_config_is_refused_before_any_call(
    moto: MotoServer, tmp_path: Path
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\nregion = "us-east-1"\n')
    refused = launch(moto, "create", "c5", "--config", str(path))
    output, _ = refused.communicate(timeout=30)
    assert refused.returncode == 2
    assert f"{path}: key 'network' is required but missing" in output
    bad_name = launch(moto, "status", "5-clusters")
    assert "cluster name '5-clusters': expected a letter" in bad_name.communicate(timeout=30)[0]


def toml_of(cluster: ClusterConfig) -> str:
    """The config as an operator would write it."""
    lines = []
    for section, values in json.loads(cluster.model_dump_json(exclude_none=True)).items():
        if isinstance(values, list):
            continue
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def test_an_update_says_what_it_does_to_the_head_node_before_it_happens() -> None:
    from tests.clusters import cluster_config

    deployed = template.render(cluster_config())
    resized = template.render(cluster_config(compute={"max_size": 50}))
    slower = template.render(cluster_config(scaling={"idle_minutes": 30}))
    bigger = template.render(cluster_config(head_node={"instance_type": "c5.2xlarge"}))
    hooked = template.render(cluster_config(hooks={"post_install": {"url": "https://h/p.sh"}}))

    # node.toml is a parameter: its changes reach the running head node, never stop it.
    assert not launcher.interrupts_head_node(deployed, resized)
    assert not launcher.interrupts_head_node(deployed, slower)
    assert launcher.interrupts_head_node(deployed, bigger)
    assert not launcher.config_change(deployed, resized)
    slower_change = launcher.config_change(deployed, slower)
    assert slower_change.sections == ("scalein",)
    assert slower_change.describe() == "restarts scalein on the head node"
    assert launcher.config_change(deployed, hooked).daemon


@pytest.mark.privilege(stack="c1")
async def test_a_template_bucket_someone_else_owns_is_refused_with_the_fix(aws: Aws) -> None:
    # Another account takes the predictable name first (its credentials: an STS session
    # of a role in that account).
    stranger = await aws.call(
        "sts",
        "assume_role",
        RoleArn="arn:aws:iam::999999999999:role/squatter",
        RoleSessionName="squatter",
    )
    credentials = stranger["Credentials"]
    session = get_session()
    async with session.create_client(
        "s3",
        region_name=REGION,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    ) as s3:
        await s3.create_bucket(Bucket=f"cfncluster-node-{ACCOUNT}-{REGION}")
    stacks = launcher.Launcher(aws, REGION, console())

    with pytest.raises(ConfigError) as refused:
        await stacks.create("c1", await on_moto(aws))

    assert "belongs to another account" in str(refused.value)
    assert "'cluster.template_bucket'" in str(refused.value)
    assert await stacks.describe("c1") is None  # nothing was created


@pytest.mark.privilege(stack="c1", cluster=OPS_BUCKET)
async def test_the_template_goes_only_into_a_bucket_this_account_owns(aws: Aws) -> None:
    # A bucket of ours, named in cluster.toml, is used as it is.
    await aws.call("s3", "create_bucket", Bucket="ops-templates")
    cluster = await on_moto(aws, cluster={"region": REGION, "template_bucket": "ops-templates"})

    url = await launcher.Launcher(aws, REGION, console()).upload("c1", cluster)

    assert url.startswith(f"https://ops-templates.s3.{REGION}.amazonaws.com/c1/template-")


def test_launch_template_prints_the_template_without_calling_aws(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(Path("examples/cluster.toml").read_text())
    nowhere = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")} | {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "cfncluster_node",
            "launch",
            "template",
            "c1",
            "--config",
            str(path),
        ],
        env=nowhere,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert shown.returncode == 0, shown.stderr
    rendered = json.loads(shown.stdout)
    expected = template.render(clusterconfig.load(path))
    assert rendered == expected
    assert {"HeadNodeRole", "ComputeRole"} <= set(rendered["Resources"])


def test_launch_policy_prints_the_operators_policy_scoped_to_the_cluster(
    moto: MotoServer, tmp_path: Path
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(Path("examples/cluster.toml").read_text())

    printed = subprocess.run(
        [sys.executable, "-m", "cfncluster_node", "launch", "policy", "c1", "--config", str(path)],
        env={**os.environ, **moto.env},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert printed.returncode == 0, printed.stderr
    document = json.loads(printed.stdout)
    assert document["Version"] == "2012-10-17"
    text = json.dumps(document)
    assert "${" not in text  # filled in: the stack, the region, the caller's account
    assert f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/c1/*" in text
    assert f"arn:aws:iam::{ACCOUNT}:role/c1-*" in text
    assert f"arn:aws:s3:::cfncluster-node-{ACCOUNT}-us-east-1" in text
