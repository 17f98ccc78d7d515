"""The supervisor: restarts with backoff, isolation between services, bounded stop."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog

from cfncluster_node.config import SupervisorSettings
from cfncluster_node.node.service import Progress, Service
from cfncluster_node.node.supervisor import supervise

FAST = SupervisorSettings(
    restart_backoff_initial=0.01, restart_backoff_max=0.04, stop_timeout=0.5, health_file=None
)


class Crashing:
    name = "crashing"

    def __init__(self, crashes: int) -> None:
        self.progress = Progress()
        self.crashes = crashes
        self.starts: list[float] = []
        self.survived = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"crash {len(self.starts)}")
        self.survived.set()
        await stop.wait()


class Steady:
    name = "steady"

    def __init__(self) -> None:
        self.progress = Progress()
        self.runs = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        await stop.wait()


class Stubborn:
    name = "stubborn"
    progress = Progress()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(3600)  # ignores stop


async def test_crashed_service_restarts_with_growing_backoff_while_others_run() -> None:
    crashing, steady, stop = Crashing(crashes=4), Steady(), asyncio.Event()
    with structlog.testing.capture_logs() as records:
        task = asyncio.create_task(supervise([crashing, steady], stop, FAST))
        await asyncio.wait_for(crashing.survived.wait(), 2)
        stop.set()
        await asyncio.wait_for(task, 2)

    gaps = [b - a for a, b in zip(crashing.starts, crashing.starts[1:], strict=False)]
    assert gaps[0] >= 0.01 and gaps[2] >= 0.04 and gaps[3] >= 0.04  # doubled, then capped
    assert steady.runs == 1
    crashes = [r for r in records if r["event"] == "service_crashed"]
    assert [r["restart_in_s"] for r in crashes] == [0.01, 0.02, 0.04, 0.04]
    assert all(r["service"] == "crashing" and r["exc_info"] for r in crashes)


async def test_stop_cancels_a_service_that_does_not_stop_in_time() -> None:
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as records:
        task = asyncio.create_task(supervise([Stubborn(), Steady()], stop, FAST))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 3)
    assert 0.5 <= time.monotonic() - started < 2
    [late] = [r for r in records if r["event"] == "stop_timeout_exceeded"]
    assert late["services_cancelled"] == 1


async def test_services_that_finish_their_work_end_the_supervisor() -> None:
    class Burst:
        name = "burst"
        progress = Progress()

        async def run(self, stop: asyncio.Event) -> None:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(supervise([Burst(), Burst()], asyncio.Event(), FAST), 2)


async def test_the_health_file_shows_each_services_state_and_last_success(tmp_path: Path) -> None:
    class Working:
        name = "working"

        def __init__(self) -> None:
            self.progress = Progress()

        async def run(self, stop: asyncio.Event) -> None:
            self.progress.succeeded()
            await stop.wait()

    class Failing(Working):
        name = "failing"

        async def run(self, stop: asyncio.Event) -> None:
            self.progress.failed()
            self.progress.failed()
            await stop.wait()

    health = tmp_path / "run" / "health.json"
    stop = asyncio.Event()
    settings = FAST.model_copy(update={"health_file": health})
    task = asyncio.create_task(supervise([Working(), Failing()], stop, settings))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2)

    report = json.loads(health.read_text())
    assert report["working"]["state"] == "stopped"
    assert datetime.fromisoformat(report["working"]["last_success"]) <= datetime.now(UTC)
    assert report["working"]["failures_since"] == 0
    assert report["failing"] == {"state": "stopped", "last_success": None, "failures_since": 2}


async def test_a_replacement_stops_the_running_service_then_runs_in_its_place() -> None:
    class Versioned:
        name = "versioned"

        def __init__(self, version: int) -> None:
            self.version = version
            self.progress = Progress()
            self.running = asyncio.Event()
            self.stopped = False

        async def run(self, stop: asyncio.Event) -> None:
            self.running.set()
            await stop.wait()
            self.stopped = True

    first, second, steady = Versioned(1), Versioned(2), Steady()
    stop, replacements = asyncio.Event(), asyncio.Queue[Service]()
    with structlog.testing.capture_logs() as records:
        task = asyncio.create_task(supervise([first, steady], stop, FAST, replacements))
        await asyncio.wait_for(first.running.wait(), 2)
        replacements.put_nowait(second)
        await asyncio.wait_for(second.running.wait(), 2)

        assert first.stopped and not second.stopped
        assert steady.runs == 1  # the others run on, untouched
        stop.set()
        await asyncio.wait_for(task, 2)

    assert second.stopped
    assert [r["service"] for r in records if r["event"] == "service_replaced"] == ["versioned"]
