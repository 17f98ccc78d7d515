"""``cfncluster-node demo``: the SQS watcher on an embedded default, with no AWS account.

moto's server plays AWS (queue, dead-letter queue, SNS topic, instance table) and a private
slurmctld plays the cluster's scheduler. A fleet simulator plays what moto does not: Auto
Scaling's launch and terminate notifications through SNS, and the compute nodes' join and
leave messages, including the late replays and the garbage a real queue delivers. The
watcher runs under the supervisor exactly as on a head node; a live view shows the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cfncluster_node import logs, services, supervisor
from cfncluster_node.aws import Aws
from cfncluster_node.config import (
    AwsSettings,
    ClusterSettings,
    Config,
    SqsWatcherSettings,
    SupervisorSettings,
)
from cfncluster_node.instances import InstanceTable
from cfncluster_node.localaws import (
    ClusterResources,
    MotoServer,
    create_cluster_resources,
    publish_autoscaling,
    queue_depth,
    send_messages,
)
from cfncluster_node.localslurm import LocalSlurm, SlurmUnavailable
from cfncluster_node.messages import LEAVE_EVENT, READY_EVENT, compute_notice
from cfncluster_node.schedulers.slurm import Slurm

REGION = "us-east-1"
LAUNCH = "autoscaling:EC2_INSTANCE_LAUNCH"
TERMINATE = "autoscaling:EC2_INSTANCE_TERMINATE"


@dataclass(frozen=True)
class Scenario:
    nodes: int
    terminated: int
    left: int
    pace_s: float
    settle_timeout_s: float


FULL = Scenario(nodes=120, terminated=60, left=20, pace_s=0.02, settle_timeout_s=120)
QUICK = Scenario(nodes=16, terminated=8, left=3, pace_s=0.01, settle_timeout_s=60)


@dataclass
class Snapshot:
    phase: str = "starting"
    sent: int = 0
    slurm_hosts: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    dead_letters: int = 0


@dataclass(frozen=True)
class Summary:
    launched: int
    full_registration_s: float
    expected_hosts: int
    slurm_hosts: int
    resurrected: int
    dead_letters: int
    log_file: Path

    @property
    def ok(self) -> bool:
        return (
            self.slurm_hosts == self.expected_hosts
            and self.resurrected == 0
            and self.dead_letters == 1
        )


def instance(n: int) -> str:
    return f"i-{0xDE0000 + n:017x}"


def hostname(n: int) -> str:
    return f"ip-10-20-{n // 250}-{n % 250 + 1}"


def join(n: int, at: datetime) -> str:
    return compute_notice(
        READY_EVENT,
        instance(n),
        at,
        hostname=f"{hostname(n)}.ec2.internal",
        # Loopback addresses: slurmctld pings its nodes, and nothing else may be reached here.
        address=f"127.20.{n // 250}.{n % 250 + 1}",
        slots=4,
        instance_type="c5.xlarge",
    )


class Demo:
    def __init__(self, aws: Aws, cluster: ClusterResources, slurm: Slurm) -> None:
        self.aws = aws
        self.cluster = cluster
        self.slurm = slurm
        self.table = InstanceTable(aws, cluster.table)
        self.snapshot = Snapshot()

    async def play(self, scenario: Scenario) -> tuple[float, set[str]]:
        """Drive the fleet through its life; return full-registration time and final hosts."""
        t0 = datetime.now(UTC)
        self.snapshot.phase = f"scale-out: {scenario.nodes} instances launch and join"
        started = time.monotonic()
        for n in range(scenario.nodes):
            await publish_autoscaling(
                self.aws, self.cluster.topic_arn, LAUNCH, instance(n), when=t0
            )
            await send_messages(self.aws, self.cluster.queue_url, [join(n, t0)])
            self.snapshot.sent += 2
            await asyncio.sleep(scenario.pace_s)
        everyone = {hostname(n) for n in range(scenario.nodes)}
        await self._until(lambda hosts: hosts == everyone, scenario.settle_timeout_s)
        registration_s = time.monotonic() - started

        later = t0 + timedelta(minutes=10)
        self.snapshot.phase = (
            f"scale-in: {scenario.terminated} terminated by Auto Scaling, {scenario.left} leave"
        )
        for n in range(scenario.terminated):
            await publish_autoscaling(
                self.aws, self.cluster.topic_arn, TERMINATE, instance(n), when=later
            )
            self.snapshot.sent += 1
        leaving = range(scenario.terminated, scenario.terminated + scenario.left)
        await send_messages(
            self.aws,
            self.cluster.queue_url,
            [compute_notice(LEAVE_EVENT, instance(n), later) for n in leaving],
        )
        self.snapshot.sent += scenario.left

        self.snapshot.phase = "chaos: late join replays, duplicate terminates, one garbage message"
        replays = [join(n, t0) for n in range(scenario.terminated)]
        garbage = json.dumps({"Type": "Notification", "Message": "{truncated"})
        await send_messages(self.aws, self.cluster.queue_url, [*replays, garbage])
        for n in range(0, scenario.terminated, 3):
            await publish_autoscaling(
                self.aws, self.cluster.topic_arn, TERMINATE, instance(n), when=later
            )
            self.snapshot.sent += 1
        self.snapshot.sent += len(replays) + 1

        survivors = {
            hostname(n) for n in range(scenario.terminated + scenario.left, scenario.nodes)
        }
        self.snapshot.phase = "settling"
        final = await self._until(lambda hosts: hosts == survivors, scenario.settle_timeout_s)
        self.snapshot.phase = "done"
        return registration_s, final

    async def _until(self, done: Callable[[set[str]], bool], timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            hosts = {h.hostname for h in await self.slurm.list_hosts()}
            if (done(hosts) and self.snapshot.queued == 0) or time.monotonic() > deadline:
                return hosts
            await asyncio.sleep(0.2)

    async def observe(self) -> None:
        """Refresh the snapshot the live view shows, from the real Slurm, table and queues."""
        while True:
            self.snapshot.slurm_hosts = len(await self.slurm.list_hosts())
            states: dict[str, int] = {}
            for record in await self.table.scan():
                states[record.state.value] = states.get(record.state.value, 0) + 1
            self.snapshot.rows = states
            self.snapshot.queued = await queue_depth(self.aws, self.cluster.queue_url)
            self.snapshot.dead_letters = await queue_depth(self.aws, self.cluster.dead_letter_url)
            await asyncio.sleep(0.25)


def render(snapshot: Snapshot) -> Table:
    table = Table(title="cfncluster-node demo: SQS watcher", show_header=False, min_width=72)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("phase", snapshot.phase)
    table.add_row("messages sent", str(snapshot.sent))
    table.add_row("hosts in Slurm", str(snapshot.slurm_hosts))
    table.add_row(
        "instance table", ", ".join(f"{k}={v}" for k, v in sorted(snapshot.rows.items())) or "-"
    )
    table.add_row("queue (visible + in flight)", str(snapshot.queued))
    table.add_row("dead-letter queue", str(snapshot.dead_letters))
    return table


async def run(
    scenario: Scenario, console: Console, stop: asyncio.Event, workdir: Path, log_file: Path
) -> Summary | None:
    console.print(f"[bold]Starting moto's server and a private slurmctld[/] (work dir {workdir})")
    with MotoServer() as moto, LocalSlurm(workdir / "slurm") as local_slurm:
        moto.use()
        async with Aws(AwsSettings(max_attempts=3), REGION) as aws:
            cluster = await create_cluster_resources(aws, "demo")
            config = Config(
                cluster=ClusterSettings(stack_name="demo", region=REGION, table=cluster.table),
                sqswatcher=SqsWatcherSettings(queue=cluster.queue_url),
                slurm=local_slurm.settings,
                supervisor=SupervisorSettings(stop_timeout=10),
            )
            registry = services.build_registry(config, aws)
            watcher = services.build("sqswatcher", config, aws, registry)
            slurm = Slurm(local_slurm.settings)
            demo = Demo(aws, cluster, slurm)
            service_stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                supervised = group.create_task(
                    supervisor.supervise(
                        [watcher], service_stop, SupervisorSettings(stop_timeout=10)
                    )
                )
                observer = group.create_task(demo.observe())
                with Live(render(demo.snapshot), console=console, refresh_per_second=4) as live:
                    refresher = group.create_task(_refresh(live, demo))
                    play = group.create_task(demo.play(scenario))
                    interrupted = group.create_task(stop.wait())
                    await asyncio.wait({play, interrupted}, return_when=asyncio.FIRST_COMPLETED)
                    for task in (play, interrupted, observer, refresher):
                        task.cancel()
                    live.update(render(demo.snapshot))
                console.print()
                service_stop.set()
                await supervised
            if stop.is_set():
                console.print("[yellow]Interrupted: everything stopped and cleaned up.[/]")
                return None
            registration_s, final = play.result()
            return Summary(
                launched=scenario.nodes,
                full_registration_s=registration_s,
                expected_hosts=scenario.nodes - scenario.terminated - scenario.left,
                slurm_hosts=len(final),
                resurrected=len({hostname(n) for n in range(scenario.terminated)} & final),
                dead_letters=await queue_depth(aws, cluster.dead_letter_url),
                log_file=log_file,
            )


async def _refresh(live: Live, demo: Demo) -> None:
    while True:
        live.update(render(demo.snapshot))
        await asyncio.sleep(0.25)


def print_summary(console: Console, summary: Summary) -> None:
    table = Table(title="summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("instances launched and joined", str(summary.launched))
    table.add_row("time to full registration", f"{summary.full_registration_s:.2f} s")
    table.add_row("hosts expected / in Slurm", f"{summary.expected_hosts} / {summary.slurm_hosts}")
    table.add_row("terminated hosts brought back by late replays", str(summary.resurrected))
    table.add_row("garbage messages in the dead-letter queue", str(summary.dead_letters))
    table.add_row("watcher log (JSON lines)", str(summary.log_file))
    console.print(Group(table))
    verdict = "ok" if summary.ok else "FAILED"
    console.print(f"demo_result={verdict}")


def main(quick: bool) -> int:
    console = Console()
    outcome: list[Summary | None] = []

    workdir = Path(tempfile.mkdtemp(prefix="cfncluster-demo-", dir="/var/tmp"))
    workdir.chmod(0o755)  # slurmctld, running as the slurm user, keeps its state inside
    log_file = workdir / "demo.log"

    async def entry(stop: asyncio.Event) -> None:
        outcome.append(await run(QUICK if quick else FULL, console, stop, workdir, log_file))

    try:
        with log_file.open("w") as log_stream, contextlib.suppress(KeyboardInterrupt):
            logs.configure("info", "json", stream=log_stream)
            supervisor.run_until_stopped(entry)
    except SlurmUnavailable as exc:
        console.print(f"[red]cannot start the demo's Slurm:[/] {exc}")
        return 1
    finally:
        shutil.rmtree(workdir / "slurm", ignore_errors=True)
    summary = outcome[0] if outcome else None
    if summary is None:
        return 130
    print_summary(console, summary)
    return 0 if summary.ok else 1
