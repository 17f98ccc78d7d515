"""What AWS does around a cluster and moto does not, played for the demo.

- ``Alarms``: CloudWatch's evaluation of the stack's pending-jobs alarms (moto stores
  alarms but never evaluates them, and skips scaling policies), read from the deployed
  template and run against the metric the publisher really put, with the policies'
  adjustments and cooldowns applied to the group. Time is compressed: a CloudWatch
  minute lasts ``period_s``.
- ``Fleet``: instances moto's group launches or terminates become Auto Scaling's
  notifications to the stack's topic and, for launches, compute nodes that boot (a
  network namespace holding the instance's own address, with a real slurmd,
  ``local.slurm.ComputeNodes``) and announce themselves to the queue as the compute AMI's
  unit does, with their instance's role session.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cfncluster_node.aws import Aws
from cfncluster_node.local.cloud import Instances, Member, publish_autoscaling, send_messages
from cfncluster_node.local.slurm import ComputeNodes
from cfncluster_node.node import group
from cfncluster_node.schedulers import Scheduler

_BOOT_POLLS = 600  # two minutes for the head node to register a booting node
LAUNCH = "autoscaling:EC2_INSTANCE_LAUNCH"
TERMINATE = "autoscaling:EC2_INSTANCE_TERMINATE"
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}


@dataclass(frozen=True)
class Alarm:
    name: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str
    comparison: str
    threshold: float
    evaluation_periods: int
    adjustment: int
    cooldown_periods: float

    def breaching(self, values: list[float]) -> bool:
        """ALARM: each of the last ``evaluation_periods`` periods breaches the threshold."""
        recent = values[-self.evaluation_periods :]
        compare = _COMPARISONS[self.comparison]
        return len(recent) == self.evaluation_periods and all(
            compare(value, self.threshold) for value in recent
        )


def alarms_of(template: dict[str, Any], stack: str) -> list[Alarm]:
    """The stack's alarms and the step each one's scaling policy takes."""
    resources = template["Resources"]
    found = []
    for name, resource in sorted(resources.items()):
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        alarm = resource["Properties"]
        [action] = alarm["AlarmActions"]
        step = resources[action["Ref"]]["Properties"]
        dimensions = tuple(
            (d["Name"], stack if d["Value"] == {"Ref": "AWS::StackName"} else d["Value"])
            for d in alarm["Dimensions"]
        )
        found.append(
            Alarm(
                name=name,
                namespace=alarm["Namespace"],
                metric=alarm["MetricName"],
                dimensions=dimensions,
                statistic=alarm["Statistic"],
                comparison=alarm["ComparisonOperator"],
                threshold=float(alarm["Threshold"]),
                evaluation_periods=int(alarm["EvaluationPeriods"]),
                adjustment=int(step["ScalingAdjustment"]),
                cooldown_periods=int(step["Cooldown"]) / int(alarm["Period"]),
            )
        )
    return found


@dataclass
class Journal:
    """What happened, for the live view: the latest lines, and counts."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    counts: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str, line: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.lines.append(f"{datetime.now():%H:%M:%S} {line}")


class Alarms:
    def __init__(
        self,
        aws: Aws,
        alarms: list[Alarm],
        group_name: str,
        period_s: float,
        journal: Journal,
    ) -> None:
        self._aws = aws
        self._alarms = alarms
        self._group = group_name
        self._period_s = period_s
        self._journal = journal
        self.states = {alarm.name: "INSUFFICIENT_DATA" for alarm in alarms}
        self._quiet_until = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._period_s)
            for alarm in self._alarms:
                values = await self._datapoints(alarm)
                state = "ALARM" if alarm.breaching(values) else "OK"
                if state != self.states[alarm.name]:
                    self._journal.note("alarm", f"alarm {alarm.name}: {state}")
                self.states[alarm.name] = state
                # An alarm in ALARM fires its policy every period, but for the cooldown.
                if state == "ALARM" and loop.time() >= self._quiet_until:
                    await self._step(alarm)
                    self._quiet_until = loop.time() + alarm.cooldown_periods * self._period_s

    async def _datapoints(self, alarm: Alarm) -> list[float]:
        now = datetime.now(UTC)
        window = timedelta(seconds=self._period_s * (alarm.evaluation_periods + 2))
        response = await self._aws.call(
            "cloudwatch",
            "get_metric_statistics",
            Namespace=alarm.namespace,
            MetricName=alarm.metric,
            Dimensions=[{"Name": k, "Value": v} for k, v in alarm.dimensions],
            StartTime=now - window,
            EndTime=now,
            # Datapoints come one per publisher interval: one-second buckets keep them apart.
            Period=1,
            Statistics=[alarm.statistic],
        )
        points = sorted(response.get("Datapoints", []), key=lambda p: p["Timestamp"])
        return [float(p[alarm.statistic]) for p in points]

    async def _step(self, alarm: Alarm) -> None:
        members = await group.describe(self._aws, self._group)
        wanted = min(members.max_size, members.desired + alarm.adjustment)
        if wanted == members.desired:
            return
        await group.set_desired(self._aws, self._group, wanted)
        self._journal.note(
            "scale_out", f"{alarm.name} -> scaling policy: desired {members.desired} -> {wanted}"
        )


