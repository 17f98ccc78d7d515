"""Slurm hostlist expressions: compress() names many hosts in one argument."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfncluster_node.schedulers.hostlist import compress

_PART = re.compile(r"([^,\[]*)(?:\[([^\]]*)\])?(?:,|$)")


def expand(expression: str) -> list[str]:
    """The names a hostlist expression stands for (the subset Slurm and compress() use)."""
    names: list[str] = []
    for match in _PART.finditer(expression):
        prefix, ranges = match.groups()
        if not prefix and ranges is None:
            continue
        if ranges is None:
            names.append(prefix)
            continue
        for bounds in ranges.split(","):
            low, _, high = bounds.partition("-")
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.append(f"{prefix}{number:0{width}d}")
    return names


def test_expand_reads_the_slurm_examples() -> None:
    assert expand("ip-10-0-0-[5,7-9]") == [
        "ip-10-0-0-5",
        "ip-10-0-0-7",
        "ip-10-0-0-8",
        "ip-10-0-0-9",
    ]
    assert expand("node[001-003],login") == ["node001", "node002", "node003", "login"]


@pytest.mark.parametrize(
    ("names", "expression"),
    [
        (["ip-10-0-0-5"], "ip-10-0-0-5"),
        (["ip-10-0-0-5", "ip-10-0-0-7", "ip-10-0-0-8", "ip-10-0-0-9"], "ip-10-0-0-[5,7-9]"),
        (["ip-10-0-0-9", "ip-10-0-0-7", "ip-10-0-0-5", "ip-10-0-0-8"], "ip-10-0-0-[5,7-9]"),
        (["node001", "node002", "node003"], "node[001-003]"),
        (["node009", "node010"], "node[009-010]"),
        (["node1", "node2", "node3"], "node[1-3]"),
        (["node9", "node10", "node11"], "node[9-11]"),
        (["node01", "node1"], "node1,node01"),
        (["ip-10-0-0-5", "ip-10-0-1-5", "ip-10-0-1-6"], "ip-10-0-0-5,ip-10-0-1-[5-6]"),
        (["login", "head", "node1"], "head,login,node1"),
        (["node0", "node00"], "node0,node00"),
        (["node1", "node1", "node2", "node2"], "node[1-2]"),
        (["master", "master"], "master"),
        ([], ""),
    ],
    ids=lambda value: ",".join(value) if isinstance(value, list) else value,
)
def test_compress_names_exactly_the_hosts(names: list[str], expression: str) -> None:
    assert compress(names) == expression
    assert sorted(expand(expression)) == sorted(set(names))


def test_compress_keeps_a_thousand_consecutive_hosts_short() -> None:
    names = [f"ip-10-0-{n // 256}-{n % 256}" for n in range(1000)]

    expression = compress(names)

    assert len(expression) < 200
    assert sorted(expand(expression)) == sorted(names)


hostnames = st.from_regex(r"[a-z]{1,3}(-?[0-9]{1,4})?|[0-9]{1,3}", fullmatch=True)


@given(st.lists(hostnames, max_size=30))
def test_compress_then_expand_gives_back_the_same_hosts(names: list[str]) -> None:
    expression = compress(names)

    expanded = expand(expression)

    assert sorted(expanded) == sorted(set(names))
    assert len(expanded) == len(set(expanded))


@given(st.lists(hostnames, min_size=1, max_size=30))
def test_compress_does_not_depend_on_order_or_duplicates(names: list[str]) -> None:
    assert compress(names) == compress(sorted(set(names), reverse=True))
