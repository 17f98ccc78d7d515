"""Least privilege, checked: every AWS call the code makes against the template's policies.

``Recorder`` listens to ``aws.observers`` and attributes each call to the role that would
make it in a cluster, from the project modules on the call's stack: the outermost one
with a role wins (a test driving ``scalein`` that calls ``group`` is the head node). The
playground (``local/``) is skipped on the way: the demo playing the head node through
``readiness`` is the head node, while a call the playground makes itself (moto's
fixtures, the fleet simulator's notifications) plays AWS and is no role's. A call made by
a project module that has no role is a failure of its own: nothing goes unchecked.

``Policies`` holds the statements of a rendered template: each role's inline policy, the
policies attached to it (the jobs' S3 access), and the operator's (``policy.operator``).
A call is allowed when, with ``${AWS::StackName}`` the name of the test's stack (``test``,
the ``cluster`` fixture's, unless the test's ``privilege`` marker names another), some
statement allows its action on every resource it names. A call that names no resource
needs a statement on ``"*"``. Conditions are evaluated: ``cloudwatch:namespace`` from the call, and
``aws:ResourceTag/...`` against the tags the resources really carry in moto, looked up
once the test is over (``resolve_tags``). A condition the checker cannot evaluate is not
met.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cfncluster_node.local.cloud import ACCOUNT
from cfncluster_node.stack import policy, template
from cfncluster_node.stack.clusterconfig import ClusterConfig

HEAD = "head node"
COMPUTE = "compute node"
OPERATOR = "operator"
UNATTRIBUTED = "no role"
_ROLES = {HEAD: "HeadNodeRole", COMPUTE: "ComputeRole"}


def role_of_module(module: str) -> str | None:
    """The role a project module's AWS calls are made with, by the room it lives in."""
    name = module.removeprefix("cfncluster_node.")
    if name in ("node.announce", "node.compute"):
        return COMPUTE
    if name.startswith(("node.", "storage.")):
        return HEAD
    if name.startswith("stack."):
        return OPERATOR
    return None


_ANY_ID = "00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class Call:
    role: str
    action: str
    resources: tuple[str, ...]  # empty: the call names none (it needs a "*" statement)
    context: tuple[tuple[str, str], ...] = ()
    caller: str = ""
    #: Each resource's tags, once looked up (resolve_tags); ARN -> tags.
    tags: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def __str__(self) -> str:
        return f"{self.caller} ({self.role}) calls {self.action} on {list(self.resources) or '*'}"


def role_of_stack() -> tuple[str, str] | None:
    """(role, module) for the call being made, or None when no product code makes it (a
    test, or the playground playing AWS)."""
    found = None
    unattributed = None
    frame = sys._getframe(2)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith("cfncluster_node.") and not module.startswith(
            ("cfncluster_node.local.", "cfncluster_node.aws")
        ):
            role = role_of_module(module)
            if role is not None:
                found = (role, module)
            elif unattributed is None:
                unattributed = (UNATTRIBUTED, module)
        frame = frame.f_back  # type: ignore[assignment]
    return found or unattributed


def resources_of(region: str, service: str, params: dict[str, Any]) -> tuple[str, ...]:
    here = f"{region}:{ACCOUNT}"
    match service:
        case "sqs" if "QueueName" in params or "QueueUrl" in params:
            name = params.get("QueueName") or str(params["QueueUrl"]).rsplit("/", 1)[-1]
            return (f"arn:aws:sqs:{here}:{name}",)
        case "dynamodb":
            tables = (
                [params["TableName"]] if "TableName" in params else params.get("RequestItems", {})
            )
            return tuple(f"arn:aws:dynamodb:{here}:table/{t}" for t in tables)
        case "autoscaling" if "AutoScalingGroupName" in params:
            name = params["AutoScalingGroupName"]
            return (
                f"arn:aws:autoscaling:{here}:autoScalingGroup:{_ANY_ID}:autoScalingGroupName/{name}",
            )
        case "ec2" if "VolumeId" in params:
            return (
                f"arn:aws:ec2:{here}:volume/{params['VolumeId']}",
                f"arn:aws:ec2:{here}:instance/{params['InstanceId']}",
            )
        case "ssm" if "Name" in params:
            return (f"arn:aws:ssm:{here}:parameter{params['Name']}",)
        case "secretsmanager" if "SecretId" in params:
            return (str(params["SecretId"]),)
        case "cloudformation" if "StackName" in params:
            stack = str(params["StackName"])
            if stack.startswith("arn:"):
                return (stack,)
            return (f"arn:aws:cloudformation:{here}:stack/{stack}/{_ANY_ID}",)
        case "s3" if "Bucket" in params:
            bucket = params["Bucket"]
            if "Key" in params:
                return (f"arn:aws:s3:::{bucket}/{params['Key']}",)
            return (f"arn:aws:s3:::{bucket}",)
    return ()