@dataclass
class Node:
    """A booting or booted compute node: its instance as EC2 describes it."""

    member: Member

    @property
    def instance_id(self) -> str:
        return self.member.instance_id

    @property
    def hostname(self) -> str:
        return self.member.hostname

    @property
    def address(self) -> str:
        return self.member.address


class Fleet:
    """Turns the group's members into compute nodes, and their going into notifications."""

    def __init__(
        self,
        aws: Aws,
        outputs: dict[str, str],
        nodes: ComputeNodes,
        scheduler: Scheduler,
        journal: Journal,
        *,
        cpus: int,
    ) -> None:
        self._aws = aws
        self._group = outputs["ComputeGroup"]
        self._topic = outputs["TopicArn"]
        self._queue = outputs["QueueUrl"]
        self._instances = Instances(
            aws, group=self._group, queue_url=self._queue, role_arn=outputs["ComputeRoleArn"]
        )
        self._nodes = nodes
        self._scheduler = scheduler
        self._journal = journal
        self._cpus = cpus
        self.running: dict[str, Node] = {}
        self.peak = 0
        self._boots: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        async with self._instances:
            try:
                while True:
                    members = set((await group.describe(self._aws, self._group)).members)
                    for instance_id in sorted(members - set(self.running)):
                        await self._launch(instance_id)
                    for instance_id in sorted(set(self.running) - members):
                        await self._terminate(instance_id)
                    self.peak = max(self.peak, len(self.running))
                    await asyncio.sleep(0.5)
            finally:
                for boot in list(self._boots):
                    boot.cancel()

    async def _launch(self, instance_id: str) -> None:
        # The node boots at the address EC2 gave the instance, under the name it implies.
        [member] = await self._instances.describe([instance_id])
        node = Node(member)
        self.running[instance_id] = node
        await publish_autoscaling(self._aws, self._topic, LAUNCH, instance_id)
        self._journal.note("launched", f"{instance_id} launched: {node.hostname} boots")
        boot = asyncio.create_task(self._boot(node))
        self._boots.add(boot)
        boot.add_done_callback(self._boots.discard)

    async def _boot(self, node: Node) -> None:
        """The compute node's own start: announce ready, as itself, then its slurmd joins."""
        await self._instances.join(node.member, slots=self._cpus)
        for _ in range(_BOOT_POLLS):
            if node.instance_id not in self.running:
                return  # terminated while it booted
            if node.hostname in {h.hostname for h in await self._scheduler.list_hosts()}:
                break
            await asyncio.sleep(0.2)
        else:
            self._journal.note("lost", f"{node.hostname} was never registered")
            return
        if node.instance_id in self.running:
            await asyncio.to_thread(self._nodes.start, node.hostname, node.address, self._cpus)
            self._journal.note("joined", f"{node.hostname} registered; its slurmd is up")

    async def _terminate(self, instance_id: str) -> None:
        node = self.running.pop(instance_id)
        await asyncio.to_thread(self._nodes.stop, node.hostname)
        await publish_autoscaling(self._aws, self._topic, TERMINATE, instance_id)
        self._journal.note("terminated", f"{instance_id} ({node.hostname}) terminated")

    async def inject_garbage(self) -> None:
        """What a real queue delivers sooner or later: a message that can never succeed."""
        await send_messages(self._aws, self._queue, [json.dumps({"Type": "Notification"})])
        self._journal.note("garbage", "a malformed message is sent to the queue")
