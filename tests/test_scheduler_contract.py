"""The contract every scheduler backend keeps (schedulers/__init__.py), on the real thing.

Each test runs once per backend: Slurm against a private slurmctld, SGE against a private
qmaster. Where work must really run, the host gets a real daemon (slurmd, execd).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from cfncluster_node import commands
from cfncluster_node.local.sge import LocalSge
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.schedulers import Holdup, Host, HostsRefused, HostStatus, Jobs, Scheduler
from tests.conftest import CPUS


def hosts(count: int, *, slots: int = 4, start: int = 1) -> list[Host]:
    # Names the private qmaster resolves (LocalSge.address); addresses for Slurm's NodeAddr.
    return [
        Host(f"ip-10-2-{n // 256}-{n % 256}", slots, f"127.2.{n // 256}.{n % 256}")
        for n in range(start, start + count)
    ]


# The host a real daemon serves: slurmd listens on 127.0.0.1, the execd in a namespace.
NODE = Host("ip-10-3-0-1", CPUS, "127.0.0.1")
_ABSENT = HostStatus("", 0, None, "absent", available=False, busy=False)


@dataclass
class Cluster:
    """A backend, and what a test does to its scheduler behind its back."""

    backend: Scheduler
    #: Submit a job sleeping long: its slots on one host, held, or after another job.
    submit: Callable[..., str]
    #: Start a real daemon for a registered host, so its jobs run.
    boot: Callable[[Host], None]
    #: The head node's name, as the backend knows it.
    head: str
    #: Make a host the scheduler has that is not a compute host (a static node).
    make_static: Callable[[str], None]
    #: Whether the scheduler still has a host of that name.
    has: Callable[[str], bool]

    async def listed(self) -> dict[str, HostStatus]:
        return {host.hostname: host for host in await self.backend.list_hosts()}

    async def available(self, host: Host) -> None:
        """Wait until the host's daemon has registered and it takes work."""
        deadline = time.monotonic() + 30
        while not (listed := await self.listed()).get(host.hostname, _ABSENT).available:
            if time.monotonic() > deadline:
                raise AssertionError(f"{host.hostname} never available: {listed}")
            await asyncio.sleep(0.2)

    async def eventually(self, what: str, check: Callable[[Jobs], bool]) -> Jobs:
        deadline = time.monotonic() + 30
        while not check(jobs := await self.backend.jobs()):
            if time.monotonic() > deadline:
                raise AssertionError(f"never {what}: {jobs}")
            await asyncio.sleep(0.2)
        return jobs


@pytest.fixture
def cluster(scheduler: Scheduler, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if scheduler.name == "sge":
        sge: LocalSge = request.getfixturevalue("sge")

        def qsub(*, slots: int = 1, held: bool = False, after: str | None = None) -> str:
            options = [
                *(["-h"] if held else []),
                *(["-hold_jid", after] if after else []),
                *(["-pe", "smp", str(slots)] if slots > 1 else []),
            ]
            return sge.qsub(*options, "-b", "y", "sleep", "600")

        def static_exec_host(name: str) -> None:
            definition = sge.root / f"static-{name}"
            attributes = ["load_scaling", "complex_values", "user_lists", "xuser_lists"]
            attributes += ["projects", "xprojects", "usage_scaling", "report_variables"]
            definition.write_text(
                f"hostname {name}\n" + "".join(f"{key} NONE\n" for key in attributes)
            )
            sge.qconf("-Ae", str(definition))

        yield Cluster(
            scheduler,
            qsub,
            lambda host: sge.start_execd(host.hostname),
            head=sge.MASTER,
            make_static=static_exec_host,
            has=lambda name: name in sge.qconf("-sel").split(),
        )
        sge.stop_execds()
    else:
        slurm: LocalSlurm = request.getfixturevalue("slurm")

        def sbatch(*, slots: int = 1, held: bool = False, after: str | None = None) -> str:
            options = [
                *(["--hold"] if held else []),
                *([f"--dependency=afterok:{after}"] if after else []),
                *("-N", "1", "-n", str(slots)),
            ]
            return slurm.sbatch(*options, "--wrap", "sleep 600")

        def has(name: str) -> bool:
            return f"NodeName={name} " in slurm.scontrol("-o", "-F", "show", "node")

        yield Cluster(
            scheduler,
            sbatch,
            lambda host: slurm.start_slurmd(host.hostname, host.slots),
            head=socket.gethostname().split(".")[0].lower(),
            # A node without the compute feature, as slurm.conf's own nodes are.
            make_static=lambda name: slurm.scontrol(
                "create", f"NodeName={name} CPUs=2 State=FUTURE"
            ),
            has=has,
        )
        slurm.stop_slurmds()


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[str]]:
    """Every command a backend runs."""
    argvs: list[Sequence[str]] = []
    real = commands.run

    async def recording(argv: Sequence[str], **options: Any) -> commands.CommandResult:
        argvs.append(argv)
        return await real(argv, **options)

    monkeypatch.setattr(commands, "run", recording)
    return argvs


