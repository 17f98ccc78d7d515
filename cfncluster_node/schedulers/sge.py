"""Son of Grid Engine 8.1 (Debian's gridengine packages), driven with qconf, qmod and qstat.

A batch of hosts costs a fixed number of commands whatever its size: ``qconf -ah``,
``-as`` and ``-de``/``-ds``/``-dh`` take comma lists, ``-aattr``/``-dattr hostgroup
hostlist`` a space-separated one, ``qmod`` a list of queue instances, and
``-mattr exechost`` any number of hosts as trailing arguments.

How a host gets its slots: joining the host group, which the queue's hostlist names,
makes the qmaster create its execution host and queue instance; then
``complex_values slots=N`` on that execution host (one ``-mattr`` per distinct slot
count) caps what the scheduler puts on it. The alternative, a ``[host=N]`` override of
the queue's ``slots``, adds in one call too but can only be removed one host per call
(``-purge``; ``-dattr`` and ``-rattr`` leave it in place and exit 0), so stale entries
would pile up in the queue; an execution host's complex goes away with ``-de``. The
queue's own ``slots`` must therefore not be the limit (e.g. ``slots 99999``).

The cell must also have ``ignore_fqdn true`` in its bootstrap, so that hosts go by the
short names the instance table knows. On Debian, ``bin_dir = "/usr/lib/gridengine"``
saves the 70 ms of shell each /usr/bin wrapper spends per call finding the architecture.

qconf and qmod often exit 0 when they failed and 1 when a repeat found nothing to do, so
success is judged from what they print (``judge``), line by line.

SGE keeps no time of a host's last job: ``idle_since`` is when this backend first saw
the host idle, so a restarted head node waits a full idle period before scaling in.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from cfncluster_node import commands, logs
from cfncluster_node.config import SgeSettings
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
    sgeconf,
)

# Names SGE reads as something else than a host: "global" is the execution host whose
# complex values bind the whole cluster, "none" empties a list, "template" is qconf's
# skeleton object.
_RESERVED = frozenset({"global", "none", "template"})
# Debian's SGE_ROOT, where neither [sge] root nor the environment says.
_DEBIAN_ROOT = "/var/lib/gridengine"

# Queue instance states (qstat(1)); each one keeps new jobs off the instance.
_STATES = {
    "a": "alarm",
    "A": "suspend-alarm",
    "u": "unknown",
    "d": "disabled",
    "D": "calendar-disabled",
    "C": "calendar-suspended",
    "s": "suspended",
    "S": "subordinate",
    "E": "error",
    "c": "ambiguous",
    "o": "orphaned",
}


class Expect(Enum):
    """What a repeated change may say instead of doing it, and still have succeeded."""

    PRESENT = "present"
    ABSENT = "absent"


# What qconf and qmod print, line by line. Quoted names are captured so that "already
# exists" and "does not exist" count only for the hosts (or queue instances) a command
# was given, never for the host group or queue it works on.
_DONE = [
    re.compile(r'\S+@\S+ (?:added|modified|removed) "(?P<name>[^"]+)" (?:to|in|from) .+ list'),
    re.compile(r"(?P<name>\S+) added to (?:administrative|submit) host list"),
    re.compile(r'\S+@\S+ changed state of "(?P<name>[^"]+)" \((?:disabled|enabled)\)'),
    re.compile(r'Queue instance "(?P<name>[^"]+)" is already in the specified state: \w+'),
    re.compile(r"Forced rescheduling of job(?:-array task)? (?P<job>\S+) on host (?P<name>\S+)"),
    re.compile(r'"complex_values" of "exechost" is empty - Adding new element\(s\)\.'),
]
_IDEMPOTENT = {
    Expect.PRESENT: [
        re.compile(r'(?:adminhost|submithost) "(?P<name>[^"]+)" already exists'),
        re.compile(
            r'No modification because "(?P<name>[^"]+)" already exists in "hostlist" of '
            r'"hostgroup"'
        ),
    ],
    Expect.ABSENT: [
        re.compile(r'"(?P<name>[^"]+)" does not exist in "hostlist" of "hostgroup"'),
        re.compile(
            r'denied: (?:execution|submit|administrative) host "(?P<name>[^"]+)" does not exist'
        ),
        re.compile(r'invalid queue "(?P<name>[^"]+)"'),
        re.compile(r'"?(?P<name>[^"\s]+)"? is not an execution host'),
    ],
}
_RESCHEDULED = _DONE[4]


def judge(output: str, *, subjects: Collection[str], expect: Expect | None = None) -> list[str]:
    """The lines of a qconf or qmod change that say it failed; none: it succeeded.

    ``subjects``: the hosts or queue instances the command named. ``expect``: the
    answer of a repeat (a host already added, already gone) that is success too, for
    those subjects only. A line not known to mean success is a failure: a new wording
    must be looked at, not taken for granted.
    """
    tolerated = _IDEMPOTENT[expect] if expect else []
    named = {subject.lower() for subject in subjects}
    failed = []
    for line in output.splitlines():
        line = line.strip()
        if not line or any(pattern.fullmatch(line) for pattern in _DONE):
            continue
        match = next((m for p in tolerated if (m := p.fullmatch(line))), None)
        if match is None or match["name"].lower() not in named:
            failed.append(line)
    return failed


@dataclass(frozen=True)
class QueueInstance:
    hostname: str
    used: int
    #: Free slots under the tightest limit (the host's complex or the queue's slots).
    free: int
    flags: str


def parse_queue_xml(text: str, queue_name: str) -> list[QueueInstance]:
    """Parse ``qstat -f -F slots -xml``: the instances of queue ``queue_name``."""
    instances = []
    for queue in _xml(text, "qstat").iter("Queue-List"):
        cluster_queue, _, hostname = queue.findtext("name", "").partition("@")
        if cluster_queue != queue_name or not hostname:
            continue
        used = _int(queue.findtext("slots_used"))
        total = _int(queue.findtext("slots_total"))
        free = total - used - _int(queue.findtext("slots_resv"))
        for resource in queue.iter("resource"):
            if resource.get("name") == "slots":
                free = _int(resource.text)
        instances.append(
            QueueInstance(
                hostname=hostname,
                used=used,
                free=free,
                flags=(queue.findtext("state") or "").strip(),
            )
        )
    return instances


@dataclass(frozen=True)
class SgeJob:
    number: str
    state: str
    #: Slots of one task (of the whole job when it is not an array).
    slots: int
    #: The array tasks this entry stands for, as qstat prints them ("1-5:1"); "": none.
    tasks: str
    pe: str | None
    #: Waiting for other jobs (-hold_jid, -hold_jid_ad).
    predecessors: bool


def parse_jobs_xml(text: str) -> tuple[list[SgeJob], list[SgeJob]]:
    """Parse ``qstat -u '*' -r -xml``: the pending jobs, then the running ones.

    Running jobs (and tasks, one entry each) are under ``queue_info``, pending ones
    under ``job_info``; an entry of pending tasks names a range of them.
    """
    root = _xml(text, "qstat")
    found: dict[str, list[SgeJob]] = {"job_info": [], "queue_info": []}
    for section, jobs in found.items():
        for entry in root.findall(f"{section}/job_list"):
            pe = entry.find("requested_pe")
            jobs.append(
                SgeJob(
                    number=entry.findtext("JB_job_number", "").strip(),
                    state=entry.findtext("state", "").strip(),
                    slots=max(1, _int(entry.findtext("slots"))),
                    tasks=entry.findtext("tasks", "").strip(),
                    pe=pe.get("name") if pe is not None else None,
                    predecessors=any(
                        (child.text or "").strip()
                        for tag in ("predecessor_jobs", "ad_predecessor_jobs")
                        for child in entry.findall(tag)
                    ),
                )
            )
    return found["job_info"], found["queue_info"]


def expand_tasks(tasks: str) -> list[int]:
    """Task ids of a range as qstat prints it: ``1-5:1``, ``2,4-8:2``, ``7``."""
    ids: list[int] = []
    for part in filter(None, tasks.split(",")):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        ids.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return ids


def parse_allocation_rule(text: str) -> int | None:
    """Slots per host of a parallel environment (``qconf -sp``), when it fixes them."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "allocation_rule":
            value = value.strip()
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def pending_jobs(
    jobs: Sequence[SgeJob], *, start_later: Collection[str], slots_per_host: Mapping[str, int]
) -> list[PendingJob]:
    """One PendingJob per job or array task, with why it waits.

    ``start_later``: jobs whose start time (``qsub -a``) is ahead. ``slots_per_host``:
    parallel environments whose allocation rule is a number, which spreads a job over
    several hosts; any other rule ($pe_slots, $fill_up, $round_robin) counts as one
    node and leaves the rest to the slots.
    """
    pending: list[PendingJob] = []
    for job in jobs:
        if "E" in job.state:  # an error state waits for an operator, not for nodes
            holdup = Holdup.HELD
        elif job.predecessors:
            holdup = Holdup.DEPENDENCY
        elif "h" in job.state:
            holdup = Holdup.HELD
        elif job.number in start_later:
            holdup = Holdup.BEGIN_TIME
        else:
            holdup = Holdup.NONE
        per_host = slots_per_host.get(job.pe or "")
        nodes = math.ceil(job.slots / per_host) if per_host else 1
        ids = [f"{job.number}.{task}" for task in expand_tasks(job.tasks)] or [job.number]
        pending.extend(PendingJob(job_id, nodes, job.slots, holdup) for job_id in ids)
    return pending


