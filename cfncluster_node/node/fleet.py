"""The compute fleet in plain data, and what pending work asks of it: pure.

The group's view (``Group``, ``Member``), the demand of pending jobs in nodes, and the
counts the publisher puts beside it. The publisher, scale-in and the reconciler decide
with these; ``group`` reads and changes the real group.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cfncluster_node.schedulers import Holdup, HostStatus, PendingJob


@dataclass(frozen=True)
class Member:
    """What the group says of one of its instances."""

    lifecycle: str
    protected: bool


@dataclass(frozen=True)
class Group:
    desired: int
    min_size: int
    max_size: int
    members: dict[str, Member] = field(default_factory=dict)


def node_limit(configured: int | None, members: Group | None) -> int | None:
    """The most nodes a job can get: the configured size, else the group's own maximum
    (read each time, so a resized stack needs no head-node change). A group that is
    missing or cannot grow sets no limit: its jobs are still counted as demand."""
    if configured is not None:
        return configured
    return members.max_size if members is not None and members.max_size > 0 else None


@dataclass(frozen=True)
class Demand:
    nodes: int
    jobs: int
    skipped: dict[str, int] = field(default_factory=dict)  # why -> jobs


@dataclass(frozen=True)
class NodeCounts:
    registered: int
    busy: int
    idle: int


def demand(pending: Iterable[PendingJob], *, slots_per_node: int, max_nodes: int | None) -> Demand:
    """The nodes pending jobs need: the nodes they ask for, or their slots in whole nodes."""
    nodes = jobs = 0
    skipped: Counter[str] = Counter()
    for job in pending:
        needed = max(job.nodes, math.ceil(job.slots / slots_per_node))
        if job.holdup is not Holdup.NONE:
            skipped[job.holdup.value] += 1
        elif max_nodes is not None and needed > max_nodes:
            skipped["larger_than_cluster"] += 1
        else:
            nodes += needed
            jobs += 1
    return Demand(nodes, jobs, dict(skipped))


def slots_per_node(hosts: Sequence[HostStatus], default: int) -> int:
    """What a compute node has: the most common size in the fleet, else the default."""
    sizes = Counter(host.slots for host in hosts if host.slots > 0)
    return sizes.most_common(1)[0][0] if sizes else default


def count_nodes(hosts: Sequence[HostStatus]) -> NodeCounts:
    busy = sum(1 for host in hosts if host.busy)
    idle = sum(1 for host in hosts if not host.busy and host.available)
    return NodeCounts(len(hosts), busy, idle)


def desired_capacity(current: int, max_size: int, busy: int, needed: int) -> int:
    """Direct mode's target: the busy nodes plus the demand, within the group's maximum.

    Never lower than it is: shrinking is idle scale-in's job, node by node, and a
    publisher that lowered the capacity would fight it (and terminate busy nodes).
    """
    return max(current, min(max_size, busy + needed))
