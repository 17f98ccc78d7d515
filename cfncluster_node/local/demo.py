"""``cfncluster-node demo``: a whole elastic cluster on this machine, with no AWS account.

1. moto's server plays AWS. The launcher renders the cluster's template, uploads it and
   creates the stack, which waits for its head node's signal.
2. This process plays the head node. It reads the node.toml the stack wrote into its user
   data, brings up its scheduler (a private slurmctld) and signals the stack, then runs
   the four services under the supervisor: watcher, publisher, reconciler and scale-in.
3. ``fleetsim`` plays the rest of AWS:
   - CloudWatch evaluates the template's alarms on the published metric.
   - Auto Scaling notifies the topic of its launches and terminations.
   - Each launched instance boots as a compute node: a network namespace with a real
     slurmd, which announces itself to the queue.
4. Jobs are submitted. The fleet grows from the alarms, the jobs run on the nodes, the
   nodes go idle and are scaled in. Then the stack is deleted.

Time is compressed: a CloudWatch minute lasts one publisher interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from cfncluster_node import config, logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import AwsSettings, Config, StorageSettings
from cfncluster_node.imds import IMDS_ENV
from cfncluster_node.local.cloud import MotoServer, metadata_service, queue_depth
from cfncluster_node.local.fleetsim import Alarms, Fleet, Journal, alarms_of
from cfncluster_node.local.slurm import ComputeNodes, LocalSlurm, SlurmUnavailable
from cfncluster_node.node import group, readiness, services, supervisor
from cfncluster_node.schedulers import Scheduler
from cfncluster_node.schedulers.slurm import Slurm
from cfncluster_node.stack import launcher
from cfncluster_node.stack.clusterconfig import ClusterConfig

REGION = "us-east-1"
STACK = "demo"
CPUS = 2  # per compute node: a job takes a whole node


class DemoError(Exception):
    pass


@dataclass(frozen=True)
class Scenario:
    jobs: int
    job_seconds: int
    max_size: int
    period_s: float  # one CloudWatch minute
    idle_s: float  # scale-in's idle time
    timeout_s: float


FULL = Scenario(jobs=12, job_seconds=10, max_size=6, period_s=2.0, idle_s=10, timeout_s=240)
QUICK = Scenario(jobs=6, job_seconds=5, max_size=4, period_s=1.5, idle_s=6, timeout_s=150)


@dataclass
class Snapshot:
    phase: str = "starting"
    stack: str = "-"
    desired: int = 0
    instances: int = 0
    hosts: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    alarms: dict[str, str] = field(default_factory=dict)
    queued: int = 0
    dead_letters: int = 0


@dataclass(frozen=True)
class Summary:
    jobs_submitted: int
    jobs_completed: int
    first_node_s: float | None
    jobs_done_s: float | None
    scaled_in_s: float | None
    peak_nodes: int
    scale_outs: int
    hosts_left: int
    dead_letters: int
    stack_deleted: bool
    volume_kept: bool
    log_file: Path

    @property
    def ok(self) -> bool:
        return (
            self.jobs_completed == self.jobs_submitted
            and self.peak_nodes >= 2
            and self.scaled_in_s is not None
            and self.hosts_left == 0
            and self.dead_letters == 1
            and self.stack_deleted
            and self.volume_kept
        )


async def demo_cluster(aws: Aws, scenario: Scenario) -> ClusterConfig:
    """The cluster an operator would write, in a VPC whose instances' addresses are those
    of the compute nodes' network on this machine."""
    vpc = (await aws.call("ec2", "create_vpc", CidrBlock=ComputeNodes.NETWORK))["Vpc"]["VpcId"]
    subnet = (
        await aws.call(
            "ec2",
            "create_subnet",
            VpcId=vpc,
            CidrBlock=ComputeNodes.SUBNET,
            AvailabilityZone=f"{REGION}a",
        )
    )["Subnet"]
    return ClusterConfig.model_validate(
        {
            "cluster": {"region": REGION},
            "network": {
                "vpc_id": vpc,
                "subnet_id": subnet["SubnetId"],
                "availability_zone": subnet["AvailabilityZone"],
            },
            "head_node": {"image_id": "ami-12c6146b"},
            "compute": {"image_id": "ami-12c6146b", "max_size": scenario.max_size},
            "scaling": {"adjustment": 2, "cooldown": 120, "idle_minutes": scenario.idle_s / 60},
        }
    )


def on_this_machine(settings: Config, slurm: LocalSlurm, scenario: Scenario) -> Config:
    """The stack's head-node config, run here: the private Slurm, no disks, and time
    compressed so that a CloudWatch minute lasts ``period_s``."""
    period = scenario.period_s

    def section(name: str, **changes: Any) -> Any:
        current = getattr(settings, name)
        return type(current).model_validate(current.model_dump() | changes)

    return settings.model_copy(
        update={
            "cluster": section("cluster", default_slots=CPUS),
            "slurm": slurm.settings,
            "storage": StorageSettings(),
            # The private Slurm stands in for the head node's munge and slurmctld.
            "bootstrap": None,
            "publisher": section("publisher", interval=period),
            "scalein": section("scalein", interval=period, grace_seconds=1.0),
            "reconciler": section("reconciler", interval=10 * period, join_timeout=60.0),
            "supervisor": section(
                "supervisor", stop_timeout=10.0, health_file=slurm.root / "health.json"
            ),
        }
    )


