"""AWS and EC2 for the VM test, inside the test's own network namespace.

``python -m tests.vm.cloud serve STATE_DIR ADDRESS`` (run by vmtest.sh in the namespace):
moto's server on ADDRESS, the launcher creating two stacks (the tests' cluster in moto's
default VPC, and an SGE one whose head node's post_install fails), and each instance's metadata
(IMDSv2) on ADDRESS too: the cluster's head node, the compute node its group launches,
the other stack's head node. It writes ``STATE_DIR/state.json`` with what each VM needs
to be its instance (its user data, its address, the endpoints, its shared volume's NVMe
serial), serves until SIGTERM, and writes ``STATE_DIR/stacks.json`` as the stacks settle.

``python -m tests.vm.cloud check STATE_DIR`` prints the host side's checks: the head
node's own signal completed its stack, and the failing hook failed the other.

Only what stands in for AWS and EC2 is here: the VM configures itself from the user data
and the stack, with the product's own code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import AwsSettings
from cfncluster_node.local.cloud import (
    CREDENTIALS,
    MotoServer,
    instance_credentials,
    metadata_service,
    send_messages,
)
from cfncluster_node.node import group
from cfncluster_node.stack import launcher, template
from tests.clusters import on_moto

REGION = "us-east-1"
STACK = "vmtest"
# A second cluster, of SGE, whose head node's post_install fails: its qmaster is
# configured first, then its stack must fail with the hook's name and exit code.
HOOK_STACK = "vmtest-hook"
HOOK_BUCKET = "vmtest-hooks"
FAILING_HOOK = "post-install-fails.sh"
HOOK_EXIT_CODE = 3
HOOK_SCRIPT = f"""#!/bin/bash
echo "post_install of $1 fails on purpose"
exit {HOOK_EXIT_CODE}
"""


async def serve(state_dir: Path, address: str) -> None:
    with MotoServer(host=address) as moto:
        moto.use()
        async with Aws(AwsSettings(max_attempts=3), REGION) as aws:
            log = (state_dir / "launcher.log").open("w")
            stacks = launcher.Launcher(aws, REGION, Console(file=log, width=200), poll_s=1.0)
            await aws.call("s3", "create_bucket", Bucket=HOOK_BUCKET)
            await aws.call(
                "s3", "put_object", Bucket=HOOK_BUCKET, Key=FAILING_HOOK, Body=HOOK_SCRIPT
            )
            failing = {
                "post_install": {"url": f"s3://{HOOK_BUCKET}/{FAILING_HOOK}", "args": [HOOK_STACK]}
            }
            creating = {
                STACK: asyncio.create_task(
                    stacks.create(STACK, await on_moto(aws, default_vpc=True))
                ),
                HOOK_STACK: asyncio.create_task(
                    stacks.create(
                        HOOK_STACK,
                        await on_moto(
                            aws, default_vpc=True, cluster={"scheduler": "sge"}, hooks=failing
                        ),
                        rollback=False,
                    )
                ),
            }
            heads = {stack: await _head_node(aws, stack) for stack in creating}
            volumes = {stack: await _shared_volume(aws, stack) for stack in creating}
            # A message no retry can make valid: the watcher's dead-letter log line.
            queue = await aws.call("sqs", "get_queue_url", QueueName=f"{STACK}-queue")
            await send_messages(aws, queue["QueueUrl"], ["{not json"])
            # The group launches one compute node (moto sends no notification of it: the
            # node's own join registers it).
            compute = await _compute_node(aws)
            async with contextlib.AsyncExitStack() as servers:
                instances = {}
                for role, instance_id, user_data, volume in (
                    ("head", heads[STACK], await _user_data(aws, heads[STACK]), volumes[STACK]),
                    ("compute", compute, await _launch_template_user_data(aws), None),
                    (
                        "hook",
                        heads[HOOK_STACK],
                        await _user_data(aws, heads[HOOK_STACK]),
                        volumes[HOOK_STACK],
                    ),
                ):
                    instance = await _describe(aws, instance_id)
                    imds = await servers.enter_async_context(
                        metadata_service(_metadata(instance), host=address)
                    )
                    # A compute node sends as its instance's role session, as on EC2: the
                    # head node believes its join from no one else.
                    credentials = (
                        await instance_credentials(aws, await _role(aws, "ComputeRole"), compute)
                        if role == "compute"
                        else CREDENTIALS
                    )
                    instances[role] = {
                        "address": instance["PrivateIpAddress"],
                        "hostname": instance["PrivateDnsName"].split(".")[0],
                        "user_data": user_data,
                        "environment": {
                            **credentials,
                            "AWS_ENDPOINT_URL": moto.url,
                            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
                        },
                        # On Nitro, an EBS volume is the NVMe device whose serial is its id.
                        "volume_serial": volume.replace("-", "") if volume else "",
                    }
                secrets = [
                    await aws.call(
                        "secretsmanager", "get_secret_value", SecretId=f"{stack}-munge-key"
                    )
                    for stack in creating
                ]
                state = {
                    "instances": instances,
                    # For the host's check that no image holds them.
                    "munge_keys": [secret["SecretString"] for secret in secrets],
                }
                (state_dir / "state.json").write_text(json.dumps(state, indent=2))
                stopped = asyncio.Event()
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
                settled = {}
                for stack, task in creating.items():
                    created = await task
                    settled[stack] = {
                        "status": created.status,
                        "failures": [f.reason for f in created.failures],
                    }
                    (state_dir / "stacks.json").write_text(json.dumps(settled))
                await stopped.wait()


def _metadata(instance: dict[str, Any]) -> dict[str, str]:
    return {
        "instance-id": instance["InstanceId"],
        "instance-type": instance["InstanceType"],
        "local-ipv4": instance["PrivateIpAddress"],
        "local-hostname": instance["PrivateDnsName"],
        # The instance-store disks: the VM's second and third virtio disks.
        "block-device-mapping/": "ami\nephemeral0\nephemeral1\nroot",
        "block-device-mapping/ephemeral0": "vdb",
        "block-device-mapping/ephemeral1": "vdc",
    }


async def _role(aws: Aws, logical_id: str) -> str:
    """The ARN of the cluster stack's role ``logical_id``, as CloudFormation named it."""
    async for page in aws.pages("iam", "list_roles"):
        for role in page["Roles"]:
            if role["RoleName"].startswith(f"{STACK}-{logical_id}-"):
                return str(role["Arn"])
    raise RuntimeError(f"the stack has no role {logical_id}")


