"""Every policy the project generates, through the field's own IAM tooling.

Each policy is rendered for a stack (``c1`` in us-east-1 of the tests' account) and:
- linted by parliament (duo-labs), whose findings fail the test but for the few named
  below, each with its reason;
- checked against the IAM database policy_sentry ships: every action exists; every
  resource is an ARN of a type one of its statement's actions takes (a typo, or a
  service's resource where another's belongs, fails); ``"*"`` is used only for actions
  that take no resource, or where this file says why; and every condition key is one
  the statement's actions document.

The policies: the head node's and the compute nodes' (with their hooks), the jobs' S3
access, and the operator's for ``launch``.
"""

from __future__ import annotations

import json
import re
import warnings
from functools import cache
from typing import Any

import pytest

from cfncluster_node.stack import policy, template
from cfncluster_node.stack.clusterconfig import ClusterConfig
from tests import privilege
from tests.clusters import HOOKS, cluster_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources' deprecation, in parliament's import
    import parliament
from policy_sentry.querying.actions import get_action_data, get_privilege_info

STACK, REGION = "c1", "us-east-1"
CLUSTER = cluster_config(
    hooks=HOOKS,
    s3_access=[
        {"bucket": "inputs-bucket", "prefix": "runs/", "access": "read-only"},
        {"bucket": "results-bucket", "access": "read-write"},
    ],
    shared_volume={"kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/abcd-ef"},
)

# Where "*" is the resource although the action takes one, and why.
STAR_ALLOWED = {
    # Listing every stack of the region (`launch list`) names none.
    "cloudformation:DescribeStacks",
}


def policies(cluster: ClusterConfig) -> dict[str, list[dict[str, Any]]]:
    """Each generated policy's statements, for the stack ``c1``."""
    resources = template.render(cluster)["Resources"]
    found = {
        "head node": privilege.role_statements(resources, "HeadNodeRole"),
        "compute node": privilege.role_statements(resources, "ComputeRole"),
        "jobs' S3 access": policy.s3_statements(cluster.s3_access),
        "operator": policy.operator_statements(cluster),
    }
    checked = privilege.Policies(found, REGION)
    return {name: checked.for_stack(name, STACK) for name in found}


POLICIES = policies(CLUSTER)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_parliament_finds_nothing_wrong(name: str) -> None:
    document = json.dumps(policy.document(POLICIES[name]), indent=1)

    findings = parliament.analyze_policy_string(document).findings

    problems = [
        f"{finding.issue}: {finding.detail}"
        for finding in findings
        if not (
            finding.issue == "RESOURCE_STAR"
            and set(finding.location.get("actions", [])) <= {a.lower() for a in STAR_ALLOWED}
        )
    ]
    assert problems == []


@cache
def _action(action: str) -> tuple[str, dict[str, re.Pattern[str]], frozenset[str]]:
    """(its canonical name, its resource types' ARN patterns, its condition keys)."""
    service, name = action.split(":", 1)
    data = get_action_data(service.lower(), name).get(service.lower())
    if not data:
        raise AssertionError(f"{action}: no such action in the IAM database")
    canonical = data[0]["action"]
    info = get_privilege_info(service.lower(), canonical.split(":", 1)[1])
    patterns = {
        kind: _arn_pattern(info["service_resources"][kind]["arn"])
        for kind in info["resource_types"]
        if kind
    }
    keys = frozenset(key for entry in data for key in entry["condition_keys"])
    return canonical, patterns, keys


def _arn_pattern(arn_format: str) -> re.Pattern[str]:
    """An ARN format (``arn:${Partition}:sqs:${Region}:${Account}:${QueueName}``) as a
    regex: the partition, region and account within their field, the rest anything."""
    parts = re.split(r"(\$\{[^}]+\})", arn_format)
    regex = "".join(
        "[^:]*"
        if part in ("${Partition}", "${Region}", "${Account}")
        else ".+"
        if part.startswith("${")
        else re.escape(part)
        for part in parts
    )
    return re.compile(regex + r"\Z")


def _sample(resource: str) -> str:
    """One ARN a resource pattern stands for: each wildcard one character."""
    return resource.replace("*", "x").replace("?", "x")


def database_problems(statement: dict[str, Any]) -> list[str]:
    actions = (
        statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    )
    resources = statement["Resource"]
    resources = resources if isinstance(resources, list) else [resources]
    known = {action: _action(action) for action in actions}
    problems = []
    for action, (canonical, patterns, _) in known.items():
        if action != canonical:
            problems.append(f"{action}: IAM spells it {canonical}")
        if not patterns and resources != ["*"]:
            problems.append(f"{action} takes no resource: its statement must name '*'")
        if patterns and "*" in resources and action not in STAR_ALLOWED:
            problems.append(f"{action} takes {sorted(patterns)}: '*' is wider than it needs")
        named = [r for r in resources if r != "*"]
        if (
            patterns
            and named
            and not any(p.match(_sample(r)) for r in named for p in patterns.values())
        ):
            problems.append(f"{action}: none of {named} is a {'/'.join(sorted(patterns))} ARN")
    for resource in (r for r in resources if r != "*"):
        if not any(
            p.match(_sample(resource))
            for _, patterns, _ in known.values()
            for p in patterns.values()
        ):
            problems.append(f"{resource}: an ARN none of {actions} takes")
    for tests in statement.get("Condition", {}).values():
        for key in tests:
            documented = [k for _, _, keys in known.values() for k in keys]
            globs = [re.escape(k).replace(r"\$\{TagKey\}", ".+") for k in documented]
            if not key.startswith("aws:") and not any(re.fullmatch(g, key) for g in globs):
                problems.append(f"condition key {key}: none of {actions} documents it")
    return problems


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_action_and_resource_is_one_iam_knows(name: str) -> None:
    problems = [p for statement in POLICIES[name] for p in database_problems(statement)]

    assert problems == []


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        (
            {"Action": ["sqs:RecieveMessage"], "Resource": ["arn:aws:sqs:us-east-1:1:q"]},
            "no such action",
        ),
        (
            {"Action": ["dynamodb:PutItem"], "Resource": ["arn:aws:dynamodb:us-east-1:1:tabel/t"]},
            "is a table ARN",
        ),
        ({"Action": ["sqs:ReceiveMessage"], "Resource": ["*"]}, "wider than it needs"),
        (
            {
                "Action": ["ec2:DescribeInstances"],
                "Resource": ["arn:aws:ec2:us-east-1:1:instance/i"],
            },
            "takes no resource",
        ),
        (
            {
                "Action": ["sqs:SendMessage"],
                "Resource": ["arn:aws:sqs:us-east-1:1:q"],
                "Condition": {"StringEquals": {"s3:prefix": "x"}},
            },
            "documents it",
        ),
    ],
)
def test_the_check_catches_a_typo_and_an_over_wide_resource(
    statement: dict[str, Any], problem: str
) -> None:
    try:
        found = database_problems({"Effect": "Allow", **statement})
    except AssertionError as exc:
        found = [str(exc)]

    assert any(problem in p for p in found), found
