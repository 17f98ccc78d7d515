"""The scheduler contract: the few things the head node asks of any batch scheduler.

Every backend registers and removes hosts in batches and is idempotent: adding a host
that is there, or removing one that is not, succeeds and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from cfncluster_node import names


class SchedulerError(Exception):
    """A scheduler command failed; the message says which and why."""


class HostsRefused(SchedulerError):
    """Hosts a backend will not touch, whoever asks: they are not the cluster's compute
    hosts (a static node, the head node). Nothing was done; ``refused`` says why, by name."""

    def __init__(self, refused: Mapping[str, str]) -> None:
        self.refused = dict(refused)
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(self.refused.items()))
        super().__init__(f"not compute hosts of this cluster: {listed}")


def checked_hostnames(hostnames: Iterable[str]) -> list[str]:
    """``hostnames`` without duplicates, in order; SchedulerError if one is not a hostname.

    The messages' parser validates hostnames already; this guards the command line
    against any other caller.
    """
    unique = list(dict.fromkeys(hostnames))
    bad = [name for name in unique if not names.is_hostname(name)]
    if bad:
        raise SchedulerError(f"not a hostname: {', '.join(repr(name)[:80] for name in bad)}")
    return unique


@dataclass(frozen=True)
class Host:
    hostname: str
    slots: int
    address: str | None = None
    instance_id: str | None = None


@dataclass(frozen=True)
class HostStatus:
    hostname: str
    slots: int
    address: str | None
    state: str
    #: False while the host is draining, drained or down: it takes no new work.
    available: bool
    #: Running (or finishing) work.
    busy: bool
    #: Since when an idle host has had nothing to run, if the scheduler knows.
    idle_since: datetime | None = None
    #: Why an unavailable host takes no work, where the scheduler keeps one (Slurm's
    #: Reason; SGE keeps none).
    reason: str | None = None


class Holdup(StrEnum):
    """Why a pending job waits, when more nodes would not make it start."""

    NONE = "none"
    HELD = "held"
    DEPENDENCY = "dependency"
    LICENSES = "licenses"
    BEGIN_TIME = "begin_time"
    RESERVATION = "reservation"


@dataclass(frozen=True)
class PendingJob:
    job_id: str
    nodes: int
    slots: int
    holdup: Holdup


@dataclass(frozen=True)
class Jobs:
    pending: list[PendingJob]
    running: int


class Scheduler(Protocol):
    """Every method touches only the cluster's compute hosts (the backend's feature or
    host group) and raises ``HostsRefused`` for any other name, the head node's included."""

    name: str

    async def add_hosts(self, hosts: Sequence[Host]) -> None: ...

    async def remove_hosts(self, hostnames: Sequence[str]) -> None: ...

    async def drain_hosts(self, hostnames: Sequence[str], reason: str) -> None:
        """Take no new work on these hosts; what runs there runs on."""
        ...

    async def resume_hosts(self, hostnames: Sequence[str]) -> None:
        """Take work again on drained hosts."""
        ...

    async def list_hosts(self) -> list[HostStatus]: ...

    async def jobs(self) -> Jobs: ...