async def _describe(aws: Aws, instance_id: str) -> dict[str, Any]:
    described = await aws.call("ec2", "describe_instances", InstanceIds=[instance_id])
    instance: dict[str, Any] = described["Reservations"][0]["Instances"][0]
    return instance


async def _user_data(aws: Aws, instance_id: str) -> str:
    found = await aws.call(
        "ec2", "describe_instance_attribute", InstanceId=instance_id, Attribute="userData"
    )
    return base64.b64decode(found["UserData"]["Value"]).decode()


async def _launch_template_user_data(aws: Aws) -> str:
    """What EC2 gives the group's instances: the launch template's user data."""
    versions = await aws.call(
        "ec2", "describe_launch_template_versions", LaunchTemplateName=f"{STACK}-compute"
    )
    data = versions["LaunchTemplateVersions"][-1]["LaunchTemplateData"]["UserData"]
    return base64.b64decode(data).decode()


async def _compute_node(aws: Aws) -> str:
    name = f"{STACK}-compute"
    while True:
        try:
            await aws.call(
                "autoscaling", "set_desired_capacity", AutoScalingGroupName=name, DesiredCapacity=1
            )
            break
        except AwsError:  # the group is not created yet
            await asyncio.sleep(0.5)
    members = (await group.describe(aws, name)).members
    return sorted(members)[0]


async def _head_node(aws: Aws, stack: str) -> str:
    """The head node's instance id, once moto has created it."""
    while True:
        try:
            found = await aws.call(
                "cloudformation",
                "describe_stack_resource",
                StackName=stack,
                LogicalResourceId=template.HEAD_NODE,
            )
            return str(found["StackResourceDetail"]["PhysicalResourceId"])
        except AwsError:  # not created yet
            await asyncio.sleep(0.5)


async def _shared_volume(aws: Aws, stack: str) -> str:
    """The stack's volume, by the tags CloudFormation gives it (moto cannot describe the
    resources of a stack that has alarms, which it does not model)."""
    tags = {"aws:cloudformation:stack-name": stack, "aws:cloudformation:logical-id": "SharedVolume"}
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]
    while True:
        volumes = await aws.call("ec2", "describe_volumes", Filters=filters)
        if volumes["Volumes"]:
            return str(volumes["Volumes"][0]["VolumeId"])
        await asyncio.sleep(0.5)


def check(state_dir: Path) -> int:
    """The checks only the host can make: the head node's own signal completed its stack,
    and the other head node's failing post_install failed its stack, with the hook's name
    and exit code in the reason CloudFormation shows."""
    result = state_dir / "stacks.json"
    stacks = json.loads(result.read_text()) if result.exists() else {}
    expected_failure = f"post_install: exited with {HOOK_EXIT_CODE}"
    checks: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
        (
            "the head node signals SUCCESS to its stack",
            STACK,
            lambda stack: stack["status"] == "CREATE_COMPLETE",
        ),
        (
            "a failing post_install on the head node fails the stack with the hook's name",
            HOOK_STACK,
            lambda stack: (
                stack["status"] == "CREATE_FAILED"
                and any(expected_failure in reason for reason in stack["failures"])
            ),
        ),
    ]
    failed = 0
    for name, stack_name, passes in checks:
        stack = stacks.get(stack_name)
        if stack is None:
            print(f"FAIL {name}: {stack_name} never settled")
            failed += 1
            continue
        ok = passes(stack)
        failed += not ok
        reasons = " ".join(stack["failures"])
        print(f"{'PASS' if ok else 'FAIL'} {name}: {stack_name} {stack['status']} {reasons}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    match argv:
        case ["serve", state_dir, address]:
            asyncio.run(serve(Path(state_dir), address))
            return 0
        case ["check", state_dir]:
            return check(Path(state_dir))
    print("usage: python -m tests.vm.cloud serve STATE_DIR ADDRESS | check STATE_DIR")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
