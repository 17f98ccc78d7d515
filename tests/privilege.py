"""Least privilege, checked: every AWS call the code makes against the template's policies.

``Recorder`` listens to ``aws.observers`` and attributes each call to the role that would
make it in a cluster, from the project modules on the call's stack: the outermost one
with a role wins (a test driving ``scalein`` that calls ``group`` is the head node; the
demo's fleet simulator calling ``group`` is playing AWS, not the head node).

``Policies`` holds the head-node and compute-node statements of a rendered template,
with ``${AWS::StackName}`` as a wildcard, so a call on ``test-queue`` is checked against
``*-queue``. Conditions are checked when the call shows their key (``cloudwatch:namespace``);
conditions on resource tags cannot be seen from a call and are taken as met.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Any

from cfncluster_node.local.cloud import ACCOUNT
from cfncluster_node.stack import policy, template
from cfncluster_node.stack.clusterconfig import ClusterConfig

HEAD = "head node"
COMPUTE = "compute node"
_ROLES = {
    HEAD: "HeadNodeRole",
    COMPUTE: "ComputeRole",
}


def role_of_module(module: str) -> str | None:
    """The role a project module's AWS calls are made with, by the room it lives in."""
    name = module.removeprefix("cfncluster_node.")
    if name in ("node.announce", "node.compute"):
        return COMPUTE
    if name.startswith(("node.", "storage.")):
        return HEAD
    # Not roles of the stack: the operator's own credentials, and what plays AWS here.
    if name.startswith("stack."):
        return "operator"
    if name.startswith("local."):
        return "harness"
    return None


_ANY_ID = "00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class Call:
    role: str
    action: str
    resources: tuple[str, ...]  # empty: the call names none the recorder can see
    context: tuple[tuple[str, str], ...] = ()
    caller: str = ""

    def __str__(self) -> str:
        return f"{self.caller} ({self.role}) calls {self.action} on {list(self.resources) or '*'}"


def role_of_stack() -> tuple[str, str] | None:
    """(role, module) of the outermost project module with a role on the caller's stack."""
    found = None
    frame = sys._getframe(2)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        role = role_of_module(module) if module.startswith("cfncluster_node.") else None
        if role is not None:
            found = (role, module)
        frame = frame.f_back  # type: ignore[assignment]
    return found


def resources_of(region: str, service: str, params: dict[str, Any]) -> tuple[str, ...]:
    here = f"{region}:{ACCOUNT}"
    match service:
        case "sqs":
            name = params.get("QueueName") or str(params.get("QueueUrl", "")).rsplit("/", 1)[-1]
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
            return (f"arn:aws:cloudformation:{here}:stack/{params['StackName']}/{_ANY_ID}",)
    return ()


def context_of(service: str, params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if service == "cloudwatch" and "Namespace" in params:
        return (("cloudwatch:namespace", params["Namespace"]),)
    return ()


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    def __call__(self, region: str, service: str, api: str, params: dict[str, Any]) -> None:
        found = role_of_stack()
        if found is None or found[0] not in _ROLES:
            return  # the test, the operator or the demo, playing a compute node or AWS
        role, module = found
        self.calls.append(
            Call(
                role,
                policy.iam_action(service, api),
                resources_of(region, service, params),
                context_of(service, params),
                module,
            )
        )


def _resolve(value: Any, region: str) -> Any:
    """A policy's intrinsics with the stack name as a wildcard."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        text: str = value["Fn::Sub"]
        for name, concrete in {
            "${AWS::StackName}": "*",
            "${AWS::Region}": region,
            "${AWS::AccountId}": ACCOUNT,
            "${AWS::Partition}": "aws",
        }.items():
            text = text.replace(name, concrete)
        return text
    if isinstance(value, dict):
        return {key: _resolve(item, region) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, region) for item in value]
    return value


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Policies:
    statements: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, cluster: ClusterConfig, region: str) -> Policies:
        resources = template.render(cluster)["Resources"]
        return cls(
            {
                role: [
                    _resolve(statement, region)
                    for document in resources[logical_id]["Properties"]["Policies"]
                    for statement in document["PolicyDocument"]["Statement"]
                ]
                for role, logical_id in _ROLES.items()
            }
        )

    def allows(self, call: Call) -> bool:
        return any(_matches(statement, call) for statement in self.statements.get(call.role, []))

    def actions(self, role: str) -> set[str]:
        return {a for s in self.statements[role] for a in _listed(s["Action"])}


def _matches(statement: dict[str, Any], call: Call) -> bool:
    if statement["Effect"] != "Allow":
        return False
    if not any(fnmatch.fnmatchcase(call.action, a) for a in _listed(statement["Action"])):
        return False
    patterns = _listed(statement["Resource"])
    if not all(any(fnmatch.fnmatchcase(r, p) for p in patterns) for r in call.resources):
        return False
    known = dict(call.context)
    for operator, tests in statement.get("Condition", {}).items():
        for key, expected in tests.items():
            if key in known and operator == "StringEquals" and known[key] not in _listed(expected):
                return False
    return True
