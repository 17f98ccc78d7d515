"""``cfncluster-node launch``: a cluster's stack created, watched, updated and deleted.

A thin layer over CloudFormation: the template is rendered from the cluster's config and
uploaded to S3, then every command maps to one stack call and a watch of its events.
The watch ends when the stack settles; ``launch create`` settles only once the head node
has signalled that storage and services are up (its creation policy), or why they
are not. Interrupting a watch leaves the stack alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from cfncluster_node import __version__, protocol
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import Change, ConfigError, affected
from cfncluster_node.stack import template
from cfncluster_node.stack.clusterconfig import ClusterConfig

# Every stack this tool makes carries this tag: `launch list` shows only those.
TAG = "cfncluster-node:version"
# Names of the stack's resources are derived from it (``{name}-instances``, ...).
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,59}$")
SUCCESS = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "DELETE_COMPLETE"}


@dataclass(frozen=True)
class Failure:
    logical_id: str
    resource_type: str
    status: str
    reason: str


@dataclass(frozen=True)
class StackView:
    name: str
    stack_id: str
    status: str
    reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()

    @property
    def settled(self) -> bool:
        return settled(self.status)

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS


def settled(status: str) -> bool:
    """Whether CloudFormation is done with the stack for now (no *_IN_PROGRESS)."""
    return status.endswith(("_COMPLETE", "_FAILED")) and not status.endswith("CLEANUP_IN_PROGRESS")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"cluster name {name!r}: expected a letter then up to 59 letters, digits or "
            "hyphens (it names the stack and its queue, table and group)"
        )
    return name


def interrupts_head_node(deployed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether an update changes the head node itself (its user data: stop and start)."""
    before = deployed.get("Resources", {}).get(template.HEAD_NODE)
    return before is not None and before != wanted["Resources"][template.HEAD_NODE]


def config_change(deployed: dict[str, Any], wanted: dict[str, Any]) -> Change:
    """What the head node restarts for the update's node.toml (unfilled, both sides)."""

    def node_toml(rendered: dict[str, Any]) -> dict[str, Any]:
        resource = rendered.get("Resources", {}).get("HeadNodeConfig")
        return tomllib.loads(resource["Properties"]["Value"]["Fn::Sub"]) if resource else {}

    before = node_toml(deployed)
    return affected(before, node_toml(wanted)) if before else Change()


def failures(events: Sequence[dict[str, Any]]) -> tuple[Failure, ...]:
    """The resources that failed, oldest first, each once with its first reason."""
    seen: dict[str, Failure] = {}
    for event in sorted(events, key=lambda e: e["Timestamp"]):
        status = event.get("ResourceStatus", "")
        logical_id = event.get("LogicalResourceId", "")
        if not status.endswith("_FAILED") or logical_id in seen:
            continue
        if event.get("ResourceType") == "AWS::CloudFormation::Stack":
            continue
        seen[logical_id] = Failure(
            logical_id,
            event.get("ResourceType", ""),
            status,
            event.get("ResourceStatusReason", ""),
        )
    return tuple(seen.values())


async def caller_account(aws: Aws) -> str:
    """The id of the account whose credentials make the calls."""
    return str((await aws.call("sts", "get_caller_identity"))["Account"])