def context_of(service: str, params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if service == "cloudwatch" and "Namespace" in params:
        return (("cloudwatch:namespace", params["Namespace"]),)
    return ()


TagLookup = Callable[[list[str]], Mapping[str, Mapping[str, str]]]


@dataclass
class Recorder:
    """tags: reads EC2 resources' tags, for the Auto Scaling calls that name only an
    instance (AWS authorizes them on its group, which its tag names): read at once, as
    the instance leaves its group when the call is done."""

    tags: TagLookup
    calls: list[Call] = field(default_factory=list)

    def __call__(self, region: str, service: str, api: str, params: dict[str, Any]) -> None:
        found = role_of_stack()
        if found is None:
            return  # a test, or the playground playing AWS
        role, module = found
        if service == "autoscaling" and "InstanceId" in params:
            instance = params["InstanceId"]
            group = self.tags([instance]).get(instance, {}).get("aws:autoscaling:groupName")
            params = {"AutoScalingGroupName": group or "no-group", **params}
        self.calls.append(
            Call(
                role,
                policy.iam_action(service, api),
                resources_of(region, service, params),
                context_of(service, params),
                module,
            )
        )


def resolve_tags(calls: Iterable[Call], lookup: TagLookup) -> list[Call]:
    """The calls with the tags of their EC2 resources (the only ones a condition reads)."""
    calls = list(calls)
    ids = sorted(
        {r.rsplit("/", 1)[-1] for c in calls for r in c.resources if r.startswith("arn:aws:ec2:")}
    )
    tags = lookup(ids) if ids else {}
    return [
        replace(
            call,
            tags=tuple(
                (r, tuple(sorted(tags.get(r.rsplit("/", 1)[-1], {}).items())))
                for r in call.resources
                if r.startswith("arn:aws:ec2:")
            ),
        )
        for call in calls
    ]


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(resources: Mapping[str, Any], logical_id: str) -> list[dict[str, Any]]:
    """A role's statements as the template gives them: inline, and attached."""
    inline = [
        statement
        for document in resources[logical_id]["Properties"].get("Policies", [])
        for statement in document["PolicyDocument"]["Statement"]
    ]
    attached = [
        statement
        for resource in resources.values()
        if resource["Type"] == "AWS::IAM::Policy"
        and {"Ref": logical_id} in resource["Properties"]["Roles"]
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]
    return inline + attached


@dataclass(frozen=True)
class Policies:
    """Each role's statements, with ``${...}`` intrinsics still in them."""

    statements: dict[str, list[dict[str, Any]]]
    region: str

    @classmethod
    def of(cls, cluster: ClusterConfig, region: str) -> Policies:
        resources = template.render(cluster)["Resources"]
        roles = {
            role: role_statements(resources, logical_id) for role, logical_id in _ROLES.items()
        }
        roles[OPERATOR] = policy.operator_statements(cluster)
        return cls(roles, region)

    def for_stack(self, role: str, stack: str) -> list[dict[str, Any]]:
        statements = self.statements.get(role, [])
        found: list[dict[str, Any]] = policy.resolved(
            statements, stack=stack, region=self.region, account=ACCOUNT
        )
        return found

    def allows(self, call: Call, stack: str) -> bool:
        """Whether ``stack``'s policies let the call's role make it."""
        return any(_matches(statement, call) for statement in self.for_stack(call.role, stack))

    def actions(self, role: str) -> set[str]:
        return {a for s in self.statements[role] for a in listed(s["Action"])}


def _matches(statement: dict[str, Any], call: Call) -> bool:
    if statement["Effect"] != "Allow":
        return False
    if not any(fnmatch.fnmatchcase(call.action, a) for a in listed(statement["Action"])):
        return False
    patterns = listed(statement["Resource"])
    if not call.resources:
        if "*" not in patterns:
            return False
    elif not all(any(fnmatch.fnmatchcase(r, p) for p in patterns) for r in call.resources):
        return False
    return all(
        _condition_met(operator, key, expected, call)
        for operator, tests in statement.get("Condition", {}).items()
        for key, expected in tests.items()
    )


def _condition_met(operator: str, key: str, expected: Any, call: Call) -> bool:
    wanted = [str(value) for value in listed(expected)]
    if operator not in ("StringEquals", "StringLike"):
        return False

    def holds(value: str | None) -> bool:
        if value is None:
            return False
        if operator == "StringEquals":
            return value in wanted
        return any(fnmatch.fnmatchcase(value, pattern) for pattern in wanted)

    if key.startswith("aws:ResourceTag/"):
        tag = key.removeprefix("aws:ResourceTag/")
        tagged = dict(call.tags)
        # Every resource of the request is checked; each must carry the tag.
        return bool(call.resources) and all(
            holds(dict(tagged.get(resource, ())).get(tag)) for resource in call.resources
        )
    return holds(dict(call.context).get(key))