async def test_adding_a_batch_twice_registers_each_host_once_with_its_slots(
    cluster: Cluster,
) -> None:
    batch = [*hosts(3), Host("ip-10-2-3-200", 8, "127.2.3.200")]

    await cluster.backend.add_hosts(batch)
    await cluster.backend.add_hosts(batch)

    listed = await cluster.listed()
    assert {name: host.slots for name, host in listed.items()} == {
        h.hostname: h.slots for h in batch
    }
    assert not any(host.busy for host in listed.values())


async def test_a_host_that_comes_back_with_other_slots_gets_them(cluster: Cluster) -> None:
    await cluster.backend.add_hosts(hosts(1, slots=4))

    await cluster.backend.add_hosts(hosts(1, slots=16))

    [host] = await cluster.backend.list_hosts()
    assert host.slots == 16


async def test_removing_hosts_that_are_not_there_succeeds_and_changes_nothing(
    cluster: Cluster,
) -> None:
    await cluster.backend.remove_hosts(["ip-10-2-0-99"])
    await cluster.backend.add_hosts(hosts(2))

    await cluster.backend.remove_hosts(["ip-10-2-0-1", "ip-10-2-0-77"])
    await cluster.backend.remove_hosts(["ip-10-2-0-1"])

    assert list(await cluster.listed()) == ["ip-10-2-0-2"]


async def test_two_hundred_hosts_come_and_go_in_a_few_commands(
    cluster: Cluster, ran: list[Sequence[str]]
) -> None:
    batch = hosts(200)

    await cluster.backend.add_hosts(batch)
    added = len(ran)
    assert len(await cluster.backend.list_hosts()) == 200
    ran.clear()
    await cluster.backend.remove_hosts([host.hostname for host in batch])
    removed = len(ran)

    assert await cluster.backend.list_hosts() == []
    assert max(added, removed) <= 8, ran


async def test_pending_jobs_say_their_slots_and_why_they_wait(cluster: Cluster) -> None:
    wide = cluster.submit(slots=2)  # no host yet: it waits for one
    held = cluster.submit(held=True)
    waiting = cluster.submit(after=held)

    jobs = await cluster.backend.jobs()

    assert jobs.running == 0
    assert {job.job_id: (job.nodes, job.slots, job.holdup) for job in jobs.pending} == {
        wide: (1, 2, Holdup.NONE),
        held: (1, 1, Holdup.HELD),
        waiting: (1, 1, Holdup.DEPENDENCY),
    }


async def test_hosts_say_their_slots_and_whether_they_are_busy(cluster: Cluster) -> None:
    idle = hosts(1)[0]
    await cluster.backend.add_hosts([NODE, idle])
    cluster.boot(NODE)
    ready = await cluster.listed()

    cluster.submit()
    await cluster.eventually("running", lambda jobs: jobs.running == 1)

    listed = await cluster.listed()
    node = listed[NODE.hostname]
    assert (node.slots, node.busy, node.available, node.idle_since) == (CPUS, True, True, None)
    assert node.state and node.state != ready[NODE.hostname].state
    assert isinstance(ready[NODE.hostname].idle_since, datetime)
    assert (listed[idle.hostname].slots, listed[idle.hostname].busy) == (idle.slots, False)


