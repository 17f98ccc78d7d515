"""Slurm (22.05 and later): compute hosts are dynamic nodes, created and deleted live.

A batch of hosts costs a few ``scontrol`` calls whatever its size: one ``create`` per slot
count, one address update, one ``resume``; removal drains, downs and deletes with one
hostlist each. slurmctld is never reconfigured or restarted (``scontrol reconfigure``
after a create or delete can kill a 22.05 slurmctld). slurm.conf must allow dynamic
nodes (``MaxNodeCount``) and map the feature to partitions with a ``Nodeset``.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cfncluster_node import commands
from cfncluster_node.config import SlurmSettings
from cfncluster_node.names import short_hostname
from cfncluster_node.schedulers import (
    Holdup,
    Host,
    HostsRefused,
    HostStatus,
    Jobs,
    PendingJob,
    SchedulerError,
    checked_hostnames,
)
from cfncluster_node.schedulers.hostlist import compress

_UNAVAILABLE = frozenset({"DRAIN", "DOWN", "FUTURE", "FAIL", "MAINT", "NOT_RESPONDING"})
# Why this backend takes a node out before deleting it. A node left drained with this
# reason is a delete cut short; a join for its name finishes the job by resuming it.
# Any other drain (an admin's, scale-in's) outlives a replayed join.
_REMOVING = "cfncluster-node: instance gone"
_BUSY = frozenset({"ALLOCATED", "MIXED", "COMPLETING"})
_HOLDUPS = {
    "JobHeldUser": Holdup.HELD,
    "JobHeldAdmin": Holdup.HELD,
    "Dependency": Holdup.DEPENDENCY,
    "DependencyNeverSatisfied": Holdup.DEPENDENCY,
    "Licenses": Holdup.LICENSES,
    "BeginTime": Holdup.BEGIN_TIME,
    "Reservation": Holdup.RESERVATION,
}
# One squeue for the whole queue: id, state, nodes, CPUs, reason, dependency, priority.
_JOB_FORMAT = "%i|%T|%D|%C|%r|%E|%Q"


@dataclass(frozen=True)
class _Node:
    name: str
    cpus: int
    address: str
    flags: frozenset[str]
    features: frozenset[str]
    last_busy: datetime | None
    reason: str = ""

    @property
    def needs_resume(self) -> bool:
        """Created but never resumed, or taken out by a delete that did not finish."""
        return "FUTURE" in self.flags or (
            bool(self.flags & {"DRAIN", "DOWN"}) and self.reason.startswith(_REMOVING)
        )


def parse_nodes(text: str) -> list[_Node]:
    """Parse ``scontrol -o show node``: one node a line, ``Key=value`` pairs.

    Only the fields needed here, found by position: a regex over every field costs about
    60 ms of CPU per 1,000 nodes, and this runs for every batch. Each is found at its
    first occurrence, which comes before the free-text fields (Reason, Comment) at the
    end of the line.
    """
    nodes = []
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        name = _field(line, "NodeName")
        nodes.append(
            _Node(
                name=name,
                cpus=int(_field(line, "CPUTot") or 0),
                address=_field(line, "NodeAddr") or name,
                flags=frozenset(_field(line, "State").upper().split("+")) - {""},
                features=frozenset(_field(line, "AvailableFeatures").split(",")) - {"(null)", ""},
                last_busy=_local_time(_field(line, "LastBusyTime")),
                reason=_reason(line),
            )
        )
    return nodes


def _local_time(text: str) -> datetime | None:
    """Slurm prints times in slurmctld's local time zone, without saying which."""
    try:
        return datetime.fromisoformat(text).astimezone()
    except ValueError:
        return None  # "None", "Unknown"


def _reason(line: str) -> str:
    """The free-text Reason (it holds spaces), without the ``[user@time]`` Slurm adds."""
    found = line.find(" Reason=")
    if found < 0:
        return ""
    return line[found + len(" Reason=") :].split(" [", 1)[0]


def _field(line: str, key: str) -> str:
    marker = f"{key}="
    if line.startswith(marker):
        start = len(marker)
    else:
        found = line.find(f" {marker}")
        if found < 0:
            return ""
        start = found + 1 + len(marker)
    end = line.find(" ", start)
    return line[start:] if end < 0 else line[start:end]