def track_idle(
    previous: Mapping[str, datetime], busy: Mapping[str, bool], now: datetime
) -> dict[str, datetime]:
    """Since when each host not busy has been seen so: SGE itself does not say."""
    return {name: previous.get(name, now) for name, is_busy in busy.items() if not is_busy}


def _xml(text: str, what: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise SchedulerError(f"{what} printed no valid XML ({exc}): {text[:200]!r}") from None


def _int(text: str | None) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        return 0


class Sge:
    name = "sge"

    def __init__(self, settings: SgeSettings) -> None:
        self._settings = settings
        self._env = {"SGE_CELL": settings.cell}
        if settings.root:
            self._env["SGE_ROOT"] = str(settings.root)
        self._idle_since: dict[str, datetime] = {}
        self._qmaster: str | None = None
        self._log = logs.get(scheduler=self.name)

    def _argv(self, program: str, args: Sequence[str]) -> list[str]:
        binary = str(self._settings.bin_dir / program) if self._settings.bin_dir else program
        return [*self._settings.wrapper, binary, *args]

    async def _run(self, argv: Sequence[str], *, check: bool) -> commands.CommandResult:
        try:
            return await commands.run(
                argv, timeout=self._settings.command_timeout, env=self._env, check=check
            )
        except commands.CommandError as exc:
            raise SchedulerError(str(exc)) from exc

    async def _query(self, program: str, *args: str) -> str:
        """A command that prints data: any non-zero exit is a failure."""
        return (await self._run(self._argv(program, args), check=True)).stdout

    async def _change(
        self, program: str, *args: str, subjects: Collection[str], expect: Expect | None = None
    ) -> str:
        """A command that changes the cluster, judged by what it says (``judge``)."""
        argv = self._argv(program, args)
        result = await self._run(argv, check=False)
        output = f"{result.stdout}\n{result.stderr}".strip()
        failed = judge(output, subjects=subjects, expect=expect)
        if failed or (result.returncode != 0 and not output):
            detail = "; ".join(failed[:5]) or f"exited with {result.returncode}"
            raise SchedulerError(f"{commands.shorten(argv)}: {detail}")
        return output

    def _hostnames(self, names: Sequence[str]) -> list[str]:
        hostnames = checked_hostnames(names)
        reserved = [name for name in hostnames if name.lower() in _RESERVED]
        if reserved:
            raise SchedulerError(f"not a host name in SGE: {', '.join(reserved)}")
        return hostnames

    def _instances(self, hostnames: Sequence[str]) -> list[str]:
        return [f"{self._settings.queue}@{name}" for name in hostnames]

    async def _members(self) -> set[str]:
        """The host group's hosts: the cluster's compute hosts."""
        return set(
            (await self._query("qconf", "-shgrp_resolved", self._settings.host_group)).split()
        )

    async def _compute_hosts(self, names: Sequence[str]) -> set[str]:
        """The host group's members, once none of ``names`` is the qmaster's host or an
        execution host outside the group (one the cell has of its own); HostsRefused
        otherwise."""
        members, exec_hosts = await asyncio.gather(self._members(), self._list("-sel"))
        qmaster = await self._qmaster_host()
        refused = {
            name: "the head node (the qmaster's host)"
            if name == qmaster
            else f"an execution host outside {self._settings.host_group}"
            for name in names
            if name == qmaster or (name in exec_hosts and name not in members)
        }
        if refused:
            raise HostsRefused(refused)
        return members

    async def _qmaster_host(self) -> str | None:
        """The qmaster's host, from the cell's act_qmaster file (read once)."""
        if self._qmaster is None:
            root = self._settings.root or Path(os.environ.get("SGE_ROOT", _DEBIAN_ROOT))
            path = root / self._settings.cell / "common" / "act_qmaster"
            try:
                text = await asyncio.to_thread(path.read_text)
            except OSError as exc:
                raise SchedulerError(f"{path}: cannot read the qmaster's host: {exc}") from None
            self._qmaster = short_hostname(text.strip()) or ""
        return self._qmaster or None

    async def add_hosts(self, hosts: Sequence[Host]) -> None:
        names = self._hostnames([host.hostname for host in hosts])
        if not names:
            return
        members = await self._compute_hosts(names)
        joining = [name for name in names if name not in members]
        slots = {host.hostname: host.slots for host in hosts}
        listed = ",".join(names)
        # Admin host: its execd may register. Submit host: its jobs may submit jobs.
        await self._change("qconf", "-ah", listed, subjects=names, expect=Expect.PRESENT)
        await self._change("qconf", "-as", listed, subjects=names, expect=Expect.PRESENT)
        await self._change(
            "qconf",
            "-aattr",
            "hostgroup",
            "hostlist",
            " ".join(names),
            self._settings.host_group,
            subjects=names,
            expect=Expect.PRESENT,
        )
        by_slots: dict[int, list[str]] = {}
        for name in names:
            by_slots.setdefault(slots[name], []).append(name)
        for count, group in sorted(by_slots.items()):
            await self._change(
                "qconf",
                "-mattr",
                "exechost",
                "complex_values",
                f"slots={count}",
                *group,
                subjects=group,
            )
        # A host drained before it left, back under the same name, takes work again;
        # one still in the group keeps its state: a replayed join undoes no drain.
        if joining:
            await self._change("qmod", "-e", ",".join(self._instances(joining)), subjects=())

    async def remove_hosts(self, hostnames: Sequence[str]) -> None:
        names = self._hostnames(hostnames)
        if not names:
            return
        await self._compute_hosts(names)
        instances = self._instances(names)
        listed = ",".join(instances)
        # Disabled first, so that the jobs rescheduled next cannot land on it again.
        await self._change("qmod", "-d", listed, subjects=instances, expect=Expect.ABSENT)
        # The instance is gone: its jobs go back to the queue now (forced, as batch jobs
        # are not rerunnable by default) rather than wait for an execd that never answers.
        output = await self._change(
            "qmod", "-f", "-rq", listed, subjects=instances, expect=Expect.ABSENT
        )
        requeued = [m["job"] for line in output.splitlines() if (m := _RESCHEDULED.fullmatch(line))]
        if requeued:
            self._log.warning("sge_jobs_requeued", job_ids=requeued, hostnames=names)
        await self._change(
            "qconf",
            "-dattr",
            "hostgroup",
            "hostlist",
            " ".join(names),
            self._settings.host_group,
            subjects=names,
            expect=Expect.ABSENT,
        )
        for option in ("-de", "-ds", "-dh"):
            await self._change(
                "qconf", option, ",".join(names), subjects=names, expect=Expect.ABSENT
            )
        for name in names:
            self._idle_since.pop(name, None)

    async def drain_hosts(self, hostnames: Sequence[str], reason: str) -> None:
        names = self._hostnames(hostnames)
        if names:
            await self._compute_hosts(names)
            await self._change("qmod", "-d", ",".join(self._instances(names)), subjects=())
            # A queue instance has no field for why it is disabled: the log keeps it.
            self._log.info("sge_hosts_disabled", hostnames=names, reason=reason)

    async def resume_hosts(self, hostnames: Sequence[str]) -> None:
        names = self._hostnames(hostnames)
        if names:
            await self._compute_hosts(names)
            await self._change("qmod", "-e", ",".join(self._instances(names)), subjects=())

    async def list_hosts(self) -> list[HostStatus]:
        # -F slots: each instance's free slots under its host's limit. -s r: not the
        # pending jobs, which -f would list after the queues. Not -q QUEUE: without
        # instances, that exits 1 and says nothing.
        text, members = await asyncio.gather(
            self._query("qstat", "-f", "-F", "slots", "-s", "r", "-xml"),
            # Only the host group's: other hosts of the queue (the head node, say) are
            # none of this backend's business.
            self._members(),
        )
        ours = members
        instances = [
            instance
            for instance in parse_queue_xml(text, self._settings.queue)
            if instance.hostname in ours
        ]
        self._idle_since = track_idle(
            self._idle_since,
            {instance.hostname: instance.used > 0 for instance in instances},
            datetime.now(UTC),
        )
        return [
            HostStatus(
                hostname=instance.hostname,
                slots=instance.used + instance.free,
                address=None,
                state="+".join(
                    ["busy" if instance.used else "idle"]
                    + [_STATES.get(flag, flag) for flag in instance.flags]
                ),
                available=not instance.flags,
                busy=instance.used > 0,
                idle_since=self._idle_since.get(instance.hostname),
            )
            for instance in instances
        ]

    async def jobs(self) -> Jobs:
        pending, running = parse_jobs_xml(await self._query("qstat", "-u", "*", "-r", "-xml"))
        waiting = [job for job in pending if not job.predecessors and "h" not in job.state]
        start_later: set[str] = set()
        if waiting:
            # A future start time (qsub -a) shows only as a hold of its own kind.
            text = await self._query("qstat", "-u", "*", "-s", "ha", "-xml")
            start_later = {job.number for job in parse_jobs_xml(text)[0]}
        slots_per_host = {}
        # A wildcard request ("mpi*") leaves the environment to the scheduler: one node.
        for pe in sorted({job.pe for job in pending if job.pe and not set(job.pe) & set("*?[")}):
            rule = parse_allocation_rule(await self._query("qconf", "-sp", pe))
            if rule:
                slots_per_host[pe] = rule
        return Jobs(
            pending_jobs(pending, start_later=start_later, slots_per_host=slots_per_host),
            running=len(running),
        )

    async def configure_cell(self, submit_host: str, *, schedule_interval: str) -> list[str]:
        """What this backend needs of the qmaster, made so where it is not: the submit
        host, the scheduler's timing, the host group, ``smp``, and the queue over the
        host group. The objects changed; none on a boot that finds all in place."""
        changed = []
        names = self._hostnames([submit_host])
        if submit_host not in await self._list("-ss"):
            await self._change("qconf", "-as", names[0], subjects=names, expect=Expect.PRESENT)
            changed.append(f"submit host {submit_host}")
        settings = self._settings
        with tempfile.TemporaryDirectory(prefix="cfncluster-sge-") as directory:

            async def load(flag: str, name: str, text: str) -> None:
                path = Path(directory, name)
                await asyncio.to_thread(path.write_text, text)
                await self._query("qconf", flag, str(path))
                changed.append(name)

            timing = sgeconf.scheduler(
                await self._query("qconf", "-ssconf"), interval=schedule_interval
            )
            if timing is not None:
                await load("-Msconf", "scheduler", timing)
            if settings.host_group not in await self._list("-shgrpl"):
                await load("-Ahgrp", settings.host_group, sgeconf.host_group(settings.host_group))
            if sgeconf.SMP not in await self._list("-spl"):
                await load(
                    "-Ap", sgeconf.SMP, sgeconf.parallel_environment(sgeconf.SMP, "$pe_slots")
                )
            if settings.queue not in await self._list("-sql"):
                queue = sgeconf.queue(
                    await self._query("qconf", "-sq"),
                    name=settings.queue,
                    hosts=settings.host_group,
                    parallel_environments=sgeconf.SMP,
                )
                await load("-Aq", settings.queue, queue)
        if changed:
            self._log.info("sge_cell_configured", changed=", ".join(changed))
        return changed

    async def _list(self, flag: str) -> list[str]:
        """A qconf list (``-ss``, ``-sql``...): empty where qconf says none is defined,
        which it does with exit 1."""
        result = await self._run(self._argv("qconf", [flag]), check=False)
        return result.stdout.split() if result.returncode == 0 else []
