"""Benchmark of the elastic fleet's periodic services at the scale the issue names.

Run by ``make bench`` after the SQS watcher's (``.venv/bin/python -m bench.fleet``).
Against moto's server and a private slurmctld:

1. the publisher's tick with 1,000 registered nodes and 10,000 pending jobs: its cost in
   scheduler commands and AWS calls, and its time;
2. the reconciler's pass over 1,000 instances (EC2, the table and Slurm): its time, and its
   cost in AWS calls, with nothing to heal and then with 100 instances gone.

It prints figures and asserts nothing about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cfncluster_node import commands, logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import (
    AwsSettings,
    ClusterSettings,
    PublisherSettings,
    ReconcilerSettings,
)
from cfncluster_node.local.cloud import (
    Instances,
    MotoServer,
    create_cluster_resources,
    create_compute_group,
)
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.messages import EventKind, InstanceEvent
from cfncluster_node.node.publisher import Publisher
from cfncluster_node.node.reconciler import Reconciler
from cfncluster_node.node.registry import Registry
from cfncluster_node.schedulers.slurm import Slurm

REGION = "us-east-1"
GROUP = "bench-fleet-compute"
NODES = 1000
PENDING = 10_000
GONE = 100
TICKS = 5


class CountingAws(Aws):
    def __init__(self) -> None:
        super().__init__(AwsSettings(), REGION)
        self.calls: Counter[str] = Counter()

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        self.calls[f"{service} {operation}"] += 1
        return await super().call(service, operation, **params)

    async def pages(
        self, service: str, operation: str, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        # One call to AWS per page.
        async for page in super().pages(service, operation, **params):
            self.calls[f"{service} {operation}"] += 1
            yield page


@contextlib.contextmanager
def counting_commands() -> Iterator[Counter[str]]:
    counted: Counter[str] = Counter()
    original = commands.run

    async def run(argv: Sequence[str], **kwargs: Any) -> commands.CommandResult:
        counted[Path(argv[0]).name] += 1
        return await original(argv, **kwargs)

    commands.run = run  # type: ignore[assignment]
    try:
        yield counted
    finally:
        commands.run = original  # type: ignore[assignment]


async def timed(make: Any, ticks: int) -> tuple[list[float], Counter[str], Counter[str]]:
    """Run ``make(aws)`` ``ticks`` times; seconds per tick, AWS calls and commands per tick."""
    durations = []
    async with CountingAws() as aws:
        with counting_commands() as counted:
            for _ in range(ticks):
                started = time.monotonic()
                await make(aws)
                durations.append(time.monotonic() - started)
        return durations, _per_tick(aws.calls, ticks), _per_tick(counted, ticks)


def _per_tick(counter: Counter[str], ticks: int) -> Counter[str]:
    return Counter({name: count // ticks for name, count in counter.items()})


async def bench(slurm: LocalSlurm, console: Console) -> list[tuple[str, str, str, str]]:
    rows = []
    async with Aws(AwsSettings(), REGION) as aws:
        cluster = await create_cluster_resources(aws, "bench-fleet")
        await create_compute_group(aws, GROUP, desired=0, max_size=NODES)
        async with Instances(
            aws, group=GROUP, queue_url=cluster.queue_url, role_arn=cluster.compute_role_arn
        ) as instances:
            members = await instances.launch(NODES)
        ids = [member.instance_id for member in members]
        settings = slurm.settings
        registry = Registry(
            InstanceTable(aws, cluster.table),
            Slurm(settings),
            default_slots=4,
            tombstone_for=timedelta(days=7),
        )
        now = datetime.now(UTC)
        console.print(f"registering {NODES} instances (table and Slurm)")
        await registry.apply(
            InstanceEvent(
                EventKind.READY,
                member.instance_id,
                now,
                hostname=member.hostname,
                address=member.address,
                slots=4,
            )
            for member in members
        )
        console.print(f"submitting {PENDING} pending jobs (one array)")
        slurm.sbatch(f"--array=1-{PENDING}", "-N", "2", "--wrap", "true")
    cluster_settings = ClusterSettings(
        stack_name="bench", region=REGION, table=cluster.table, compute_group=GROUP
    )

    async def publish(aws: Aws) -> None:
        await Publisher(aws, PublisherSettings(), cluster_settings, Slurm(settings)).tick()

    durations, calls, ran = await timed(publish, TICKS)
    rows.append(
        _row(f"publisher tick: {NODES} nodes, {PENDING:,} pending jobs", durations, calls, ran)
    )

    def reconcile_with(aws: Aws) -> Reconciler:
        fresh = Registry(
            InstanceTable(aws, cluster.table),
            Slurm(settings),
            default_slots=4,
            tombstone_for=timedelta(days=7),
        )
        return Reconciler(aws, ReconcilerSettings(), cluster_settings, fresh)

    async def reconcile(aws: Aws) -> None:
        await reconcile_with(aws).tick()

    durations, calls, ran = await timed(reconcile, TICKS)
    rows.append(_row(f"reconciler pass: {NODES} instances, no drift", durations, calls, ran))

    async with Aws(AwsSettings(), REGION) as aws:
        # Gone without a notification, and not replaced by the group.
        for instance_id in ids[:GONE]:
            await aws.call(
                "autoscaling",
                "terminate_instance_in_auto_scaling_group",
                InstanceId=instance_id,
                ShouldDecrementDesiredCapacity=True,
            )
    durations, calls, ran = await timed(reconcile, 1)
    rows.append(
        _row(f"reconciler pass: {GONE} of {NODES} instances gone, healed", durations, calls, ran)
    )
    return rows


def _row(
    label: str, durations: list[float], calls: Counter[str], ran: Counter[str]
) -> tuple[str, str, str, str]:
    median = statistics.median(durations)
    aws_calls = ", ".join(f"{n} {name}" for name, n in sorted(calls.items()))
    scheduler = ", ".join(f"{n} {name}" for name, n in sorted(ran.items()))
    return label, f"{median * 1000:.0f} ms (n={len(durations)})", aws_calls, scheduler


def main() -> None:
    console = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="cfncluster-bench-fleet-", dir="/var/tmp"))
    root.chmod(0o755)
    log = (root / "services.log").open("w")
    logs.configure("warning", "json", stream=log)
    try:
        with MotoServer() as moto, LocalSlurm(root / "slurm") as slurm:
            moto.use()
            rows = asyncio.run(bench(slurm, console))
    finally:
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title="Elastic fleet services at scale (median per tick)", title_justify="left")
    for column in ("what", "time", "AWS calls per tick", "scheduler commands per tick"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