class Launcher:
    def __init__(self, aws: Aws, region: str, console: Console, *, poll_s: float = 5.0) -> None:
        self._aws = aws
        self._region = region
        self._console = console
        self._poll_s = poll_s

    async def create(
        self, name: str, cluster: ClusterConfig, *, rollback: bool = True
    ) -> StackView:
        check_name(name)
        url = await self.upload(name, cluster)
        response = await self._aws.call(
            "cloudformation",
            "create_stack",
            StackName=name,
            TemplateURL=url,
            Parameters=template.parameters(cluster, await self._subnet_cidr(cluster)),
            Capabilities=["CAPABILITY_IAM"],
            OnFailure="ROLLBACK" if rollback else "DO_NOTHING",
            Tags=[{"Key": TAG, "Value": __version__}],
        )
        self._console.print(f"[bold]creating[/] {name} ({response['StackId']})")
        return await self.watch(response["StackId"], seen=set())

    async def update(self, name: str, cluster: ClusterConfig) -> StackView:
        check_name(name)
        current = await self.describe(name)
        if current is None:
            raise AwsError("cloudformation", "update_stack", "ValidationError", f"no stack {name}")
        seen = {e["EventId"] for e in await self._events(current.stack_id)}
        deployed, wanted = await self.deployed_template(name), template.render(cluster)
        if interrupts_head_node(deployed, wanted):
            self._console.print(
                "[yellow]warning:[/] this changes the head node itself: CloudFormation "
                "replaces or stops and starts it to apply it"
            )
        change = config_change(deployed, wanted)
        if change:
            self._console.print(
                f"node.toml changes ({', '.join(change.sections)}): this {change.describe()}"
            )
        url = await self.upload(name, cluster)
        try:
            await self._aws.call(
                "cloudformation",
                "update_stack",
                StackName=current.stack_id,
                TemplateURL=url,
                Parameters=template.parameters(cluster, await self._subnet_cidr(cluster)),
                Capabilities=["CAPABILITY_IAM"],
                Tags=[{"Key": TAG, "Value": __version__}],
            )
        except AwsError as exc:
            if "No updates are to be performed" in str(exc):
                self._console.print(f"{name}: nothing to change")
                return current
            raise
        self._console.print(f"[bold]updating[/] {name}")
        return await self.watch(current.stack_id, seen=seen)

    async def delete(self, name: str) -> StackView | None:
        """Delete the stack; None: it was already gone, which is what was asked."""
        current = await self.describe(name)
        if current is None:
            self._console.print(f"{name}: no such stack, nothing to delete")
            return None
        seen = {e["EventId"] for e in await self._events(current.stack_id)}
        await self._aws.call("cloudformation", "delete_stack", StackName=current.stack_id)
        self._console.print(f"[bold]deleting[/] {name}")
        return await self.watch(current.stack_id, seen=seen)

    async def deployed_template(self, name: str) -> dict[str, Any]:
        response = await self._aws.call("cloudformation", "get_template", StackName=name)
        body = response["TemplateBody"]
        # The SDK hands a JSON template over already parsed, other bodies as text.
        parsed: dict[str, Any] = json.loads(body) if isinstance(body, str) else body
        return parsed

    async def head_node_id(self, name: str) -> str:
        resource = await self._aws.call(
            "cloudformation",
            "describe_stack_resource",
            StackName=name,
            LogicalResourceId=template.HEAD_NODE,
        )
        instance_id: str = resource["StackResourceDetail"]["PhysicalResourceId"]
        return instance_id

    async def node_config(self, name: str) -> str:
        """The node.toml the stack holds for its head node, as filled in."""
        parameter = protocol.config_parameter(check_name(name))
        response = await self._aws.call("ssm", "get_parameter", Name=parameter)
        text: str = response["Parameter"]["Value"]
        return text

    async def describe(self, name_or_id: str) -> StackView | None:
        stack = await self._stack(name_or_id)
        if stack is None:
            return None
        return _view(stack, failures(await self._events(stack["StackId"])))

    async def _stack(self, name_or_id: str) -> dict[str, Any] | None:
        try:
            response = await self._aws.call(
                "cloudformation", "describe_stacks", StackName=name_or_id
            )
        except AwsError as exc:
            if exc.code == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        stacks: list[dict[str, Any]] = response.get("Stacks", [])
        return stacks[0] if stacks else None

    async def clusters(self) -> list[StackView]:
        return [
            _view(stack, ())
            async for page in self._aws.pages("cloudformation", "describe_stacks")
            for stack in page.get("Stacks", [])
            if any(tag["Key"] == TAG for tag in stack.get("Tags", []))
        ]

    async def watch(self, stack_id: str, *, seen: set[str]) -> StackView:
        """Print the stack's new events as they come, until it settles."""
        started = asyncio.get_running_loop().time()
        with self._console.status("waiting for CloudFormation") as spinner:
            while True:
                # The stack first, then its events: the last events before it settled
                # are printed too.
                stack = await self._stack(stack_id)
                events = await self._events(stack_id)
                for event in sorted(events, key=lambda e: e["Timestamp"]):
                    if event["EventId"] not in seen:
                        seen.add(event["EventId"])
                        self._console.print(_event_line(event))
                if stack is None:
                    return StackView(stack_id, stack_id, "DELETE_COMPLETE")
                view = _view(stack, failures(events))
                if view.settled:
                    return view
                elapsed = asyncio.get_running_loop().time() - started
                spinner.update(f"{view.status} ({elapsed:.0f} s)")
                await asyncio.sleep(self._poll_s)

    async def upload(self, name: str, cluster: ClusterConfig) -> str:
        """Put the rendered template in the region's bucket; return its URL.

        The bucket's name is predictable, so someone else may own a bucket of that name:
        every call to it says whose it must be (ExpectedBucketOwner), and CreateStack
        only ever reads a template this account wrote.
        """
        body = template.to_json(template.render(cluster)).encode()
        account = await caller_account(self._aws)
        bucket = cluster.cluster.template_bucket or f"cfncluster-node-{account}-{self._region}"
        await self._ensure_bucket(bucket, account)
        key = f"{name}/template-{hashlib.sha256(body).hexdigest()[:16]}.json"
        await self._aws.call(
            "s3",
            "put_object",
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            ExpectedBucketOwner=account,
        )
        return f"https://{bucket}.s3.{self._region}.amazonaws.com/{key}"

    async def _subnet_cidr(self, cluster: ClusterConfig) -> str:
        """The compute subnet's CIDR, which the head node exports the shared volumes to."""
        subnet = cluster.network.subnet_id
        found = await self._aws.call("ec2", "describe_subnets", SubnetIds=[subnet])
        [described] = found["Subnets"]
        return str(described["CidrBlock"])

    async def _ensure_bucket(self, bucket: str, account: str) -> None:
        taken = ConfigError(
            f"s3://{bucket} belongs to another account than this one ({account}), or this "
            "account may not use it: name a bucket of your own with key "
            "'cluster.template_bucket'"
        )
        try:
            await self._aws.call("s3", "head_bucket", Bucket=bucket, ExpectedBucketOwner=account)
            return
        except AwsError as exc:
            if exc.code in ("403", "AccessDenied", "Forbidden"):
                raise taken from None
            if exc.code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        location = (
            {}
            if self._region == "us-east-1"
            else {"CreateBucketConfiguration": {"LocationConstraint": self._region}}
        )
        try:
            await self._aws.call("s3", "create_bucket", Bucket=bucket, **location)
        except AwsError as exc:
            if exc.code == "BucketAlreadyExists":  # someone else's, made meanwhile
                raise taken from None
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
        self._console.print(f"created template bucket s3://{bucket}")

    async def _events(self, stack_id: str) -> list[dict[str, Any]]:
        return [
            event
            async for page in self._aws.pages(
                "cloudformation", "describe_stack_events", StackName=stack_id
            )
            for event in page.get("StackEvents", [])
        ]