class Demo:
    def __init__(self, aws: Aws, slurm: LocalSlurm, scheduler: Scheduler) -> None:
        self.aws = aws
        self.slurm = slurm
        self.scheduler = scheduler
        self.snapshot = Snapshot()
        self.journal = Journal()
        self.started = time.monotonic()
        self.submitted = 0

    async def head_node(self, stacks: launcher.Launcher, scenario: Scenario) -> Config:
        """Come up as the stack's head node, with the config its user data carries."""
        for _ in range(600):
            view = await stacks.describe(STACK)
            if view is not None and view.status == "CREATE_IN_PROGRESS":
                break
            await asyncio.sleep(0.05)
        text = await stacks.node_config(STACK)
        settings = on_this_machine(config.parse(text, source="user data"), self.slurm, scenario)
        identity = {"instance-id": await stacks.head_node_id(STACK)}
        async with metadata_service(identity) as url:
            os.environ[IMDS_ENV] = url
            registry = services.build_registry(settings, self.aws)
            await readiness.bring_up(settings, self.aws, registry)
        return settings

    async def play(self, scenario: Scenario, fleet: Fleet) -> dict[str, float | None]:
        """Submit the jobs, then wait for them to run and for the fleet to go."""
        self.snapshot.phase = f"{scenario.jobs} jobs submitted: the alarms grow the fleet"
        for _ in range(scenario.jobs):
            await asyncio.to_thread(
                self.slurm.sbatch, "-N1", f"-n{CPUS}", "--wrap", f"sleep {scenario.job_seconds}"
            )
            self.submitted += 1
        await fleet.inject_garbage()
        marks: dict[str, float | None] = {"first_node": None, "jobs_done": None, "scaled_in": None}
        deadline = time.monotonic() + scenario.timeout_s
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - self.started
            if marks["first_node"] is None and self.journal.counts.get("joined"):
                marks["first_node"] = elapsed
            if marks["jobs_done"] is None and self.snapshot.jobs.get("done") == scenario.jobs:
                marks["jobs_done"] = elapsed
                self.snapshot.phase = "jobs done: idle nodes drain and scale in"
            if marks["jobs_done"] is not None and not fleet.running and not self.snapshot.hosts:
                marks["scaled_in"] = elapsed
                break
            await asyncio.sleep(0.25)
        self.snapshot.phase = "done" if marks["scaled_in"] else "timed out"
        return marks

    async def observe(self, fleet: Fleet, alarms: Alarms, outputs: dict[str, str]) -> None:
        """Refresh what the live view shows, from the real Slurm, group and queues."""
        while True:
            hosts: dict[str, int] = {}
            for host in await self.scheduler.list_hosts():
                state = "busy" if host.busy else ("idle" if host.available else "draining")
                hosts[state] = hosts.get(state, 0) + 1
            self.snapshot.hosts = hosts
            self.snapshot.jobs = await asyncio.to_thread(self.jobs)
            self.snapshot.instances = len(fleet.running)
            self.snapshot.desired = (
                await group.describe(self.aws, outputs["ComputeGroup"])
            ).desired
            self.snapshot.alarms = dict(alarms.states)
            self.snapshot.queued = await queue_depth(self.aws, outputs["QueueUrl"])
            self.snapshot.dead_letters = await queue_depth(self.aws, outputs["DeadLetterQueueUrl"])
            await asyncio.sleep(0.5)

    def jobs(self) -> dict[str, int]:
        listed = self.slurm.squeue("-h", "-o", "%T").split()
        pending = listed.count("PENDING")
        return {
            "pending": pending,
            "running": len(listed) - pending,
            "done": self.submitted - len(listed),
        }


def render(demo: Demo, max_size: int) -> Panel:
    s = demo.snapshot
    table = Table(show_header=False, box=None, min_width=70)
    table.add_column(style="bold cyan", width=26)
    table.add_column()
    elapsed = time.monotonic() - demo.started
    table.add_row("phase", f"{s.phase}  [dim]({elapsed:.0f} s)[/]")
    table.add_row("stack", s.stack)
    table.add_row("compute group", f"desired {s.desired} of max {max_size}, {s.instances} running")
    table.add_row("Slurm nodes", _counts(s.hosts) or "none")
    table.add_row("jobs", _counts(s.jobs) or "-")
    table.add_row("alarms", ", ".join(f"{k}={v}" for k, v in sorted(s.alarms.items())) or "-")
    table.add_row("queue / dead letters", f"{s.queued} / {s.dead_letters}")
    lines = "\n".join(demo.journal.lines) or "-"
    return Panel(
        Group(table, Panel(lines, title="what happened", border_style="dim")),
        title="cfncluster-node demo: an elastic cluster on moto and a real Slurm",
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()) if value)