async def test_a_drained_host_keeps_its_job_takes_no_other_until_resumed(
    cluster: Cluster,
) -> None:
    if CPUS < 2:
        pytest.skip("two one-slot jobs on one host need two CPUs")
    await cluster.backend.add_hosts([NODE])
    cluster.boot(NODE)
    cluster.submit()
    await cluster.eventually("running", lambda jobs: jobs.running == 1)

    await cluster.backend.drain_hosts([NODE.hostname], "maintenance")
    second = cluster.submit()
    await asyncio.sleep(2.5)  # both schedulers place a job well within this

    jobs = await cluster.backend.jobs()
    assert (jobs.running, [job.job_id for job in jobs.pending]) == (1, [second])
    [drained] = await cluster.backend.list_hosts()
    assert (drained.available, drained.busy) == (False, True)

    await cluster.backend.resume_hosts([NODE.hostname])

    await cluster.eventually("both running", lambda jobs: jobs.running == 2)
    [resumed] = await cluster.backend.list_hosts()
    assert resumed.available


async def test_a_replayed_join_leaves_a_drained_host_drained(cluster: Cluster) -> None:
    # A duplicate or stale join must not undo an admin's drain, or scale-in's.
    await cluster.backend.add_hosts([NODE])
    cluster.boot(NODE)
    await cluster.available(NODE)
    await cluster.backend.drain_hosts([NODE.hostname], "maintenance")

    await cluster.backend.add_hosts([NODE])

    [replayed] = await cluster.backend.list_hosts()
    assert not replayed.available
    assert "drain" in replayed.state or "disabled" in replayed.state


async def test_a_drained_host_that_left_and_joins_again_takes_work(cluster: Cluster) -> None:
    await cluster.backend.add_hosts([NODE])
    await cluster.backend.drain_hosts([NODE.hostname], "scaling in")
    await cluster.backend.remove_hosts([NODE.hostname])

    await cluster.backend.add_hosts([NODE])
    cluster.boot(NODE)  # the instance came back from a reboot: its daemon starts
    cluster.submit()

    await cluster.eventually("running", lambda jobs: jobs.running == 1)
    [joined] = await cluster.backend.list_hosts()
    assert joined.available


async def test_removing_a_busy_host_puts_its_job_back_in_the_queue(cluster: Cluster) -> None:
    await cluster.backend.add_hosts([NODE])
    cluster.boot(NODE)
    job = cluster.submit()
    await cluster.eventually("running", lambda jobs: jobs.running == 1)

    await cluster.backend.remove_hosts([NODE.hostname])

    assert await cluster.backend.list_hosts() == []
    await cluster.eventually(
        "requeued",
        lambda jobs: jobs.running == 0 and [pending.job_id for pending in jobs.pending] == [job],
    )


async def test_hosts_that_are_not_compute_hosts_are_refused_by_name_and_left_alone(
    cluster: Cluster,
) -> None:
    static = "ip-10-3-0-200"
    cluster.make_static(static)
    [compute] = hosts(1)
    backend = cluster.backend

    for name in (static, cluster.head):
        attempts = [
            backend.add_hosts([compute, Host(name, 2, "127.3.0.200")]),
            backend.remove_hosts([name]),
            backend.drain_hosts([name], "forged"),
            backend.resume_hosts([name]),
        ]
        for attempt in attempts:
            with pytest.raises(HostsRefused) as refused:
                await attempt
            assert list(refused.value.refused) == [name]

    # Nothing of a refused batch was done: not even its compute host was added.
    assert await cluster.listed() == {}
    assert cluster.has(static)