class Slurm:
    name = "slurm"

    def __init__(self, settings: SlurmSettings) -> None:
        self._settings = settings
        self._env = {"SLURM_CONF": str(settings.conf)} if settings.conf else None
        # slurmctld runs here, on the head node: never a compute node.
        self._head = short_hostname(socket.gethostname())

    def _program(self, name: str) -> str:
        return str(self._settings.bin_dir / name) if self._settings.bin_dir else name

    async def _run(self, program: str, *args: str) -> str:
        try:
            result = await commands.run(
                [self._program(program), *args],
                timeout=self._settings.command_timeout,
                env=self._env,
            )
        except commands.CommandError as exc:
            raise SchedulerError(str(exc)) from exc
        return result.stdout

    async def _nodes(self) -> dict[str, _Node]:
        # -F: nodes still in FUTURE state (a create whose resume never ran) are listed too.
        text = await self._run("scontrol", "-o", "-F", "show", "node")
        return {node.name: node for node in parse_nodes(text)}

    async def list_hosts(self) -> list[HostStatus]:
        return [
            HostStatus(
                hostname=node.name,
                slots=node.cpus,
                address=node.address,
                state="+".join(sorted(node.flags)).lower(),
                available=not node.flags & _UNAVAILABLE,
                busy=bool(node.flags & _BUSY),
                idle_since=None if node.flags & _BUSY else node.last_busy,
                reason=node.reason or None,
            )
            for node in (await self._nodes()).values()
            if self._settings.feature in node.features
        ]

    def _refuse_others(self, hostnames: Iterable[str], current: dict[str, _Node]) -> None:
        """HostsRefused for any name that is not a compute node of the cluster's: the head
        node, or a node slurm.conf defines (static) or that lacks the feature."""
        feature = self._settings.feature
        refused = {
            name: "the head node"
            if name == self._head
            else f"a node without the {feature!r} feature (a static node?)"
            for name in hostnames
            if name == self._head or (name in current and feature not in current[name].features)
        }
        if refused:
            raise HostsRefused(refused)

    async def _compute_nodes(self, hostnames: Sequence[str]) -> dict[str, _Node]:
        """Every node, once ``hostnames`` are known to be compute nodes."""
        current = await self._nodes()
        self._refuse_others(hostnames, current)
        return current

    async def add_hosts(self, hosts: Sequence[Host]) -> None:
        checked_hostnames(host.hostname for host in hosts)
        wanted = {host.hostname: host for host in hosts}
        if not wanted:
            return
        current = await self._compute_nodes(list(wanted))
        resized = [n for n, h in wanted.items() if n in current and current[n].cpus != h.slots]
        if resized:
            await self._delete(resized, current, reason="cfncluster-node: slot count changed")
            for name in resized:
                del current[name]
        missing = [h for n, h in wanted.items() if n not in current]
        by_slots: dict[int, list[str]] = defaultdict(list)
        for host in missing:
            by_slots[host.slots].append(host.hostname)
        for slots, names in sorted(by_slots.items()):
            await self._run(
                "scontrol",
                "create",
                f"NodeName={','.join(names)} CPUs={slots} State=FUTURE "
                f"Features={self._settings.feature}",
            )
        readdressed = [
            h
            for n, h in wanted.items()
            if h.address and (n not in current or current[n].address != h.address)
        ]
        if readdressed:
            await self._run(
                "scontrol",
                "update",
                f"NodeName={','.join(h.hostname for h in readdressed)}",
                f"NodeAddr={','.join(str(h.address) for h in readdressed)}",
            )
        resume = [h.hostname for h in missing] + [
            n for n in wanted if n in current and current[n].needs_resume
        ]
        if resume:
            await self._run("scontrol", "update", f"NodeName={compress(resume)}", "State=RESUME")

    async def drain_hosts(self, hostnames: Sequence[str], reason: str) -> None:
        hostnames = checked_hostnames(hostnames)
        if hostnames:
            await self._compute_nodes(hostnames)
            await self._run(
                "scontrol",
                "update",
                f"NodeName={compress(hostnames)}",
                "State=DRAIN",
                f"Reason={reason}",
            )

    async def resume_hosts(self, hostnames: Sequence[str]) -> None:
        hostnames = checked_hostnames(hostnames)
        if hostnames:
            await self._compute_nodes(hostnames)
            await self._run("scontrol", "update", f"NodeName={compress(hostnames)}", "State=RESUME")

    async def remove_hosts(self, hostnames: Sequence[str]) -> None:
        hostnames = checked_hostnames(hostnames)
        if not hostnames:
            return
        current = await self._compute_nodes(hostnames)
        await self._delete(hostnames, current, reason=_REMOVING)

    async def _delete(
        self, hostnames: Sequence[str], current: dict[str, _Node], *, reason: str
    ) -> None:
        present = [n for n in dict.fromkeys(hostnames) if n in current]
        if not present:
            return
        # FUTURE nodes run nothing and refuse state changes: delete them as they are.
        running = [n for n in present if "FUTURE" not in current[n].flags]
        if running:
            expression = compress(running)
            # Drain first so nothing new lands, then down so the jobs of a vanished
            # instance are requeued now rather than after SlurmdTimeout.
            for state in ("DRAIN", "DOWN"):
                await self._run(
                    "scontrol",
                    "update",
                    f"NodeName={expression}",
                    f"State={state}",
                    f"Reason={reason}",
                )
        await self._run("scontrol", "delete", f"NodeName={compress(present)}")

    async def jobs(self) -> Jobs:
        text = await self._run("squeue", "-h", "-r", "-t", "PD,R,CG", "-o", _JOB_FORMAT)
        return parse_jobs(text)


def parse_jobs(text: str) -> Jobs:
    pending = []
    running = 0
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != 7:
            continue
        job_id, state, nodes, cpus, reason, dependency, priority = fields
        if state != "PENDING":
            running += 1
            continue
        holdup = _HOLDUPS.get(reason, Holdup.NONE)
        if priority == "0":
            holdup = Holdup.HELD
        elif holdup is Holdup.NONE and dependency not in ("", "(null)"):
            # A job waiting on another shows the other's reason first.
            holdup = Holdup.DEPENDENCY
        pending.append(PendingJob(job_id, int(nodes or 1), int(cpus or 1), holdup))
    return Jobs(pending, running)