def _view(stack: dict[str, Any], found: tuple[Failure, ...]) -> StackView:
    return StackView(
        name=stack["StackName"],
        stack_id=stack["StackId"],
        status=stack["StackStatus"],
        reason=stack.get("StackStatusReason", ""),
        outputs={o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        failures=found,
    )


def _event_line(event: dict[str, Any]) -> str:
    status = event.get("ResourceStatus", "")
    colour = (
        "red"
        if "FAILED" in status or "ROLLBACK" in status
        else ("green" if status.endswith("COMPLETE") else "yellow")
    )
    stamp: datetime = event["Timestamp"]
    reason = event.get("ResourceStatusReason") or ""
    return (
        f"{stamp:%H:%M:%S} [{colour}]{status:<22}[/] {event.get('LogicalResourceId', '')}"
        f" [dim]{event.get('ResourceType', '')}[/]" + (f"  {reason}" if reason else "")
    )


def report(console: Console, view: StackView) -> None:
    """The outcome: the outputs when it worked, each failed resource and why when not."""
    colour = "green" if view.ok else ("red" if view.settled else "yellow")
    console.print(
        f"{view.name}: [{colour}]{view.status}[/]" + (f" ({view.reason})" if view.reason else "")
    )
    if view.outputs:
        table = Table(show_header=False, box=None)
        for key, value in sorted(view.outputs.items()):
            table.add_row(f"[bold]{key}[/]", value)
        console.print(table)
    for failure in view.failures:
        console.print(
            f"[red]failed:[/] {failure.logical_id} ({failure.resource_type}): {failure.reason}"
        )


def listing(views: Sequence[StackView]) -> Table:
    table = Table("cluster", "status", "head node")
    for view in sorted(views, key=lambda v: v.name):
        table.add_row(
            view.name,
            view.status,
            view.outputs.get("HeadNodePublicIp") or view.outputs.get("HeadNodePrivateIp", "-"),
        )
    return table
