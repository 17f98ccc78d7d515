"""Benchmark of the SQS watcher: compute joins and leaves through moto's SQS into Slurm.

Run with ``make bench`` (``.venv/bin/python -m bench.watcher``); ``--help`` lists the knobs.

Everything runs on this machine: moto's server (its own process) plays SQS, DynamoDB and
EC2, a private slurmctld (LocalSlurm) is the scheduler, and the watcher runs in this
process exactly as the daemon runs it, every message checked (its sender, and for a join
EC2's word). The compute nodes are instances of a group in moto, and each sends its own
notice with its own role session, as a node does, at a steady rate (100 msg/s by
default), while the watcher consumes: moto's SQS costs O(queue depth) per call, so a
queue filled up front would measure moto. For the same reason moto_server runs with the fixes of
cfncluster_node/local/motoserver.py (``--stock-moto`` to do without): stock moto charges
every receive O(messages in flight) per message, and the watcher, which deletes a message
only once it is applied, always has some in flight.

Phases, against one moto and one slurmctld:

1. floor: the same notices at the same rate, received and deleted with nothing else
   (4 receivers, 10 per receive), plus as many table rows written with batch_write_item
   (25 per call, 4 calls at a time, as the watcher writes them);
2. joins: the watcher registers every host; slurmctld is polled until all are there;
3. single events: one join, then its leave, at a time, the queue otherwise idle;
4. flood: a job on one node sends 10,000 garbage and forged messages (as fast as it can,
   500 at a time while the queue holds fewer than 1,000); every one must end in the
   dead-letter queue, and nothing else change;
5. leaves: the watcher removes every host;
6. Slurm alone: ``Slurm.add_hosts`` and ``remove_hosts`` of as many hosts, called directly.

It prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from cfncluster_node import commands, logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import AwsSettings, SlurmSettings, SqsWatcherSettings
from cfncluster_node.local.cloud import (
    ClusterResources,
    Instances,
    Member,
    MotoServer,
    create_cluster_resources,
    create_compute_group,
    forgeries,
)
from cfncluster_node.local.slurm import LocalSlurm, SlurmUnavailable
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.sqswatcher import SqsWatcher
from cfncluster_node.protocol import LEAVE_EVENT, READY_EVENT, table_definition
from cfncluster_node.schedulers import Host
from cfncluster_node.schedulers.slurm import Slurm

REGION = "us-east-1"
STACK = "bench"
GROUP = f"{STACK}-compute"
SQS_BATCH = 10
DDB_BATCH = 25
FLOOR_RECEIVERS = 4
SLOTS = 4
BURST_POLL_S = 0.1  # how often slurmctld and the queue are asked during a burst
SINGLE_POLL_S = 0.02  # how often slurmctld is asked for the one host of a single event
PHASE_TIMEOUT_S = 120.0
SINGLE_TIMEOUT_S = 30.0

console = Console(stderr=True)


# --------------------------------------------------------------------------- results


@dataclass
class Burst:
    """One stream of notices and what became of it; times from the first send, seconds."""

    label: str
    count: int
    fed_s: float  # the last send answered
    done_s: float | None  # every host in (or out of) Slurm; None: not within the timeout
    rows_s: float | None  # every row written to the table
    empty_s: float | None  # the queue empty: every message deleted
    latencies: list[float]  # per host: its send -> seen in Slurm (polled every 100 ms)
    scheduler_calls: int
    batches: list[int]  # table rows written per watcher batch
    aws_calls: list[tuple[str, float]]  # the watcher's: (call, seconds)

    @property
    def rate(self) -> float | None:
        return self.count / self.done_s if self.done_s else None

    @property
    def tail_s(self) -> float | None:
        return self.done_s - self.fed_s if self.done_s is not None else None


@dataclass
class Floor:
    count: int
    fed_s: float
    sqs_s: float | None  # first send -> every message received and deleted
    ddb_s: float  # batch_write_item of ``count`` rows
    duplicates: int  # messages moto delivered more than once

    @property
    def total_s(self) -> float | None:
        return self.sqs_s + self.ddb_s if self.sqs_s is not None else None


@dataclass
class Flood:
    count: int
    fed_s: float
    drained_s: float | None  # the queue empty again; None: not within the timeout
    dead_lettered: int
    ec2_calls: int
    dead_letter_calls: int  # SendMessageBatch to the dead-letter queue
    unchanged: bool  # the hosts in Slurm are those before the flood

    @property
    def rate(self) -> float | None:
        return self.count / self.drained_s if self.drained_s else None


@dataclass
class Singles:
    joins: list[float]
    leaves: list[float]
    missed: int  # events not seen within SINGLE_TIMEOUT_S


@dataclass
class Direct:
    count: int
    add_s: float
    add_calls: int
    remove_s: float
    remove_calls: int


@dataclass
class Results:
    hosts: int
    rate: float
    floor: Floor
    joins: Burst
    singles: Singles
    flood: Flood
    leaves: Burst
    direct: Direct
    log_problems: Counter[str]
    dead_letters: int
    environment: str


# ---------------------------------------------------------------------- instruments


@dataclass
class Probe:
    """What the bench sees of the watcher without changing it."""

    aws_started: Counter[str] = field(default_factory=Counter)
    aws_calls: list[tuple[str, float]] = field(default_factory=list)  # (call, seconds)
    commands: Counter[str] = field(default_factory=Counter)
    written: dict[tuple[str, InstanceState], float] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)


class ObservedAws(Aws):
    """The watcher's AWS clients, timing every call."""

    def __init__(self, settings: AwsSettings, region: str, probe: Probe) -> None:
        super().__init__(settings, region)
        self._probe = probe

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        name = f"{service} {operation}"
        self._probe.aws_started[name] += 1
        started = time.monotonic()
        try:
            return await super().call(service, operation, **params)
        finally:
            self._probe.aws_calls.append((name, time.monotonic() - started))

    async def pages(
        self, service: str, operation: str, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Each page is a call of its own, timed from the request to its answer."""
        name = f"{service} {operation}"
        started = time.monotonic()
        async for page in super().pages(service, operation, **params):
            self._probe.aws_started[name] += 1
            self._probe.aws_calls.append((name, time.monotonic() - started))
            yield page
            started = time.monotonic()


class ObservedTable(InstanceTable):
    """The watcher's table, noting when each row is durably written."""

    def __init__(self, aws: Aws, name: str, probe: Probe) -> None:
        super().__init__(aws, name)
        self._probe = probe

    async def put_many(
        self, records: Sequence[InstanceRecord], read: Mapping[str, InstanceRecord]
    ) -> set[str]:
        conflicts = await super().put_many(records, read)
        now = time.monotonic()
        if records:
            self._probe.batches.append(len(records))
        for record in records:
            self._probe.written[(record.instance_id, record.state)] = now
        return conflicts


@contextlib.contextmanager
def counting_commands(probe: Probe) -> Iterator[None]:
    """Count the programs the scheduler backend runs (every one goes through commands.run)."""
    original = commands.run

    async def run(argv: Sequence[str], **kwargs: Any) -> commands.CommandResult:
        probe.commands[Path(argv[0]).name] += 1
        return await original(argv, **kwargs)

    commands.run = run  # type: ignore[assignment]
    try:
        yield
    finally:
        commands.run = original  # type: ignore[assignment]


async def slurm_nodes(conf: Path, *names: str) -> dict[str, str]:
    """Node name -> State, straight from scontrol and not counted as the watcher's.

    Parsed with str.find: the backend's parser (and even one regex) costs 20-60 ms per
    1,000 nodes, which every 100 ms would take a good part of the watcher's CPU.
    """
    process = await asyncio.create_subprocess_exec(
        "scontrol",
        "-o",
        "-F",
        "show",
        "node",
        *([",".join(names)] if names else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "SLURM_CONF": str(conf)},
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:  # "Node ... not found"
        return {}
    states = {}
    for line in stdout.decode().splitlines():
        state = line.find(" State=") + len(" State=")
        if line.startswith("NodeName=") and state >= len(" State="):
            name = line[len("NodeName=") : line.find(" ")]
            states[name] = line[state : line.find(" ", state)]
    return states


def registered(state: str | None) -> bool:
    """A host is registered once created and resumed (no longer FUTURE)."""
    return state is not None and "FUTURE" not in state


# --------------------------------------------------------------------------- inputs


def notice(event: str, node: Member) -> str:
    """What a compute node sends when it is ready, or when it shuts down."""
    return node.notice(event, slots=SLOTS if event == READY_EVENT else None)


# ---------------------------------------------------------------------------- feeding


async def feed(
    instances: Instances,
    queue_url: str,
    bodies: Sequence[tuple[str, Member, str]],
    *,
    rate: float,
    started: float,
    sent: dict[str, float],
) -> float:
    """Send (key, sender, body) triples at ``rate`` messages/s from ``started``, each from
    its own node, ten nodes at each tick.

    Each tick goes at its scheduled time whether or not the previous one has been
    answered, so the rate holds however slow moto gets. ``sent`` gets each key's send
    time. Returns when the last message is answered.
    """
    period = SQS_BATCH / rate
    async with asyncio.TaskGroup() as group:
        for n, start in enumerate(range(0, len(bodies), SQS_BATCH)):
            await asyncio.sleep(max(0.0, started + n * period - time.monotonic()))
            now = time.monotonic()
            for key, sender, body in bodies[start : start + SQS_BATCH]:
                sent[key] = now
                group.create_task(instances.send(sender.instance_id, [body], queue_url=queue_url))
    return time.monotonic()


async def queue_empty(aws: Aws, queue_url: str, deadline: float) -> float | None:
    """When the queue holds nothing, visible or in flight; None at the deadline."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    while time.monotonic() < deadline:
        response = await aws.call(
            "sqs", "get_queue_attributes", QueueUrl=queue_url, AttributeNames=names
        )
        if all(int(response["Attributes"][name]) == 0 for name in names):
            return time.monotonic()
        await asyncio.sleep(BURST_POLL_S)
    return None


# ------------------------------------------------------------------------------ floor


async def run_floor(
    aws: Aws, instances: Instances, nodes: Sequence[Member], *, rate: float
) -> Floor:
    """The least any watcher must do: receive and delete the notices, write the rows."""
    queue_url, table = await create_floor_resources(aws)
    fed, sqs_s, duplicates = await floor_sqs(aws, instances, queue_url, nodes, rate=rate)
    ddb_s = await floor_ddb(aws, table, nodes)
    return Floor(len(nodes), fed, sqs_s, ddb_s, duplicates)


async def create_floor_resources(aws: Aws) -> tuple[str, str]:
    """A queue like the cluster's (same attributes) and a table like the watcher's."""
    cluster_url = (await aws.call("sqs", "get_queue_url", QueueName=f"{STACK}-queue"))["QueueUrl"]
    attributes = (
        await aws.call(
            "sqs",
            "get_queue_attributes",
            QueueUrl=cluster_url,
            AttributeNames=["RedrivePolicy", "VisibilityTimeout"],
        )
    )["Attributes"]
    queue_url = (
        await aws.call("sqs", "create_queue", QueueName=f"{STACK}-floor", Attributes=attributes)
    )["QueueUrl"]
    table = f"{STACK}-floor-instances"
    await aws.call("dynamodb", "create_table", **table_definition(table))
    return queue_url, table


async def floor_sqs(
    aws: Aws, instances: Instances, queue_url: str, nodes: Sequence[Member], *, rate: float
) -> tuple[float, float | None, int]:
    """(fed, all deleted or None, duplicates), times from the first send."""
    bodies = [(node.instance_id, node, notice(READY_EVENT, node)) for node in nodes]
    seen: set[str] = set()
    deliveries = 0
    finished = asyncio.Event()
    finished_at = 0.0

    async def receiver() -> None:
        nonlocal deliveries, finished_at
        while not finished.is_set():
            # A short long-poll, so that the receivers end by themselves: a cancelled
            # long poll would live on in moto and swallow the next phase's messages.
            response = await aws.call(
                "sqs",
                "receive_message",
                QueueUrl=queue_url,
                MaxNumberOfMessages=SQS_BATCH,
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
            )
            received = response.get("Messages", [])
            if not received:
                continue
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)
            ]
            await aws.call("sqs", "delete_message_batch", QueueUrl=queue_url, Entries=entries)
            deliveries += len(received)
            seen.update(m["MessageId"] for m in received)
            if len(seen) >= len(nodes) and not finished.is_set():
                finished_at = time.monotonic()
                finished.set()

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        producer = group.create_task(
            feed(instances, queue_url, bodies, rate=rate, started=started, sent={})
        )
        receivers = [group.create_task(receiver()) for _ in range(FLOOR_RECEIVERS)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), PHASE_TIMEOUT_S)
        finished.set()  # on a timeout, the receivers stop too
        await asyncio.gather(*receivers)
    done = finished_at - started if len(seen) >= len(nodes) else None
    return producer.result() - started, done, deliveries - len(seen)


async def floor_ddb(aws: Aws, table: str, nodes: Sequence[Member]) -> float:
    now = datetime.now(UTC)
    items = [
        InstanceRecord(
            node.instance_id,
            InstanceState.READY,
            now,
            now,
            hostname=node.hostname,
            address=node.address,
            slots=SLOTS,
            instance_type="c5.xlarge",
        ).to_item()
        for node in nodes
    ]
    writers = asyncio.Semaphore(4)

    async def write(chunk: list[dict[str, Any]]) -> None:
        async with writers:
            request = {table: [{"PutRequest": {"Item": item}} for item in chunk]}
            response = await aws.call("dynamodb", "batch_write_item", RequestItems=request)
            if response.get("UnprocessedItems"):
                raise RuntimeError("moto left items unprocessed")

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for start in range(0, len(items), DDB_BATCH):
            group.create_task(write(items[start : start + DDB_BATCH]))
    return time.monotonic() - started


# ---------------------------------------------------------------------------- watcher


@dataclass
class Bench:
    """What the watcher phases share."""

    aws: Aws  # the bench's own clients: the monitoring
    instances: Instances  # the compute nodes, each sending as itself
    queue_url: str
    dead_letter_url: str
    topic_arn: str
    slurm_conf: Path
    rate: float
    probe: Probe
    watcher: asyncio.Task[None]

    def check_watcher(self) -> None:
        if self.watcher.done():
            self.watcher.result()  # raises what killed it
            raise RuntimeError("the watcher stopped on its own")


@contextlib.asynccontextmanager
async def running_watcher(
    watcher_aws: Aws, cluster: ClusterResources, slurm: SlurmSettings, probe: Probe
) -> AsyncIterator[asyncio.Task[None]]:
    """The watcher as the daemon runs it, in a task; stopped, whatever happens."""
    registry = Registry(
        ObservedTable(watcher_aws, cluster.table, probe),
        Slurm(slurm),
        default_slots=SLOTS,
        tombstone_for=timedelta(days=7),
    )
    watcher = SqsWatcher(
        watcher_aws,
        SqsWatcherSettings(**cluster.watcher_settings()),
        registry,
        compute_group=GROUP,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        # Started once it polls the queue: its first receive is on its way.
        while not probe.aws_started["sqs receive_message"]:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield task
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        except TimeoutError:
            console.print("[red]the watcher did not stop within 30 s; cancelled[/red]")


async def run_burst(bench: Bench, label: str, event: str, nodes: Sequence[Member]) -> Burst:
    """Feed one notice per node at the bench's rate; time until Slurm shows the result."""
    joining = event == READY_EVENT
    bodies = [(node.hostname, node, notice(event, node)) for node in nodes]
    aws_before, commands_before = len(bench.probe.aws_calls), bench.probe.commands.total()
    batches_before = len(bench.probe.batches)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    wanted = {node.hostname for node in nodes}
    started = time.monotonic()
    deadline = started + PHASE_TIMEOUT_S
    producer = asyncio.create_task(
        feed(bench.instances, bench.queue_url, bodies, rate=bench.rate, started=started, sent=sent)
    )
    try:
        while len(seen) < len(wanted) and time.monotonic() < deadline:
            bench.check_watcher()
            await asyncio.sleep(BURST_POLL_S)
            current = await slurm_nodes(bench.slurm_conf)
            now = time.monotonic()
            for hostname in wanted - seen.keys():
                if registered(current.get(hostname)) == joining:
                    seen[hostname] = now
        fed_at = await producer
    finally:
        producer.cancel()
    empty_at = await queue_empty(bench.aws, bench.queue_url, deadline)
    state = InstanceState.READY if joining else InstanceState.LEFT
    written = [bench.probe.written.get((node.instance_id, state), math.inf) for node in nodes]
    return Burst(
        label=label,
        count=len(nodes),
        fed_s=fed_at - started,
        done_s=max(seen.values()) - started if len(seen) == len(wanted) else None,
        rows_s=max(written) - started if math.inf not in written else None,
        empty_s=empty_at - started if empty_at is not None else None,
        latencies=[seen[hostname] - sent[hostname] for hostname in seen],
        scheduler_calls=bench.probe.commands.total() - commands_before,
        batches=bench.probe.batches[batches_before:],
        aws_calls=bench.probe.aws_calls[aws_before:],
    )


async def run_singles(bench: Bench, nodes: Sequence[Member]) -> Singles:
    """One join then its leave at a time, each sent only once the queue is empty again."""
    result = Singles([], [], 0)
    for node in nodes:
        for event, times in ((READY_EVENT, result.joins), (LEAVE_EVENT, result.leaves)):
            latency = await one_event(bench, event, node)
            if latency is None:
                result.missed += 1
            else:
                times.append(latency)
            await queue_empty(bench.aws, bench.queue_url, time.monotonic() + SINGLE_TIMEOUT_S)
    return result


async def one_event(bench: Bench, event: str, node: Member) -> float | None:
    joining = event == READY_EVENT
    body = notice(event, node)
    started = time.monotonic()
    await bench.instances.send(node.instance_id, [body])
    while time.monotonic() - started < SINGLE_TIMEOUT_S:
        bench.check_watcher()
        state = (await slurm_nodes(bench.slurm_conf, node.hostname)).get(node.hostname)
        if registered(state) == joining:
            return time.monotonic() - started
        await asyncio.sleep(SINGLE_POLL_S)
    return None


async def run_flood(bench: Bench, attacker: Member, victim: Member, count: int) -> Flood:
    """A job on ``attacker`` sends ``count`` messages that must all be dead-lettered:
    unreadable bodies, forged events about ``victim``, its own joins under ``victim``'s
    name and address."""
    kinds = forgeries(attacker, victim, bench.topic_arn)
    garbage = [kinds[n % len(kinds)] for n in range(count)]
    before = await slurm_nodes(bench.slurm_conf)
    dead_before = await depth(bench.aws, bench.dead_letter_url)
    calls_before = len(bench.probe.aws_calls)
    started = time.monotonic()
    for start in range(0, count, 500):
        bench.check_watcher()
        await bench.instances.send(attacker.instance_id, garbage[start : start + 500])
        for _ in range(int(PHASE_TIMEOUT_S / BURST_POLL_S)):
            if await depth(bench.aws, bench.queue_url) < 1000:
                break
            await asyncio.sleep(BURST_POLL_S)
    fed_at = time.monotonic()
    drained_at = await queue_empty(bench.aws, bench.queue_url, fed_at + PHASE_TIMEOUT_S)
    calls = bench.probe.aws_calls[calls_before:]
    return Flood(
        count=count,
        fed_s=fed_at - started,
        drained_s=drained_at - started if drained_at is not None else None,
        dead_lettered=await depth(bench.aws, bench.dead_letter_url) - dead_before,
        ec2_calls=sum(1 for call, _ in calls if call.startswith("ec2 ")),
        dead_letter_calls=sum(1 for call, _ in calls if call == "sqs send_message_batch"),
        unchanged=await slurm_nodes(bench.slurm_conf) == before,
    )


async def depth(aws: Aws, queue_url: str) -> int:
    """Messages in a queue, visible or in flight."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    response = await aws.call(
        "sqs", "get_queue_attributes", QueueUrl=queue_url, AttributeNames=names
    )
    return sum(int(response["Attributes"][name]) for name in names)


# ---------------------------------------------------------------------- Slurm alone


async def run_direct(settings: SlurmSettings, probe: Probe, count: int) -> Direct:
    """The scheduler's share: add then remove ``count`` hosts with one call each."""
    scheduler = Slurm(settings)
    hosts = [
        Host(f"ip-10-3-{i // 250}-{i % 250}", SLOTS, f"127.3.{i // 250}.{i % 250 + 1}", f"i-b{i}")
        for i in range(count)
    ]
    before = probe.commands.total()
    started = time.monotonic()
    await scheduler.add_hosts(hosts)
    add_s = time.monotonic() - started
    add_calls = probe.commands.total() - before
    present = await slurm_nodes(settings.conf or Path())
    if sum(registered(present.get(host.hostname)) for host in hosts) != count:
        raise RuntimeError("add_hosts did not register every host")
    before = probe.commands.total()
    started = time.monotonic()
    await scheduler.remove_hosts([host.hostname for host in hosts])
    remove_s = time.monotonic() - started
    return Direct(count, add_s, add_calls, remove_s, probe.commands.total() - before)


# ------------------------------------------------------------------------------- main


async def bench_all(args: argparse.Namespace, slurm: LocalSlurm) -> Results:
    probe = Probe()
    async with (
        Aws(AwsSettings(), REGION) as aws,
        ObservedAws(AwsSettings(), REGION, probe) as watcher_aws,
    ):
        cluster = await create_cluster_resources(aws, STACK)
        await create_compute_group(aws, GROUP, desired=0, max_size=args.hosts + args.singles)
        async with Instances(
            aws, group=GROUP, queue_url=cluster.queue_url, role_arn=cluster.compute_role_arn
        ) as instances:
            step(f"{args.hosts + args.singles} instances launched in moto's EC2")
            nodes = await instances.launch(args.hosts)
            single_nodes = await instances.launch(args.singles)
            # What each instance has before it sends anything: its role's credentials.
            await asyncio.gather(
                *(instances.credentials(n.instance_id) for n in (*nodes, *single_nodes))
            )
            step(f"floor: {args.hosts} messages received and deleted, {args.hosts} rows written")
            floor = await run_floor(aws, instances, nodes, rate=args.rate)
            with counting_commands(probe):
                async with running_watcher(watcher_aws, cluster, slurm.settings, probe) as watcher:
                    bench = Bench(
                        aws,
                        instances,
                        cluster.queue_url,
                        cluster.dead_letter_url,
                        cluster.topic_arn,
                        slurm.conf,
                        args.rate,
                        probe,
                        watcher,
                    )
                    step(f"joins: {args.hosts} compute nodes join")
                    joins = await run_burst(bench, "joins", READY_EVENT, nodes)
                    step(f"single events: {args.singles} joins and leaves, one at a time")
                    singles = await run_singles(bench, single_nodes)
                    step(f"flood: {args.flood:,} hostile messages from a job on one node")
                    flood = await run_flood(bench, nodes[0], nodes[1], args.flood)
                    step(f"leaves: the {args.hosts} compute nodes leave")
                    leaves = await run_burst(bench, "leaves", LEAVE_EVENT, nodes)
                step(f"Slurm alone: add_hosts and remove_hosts of {args.hosts} hosts")
                direct = await run_direct(slurm.settings, probe, args.hosts)
        # The flood's are expected there; any other would be a message wrongly refused.
        dead_letters = await depth(aws, cluster.dead_letter_url) - flood.dead_lettered
    return Results(
        hosts=args.hosts,
        rate=args.rate,
        floor=floor,
        joins=joins,
        singles=singles,
        flood=flood,
        leaves=leaves,
        direct=direct,
        log_problems=log_problems(args.log),
        dead_letters=dead_letters,
        environment=environment(args.stock_moto, slurm),
    )


def step(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")


def configure_logs(path: Path, level: str) -> Any:
    """The watcher logs as in production (JSON), but to a file, not the terminal."""
    handle = path.open("w")
    logs.configure(level, "json")
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=handle))
    return handle


def log_problems(path: Path) -> Counter[str]:
    problems: Counter[str] = Counter()
    with path.open() as lines:
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("level") in ("warning", "error", "critical"):
                    problems[f"{record['level']} {record.get('event')}"] += 1
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.watcher", description=__doc__)
    parser.add_argument("--hosts", type=int, default=1000, help="compute nodes (1000)")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="messages/s fed to the queue (100)"
    )
    parser.add_argument("--singles", type=int, default=30, help="single join+leave pairs (30)")
    parser.add_argument(
        "--flood", type=int, default=10_000, help="hostile messages in the flood (10000)"
    )
    parser.add_argument(
        "--stock-moto",
        action="store_true",
        help="plain moto_server, without the SQS fixes of cfncluster_node/local/motoserver.py",
    )
    parser.add_argument("--log", type=Path, help="keep the watcher's JSON log in this file")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning"], help="(info)"
    )
    args = parser.parse_args()
    # A plain kill cleans up as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Not under a 0700 /tmp directory: slurmctld runs as the slurm user.
    root = Path(tempfile.mkdtemp(prefix="cfncluster-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    args.log = args.log or root / "watcher.log"
    log_handle = configure_logs(args.log, args.log_level)
    try:
        with contextlib.ExitStack() as cleanup:
            moto = MotoServer(stock=args.stock_moto)
            cleanup.callback(moto.stop)
            slurm = LocalSlurm(root / "slurm")
            cleanup.callback(slurm.stop)
            step("starting moto_server and slurmctld")
            moto.start()
            moto.use()
            slurm.start()
            results = asyncio.run(bench_all(args, slurm))
            step("stopping slurmctld and moto_server")
    except SlurmUnavailable as exc:
        raise SystemExit(f"cannot start Slurm: {exc}") from None
    except KeyboardInterrupt:
        console.print("interrupted: the watcher, slurmctld and moto_server are stopped")
        raise SystemExit(130) from None
    finally:
        log_handle.close()
        shutil.rmtree(root, ignore_errors=True)
    report(results)


# ----------------------------------------------------------------------------- report


def seconds(value: float | None) -> str:
    return "timed out" if value is None else f"{value:.2f} s"


def millis(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ratio(ours: float | None, floor: float | None) -> str:
    return "-" if ours is None or not floor else f"{ours / floor:.2f}"


def report(r: Results) -> None:
    out = Console(width=max(120, Console().width))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    out.print(
        f"\n[bold]SQS watcher benchmark[/bold]: {r.hosts:,} hosts, notices fed at "
        f"{r.rate:g} msg/s ({SQS_BATCH} every {SQS_BATCH / r.rate * 1000:.0f} ms) | "
        f"{r.environment}, load {load}"
    )
    out.print(bursts_table(r))
    out.print(singles_table(r.singles))
    out.print(goals_table(r))
    out.print(flood_table(r.flood))
    out.print(direct_table(r.direct))
    out.print(aws_table(r.joins, r.leaves))
    if r.singles.missed:
        out.print(f"[red]single events not seen within {SINGLE_TIMEOUT_S:g} s: {r.singles.missed}")
    out.print(f"dead-lettered messages besides the flood's: {r.dead_letters}")
    if r.log_problems:
        listed = ", ".join(f"{name} x{n}" for name, n in r.log_problems.most_common())
        out.print(f"[yellow]watcher log warnings/errors: {listed}[/yellow]")
    else:
        out.print("watcher log: no warnings or errors")


def new_table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for n, column in enumerate(columns):
        table.add_column(column, justify="left" if n == 0 else "right")
    return table


def bursts_table(r: Results) -> Table:
    f, joins, leaves = r.floor, r.joins, r.leaves
    table = new_table(
        f"Bursts of {r.hosts:,} (seconds from the first send)",
        "",
        "floor: SQS",
        "floor: DynamoDB",
        "floor: total",
        "watcher: joins",
        "watcher: leaves",
    )

    def row(label: str, floor: Sequence[str], *values: str) -> None:
        table.add_row(label, *floor, *values)

    def mean_batch(burst: Burst) -> str:
        size = sum(burst.batches) / len(burst.batches) if burst.batches else 0
        return f"{len(burst.batches)} ({size:.0f})"

    row("last notice sent", [seconds(f.fed_s), "", ""], seconds(joins.fed_s), seconds(leaves.fed_s))
    row(
        "[bold]all applied[/bold] (Slurm)",
        [seconds(f.sqs_s), seconds(f.ddb_s), f"[bold]{seconds(f.total_s)}[/bold]"],
        *(f"[bold]{seconds(b.done_s)}[/bold]" for b in (joins, leaves)),
    )
    row(
        "  after the last send",
        [seconds(f.sqs_s - f.fed_s if f.sqs_s is not None else None), "", ""],
        *(seconds(b.tail_s) for b in (joins, leaves)),
    )
    row(
        "  messages/s",
        [f"{f.count / f.sqs_s:.0f}" if f.sqs_s else "-", "", ""],
        *(f"{b.rate:.0f}" if b.rate else "-" for b in (joins, leaves)),
    )
    row("rows written", ["", "", ""], *(seconds(b.rows_s) for b in (joins, leaves)))
    row("queue empty", ["", "", ""], *(seconds(b.empty_s) for b in (joins, leaves)))
    for p in (50, 99):
        row(
            f"per host, send -> Slurm, p{p}",
            ["", "", ""],
            *(millis(percentile(b.latencies, p)) for b in (joins, leaves)),
        )
    row("scontrol calls", ["", "", ""], *(str(b.scheduler_calls) for b in (joins, leaves)))
    row("batches (mean rows)", ["", "", ""], mean_batch(joins), mean_batch(leaves))
    row("duplicate deliveries", [str(f.duplicates), "", ""], "", "")
    return table


def singles_table(singles: Singles) -> Table:
    table = new_table(
        "Single events, queue otherwise idle (send -> seen in Slurm, polled every 20 ms)",
        "event",
        "n",
        "p50",
        "p90",
        "p99",
        "max",
    )
    for label, values in (("join", singles.joins), ("leave", singles.leaves)):
        table.add_row(
            label, str(len(values)), *(millis(percentile(values, p)) for p in (50, 90, 99, 100))
        )
    return table


def goals_table(r: Results) -> Table:
    table = new_table("Against the goals", "figure", "value", "goal")
    table.add_row("joins: watcher / floor", ratio(r.joins.done_s, r.floor.total_s), "<= 1.5")
    table.add_row("leaves: watcher / floor", ratio(r.leaves.done_s, r.floor.total_s), "<= 1.5")
    table.add_row(
        "single join p50",
        millis(percentile(r.singles.joins, 50)),
        "< 1 s (the lineage polled every 30 s)",
    )
    return table


def flood_table(f: Flood) -> Table:
    table = new_table(
        f"Flood: {f.count:,} hostile messages from one node's credentials", "figure", "value"
    )
    table.add_row("sent (500 at a time, while fewer than 1,000 queued)", seconds(f.fed_s))
    table.add_row("[bold]queue empty again[/bold]", f"[bold]{seconds(f.drained_s)}[/bold]")
    table.add_row("  messages/s", f"{f.rate:.0f}" if f.rate else "-")
    table.add_row("dead-lettered", f"{f.dead_lettered:,}")
    table.add_row("  SendMessageBatch calls to the dead-letter queue", str(f.dead_letter_calls))
    table.add_row("EC2 calls (at most one a batch: the node's own joins)", str(f.ec2_calls))
    table.add_row("Slurm's hosts unchanged", "yes" if f.unchanged else "[red]NO[/red]")
    return table


def direct_table(d: Direct) -> Table:
    table = new_table("Slurm alone: one backend call for all hosts", "call", "time", "scontrol")
    table.add_row(f"add_hosts({d.count:,} hosts)", seconds(d.add_s), str(d.add_calls))
    table.add_row(f"remove_hosts({d.count:,} hosts)", seconds(d.remove_s), str(d.remove_calls))
    return table


def aws_table(joins: Burst, leaves: Burst) -> Table:
    table = new_table(
        "The watcher's AWS calls: count, mean / max latency (receives include long-poll waits)",
        "call",
        "joins",
        "leaves",
    )

    def summary(calls: list[tuple[str, float]], name: str) -> str:
        times = [seconds for call, seconds in calls if call == name]
        if not times:
            return "-"
        return f"{len(times)}: {millis(sum(times) / len(times))} / {millis(max(times))}"

    for name in sorted({call for call, _ in joins.aws_calls + leaves.aws_calls}):
        table.add_row(name, summary(joins.aws_calls, name), summary(leaves.aws_calls, name))
    return table


def environment(stock_moto: bool, slurm: LocalSlurm) -> str:
    version = subprocess.run(
        ["scontrol", "--version"], env={**os.environ, **slurm.env}, capture_output=True, text=True
    )
    fixes = "stock" if stock_moto else "with cfncluster_node/local/motoserver.py"
    return (
        f"moto {metadata.version('moto')} ({fixes}), {version.stdout.strip() or 'slurm ?'}, "
        f"{os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