async def run(
    scenario: Scenario, console: Console, stop: asyncio.Event, workdir: Path, log_file: Path
) -> Summary | None:
    console.print(f"[bold]moto's server, a private slurmctld, a node network[/] ({workdir})")
    with (
        MotoServer() as moto,
        LocalSlurm(workdir / "slurm") as slurm,
        ComputeNodes(slurm) as nodes,
    ):
        moto.use()
        async with Aws(AwsSettings(max_attempts=3), REGION) as aws:
            stacks = launcher.Launcher(aws, REGION, console, poll_s=0.2)
            cluster = await demo_cluster(aws, scenario)
            demo = Demo(aws, slurm, Slurm(slurm.settings))
            creating = asyncio.create_task(stacks.create(STACK, cluster))
            settings = await demo.head_node(stacks, scenario)
            created = await creating
            launcher.report(console, created)
            if not created.ok:
                raise DemoError("the stack was not created")
            demo.snapshot.stack = created.status
            alarms = Alarms(
                aws,
                alarms_of(await stacks.deployed_template(STACK), STACK),
                created.outputs["ComputeGroup"],
                scenario.period_s,
                demo.journal,
            )
            fleet = Fleet(aws, created.outputs, nodes, demo.scheduler, demo.journal, cpus=CPUS)
            registry = services.build_registry(settings, aws)
            running = [
                services.build(name, settings, aws, registry)
                for name in settings.supervisor.services
            ]
            service_stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                supervised = tasks.create_task(
                    supervisor.supervise(running, service_stop, settings.supervisor)
                )
                helpers = [
                    tasks.create_task(alarms.run()),
                    tasks.create_task(fleet.run()),
                    tasks.create_task(demo.observe(fleet, alarms, created.outputs)),
                ]
                with Live(render(demo, scenario.max_size), console=console) as live:
                    helpers.append(tasks.create_task(_refresh(live, demo, scenario.max_size)))
                    play = tasks.create_task(demo.play(scenario, fleet))
                    interrupted = tasks.create_task(stop.wait())
                    await asyncio.wait({play, interrupted}, return_when=asyncio.FIRST_COMPLETED)
                    for task in (play, interrupted, *helpers):
                        task.cancel()
                    live.update(render(demo, scenario.max_size))
                console.print()
                service_stop.set()
                await supervised
            if stop.is_set():
                console.print("[yellow]Interrupted: everything stopped and cleaned up.[/]")
                return None
            marks = play.result()
            dead_letters = await queue_depth(aws, created.outputs["DeadLetterQueueUrl"])
            hosts_left = len(await demo.scheduler.list_hosts())
            deleted = await stacks.delete(STACK)
            volume = created.outputs["SharedVolume"]
            kept = await aws.call("ec2", "describe_volumes", VolumeIds=[volume])
            jobs = await asyncio.to_thread(demo.jobs)
            return Summary(
                jobs_submitted=scenario.jobs,
                jobs_completed=jobs["done"],
                first_node_s=marks["first_node"],
                jobs_done_s=marks["jobs_done"],
                scaled_in_s=marks["scaled_in"],
                peak_nodes=fleet.peak,
                scale_outs=demo.journal.counts.get("scale_out", 0),
                hosts_left=hosts_left,
                dead_letters=dead_letters,
                stack_deleted=deleted is not None and deleted.status == "DELETE_COMPLETE",
                volume_kept=bool(kept["Volumes"]),
                log_file=log_file,
            )


async def _refresh(live: Live, demo: Demo, max_size: int) -> None:
    while True:
        live.update(render(demo, max_size))
        await asyncio.sleep(0.25)


def print_summary(console: Console, summary: Summary) -> None:
    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    table = Table(title="summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "jobs submitted / completed", f"{summary.jobs_submitted} / {summary.jobs_completed}"
    )
    table.add_row("first compute node joined after", seconds(summary.first_node_s))
    table.add_row("all jobs done after", seconds(summary.jobs_done_s))
    table.add_row("fleet back to zero after", seconds(summary.scaled_in_s))
    table.add_row("peak compute nodes", str(summary.peak_nodes))
    table.add_row("scale-out steps by the alarms", str(summary.scale_outs))
    table.add_row("hosts left in Slurm", str(summary.hosts_left))
    table.add_row("garbage messages in the dead-letter queue", str(summary.dead_letters))
    table.add_row("stack deleted", "yes" if summary.stack_deleted else "no")
    table.add_row("shared volume kept for the next cluster", "yes" if summary.volume_kept else "no")
    table.add_row("head node log (JSON lines)", str(summary.log_file))
    console.print(table)
    console.print(f"demo_result={'ok' if summary.ok else 'FAILED'}")


def main(quick: bool) -> int:
    # Event lines are long and grepped: never broken at the terminal's width.
    console = Console(soft_wrap=True)
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
    except DemoError as exc:
        console.print(f"[red]demo failed:[/] {exc}; the head node's log is {log_file}")
        return 1
    finally:
        shutil.rmtree(workdir / "slurm", ignore_errors=True)
    summary = outcome[0] if outcome else None
    if summary is None:
        return 130
    print_summary(console, summary)
    return 0 if summary.ok else 1
