"""The shape of every head-node service, and the periodic loop three of them share.

A service has a ``name``, a ``progress`` and one entry point, ``async def run(self,
stop)``, which returns when ``stop`` is set (in burst mode, once its work is done). The
supervisor is the only thing that knows about restarts and signals.

``Periodic`` is the publisher's, the reconciler's and scale-in's: one ``tick`` every
``interval`` seconds on a fixed schedule. A tick that cannot reach AWS or the scheduler
is logged and tried again at the next one; only a bug crashes the service, and the
supervisor restarts it. ``progress`` keeps the last tick that did its work, which the
supervisor shows in systemd's STATUS line and in the health file ``status`` reads.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cfncluster_node import logs
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings
from cfncluster_node.schedulers import SchedulerError


@dataclass
class Progress:
    """When a service last did its work, and how many attempts have failed since."""

    last_success: datetime | None = None
    failures: int = 0

    def succeeded(self) -> None:
        self.last_success = datetime.now(UTC)
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1


class Service(Protocol):
    name: str
    progress: Progress

    async def run(self, stop: asyncio.Event) -> None: ...


class Periodic(ABC):
    """A service that ticks every ``interval`` seconds.

    aws: the client factory. cluster: the ``[cluster]`` section. interval: seconds
    between the starts of two ticks. burst: tick once, then return.
    """

    name: str

    def __init__(
        self, aws: Aws, cluster: ClusterSettings, interval: float, *, burst: bool = False
    ) -> None:
        self._aws = aws
        self._cluster = cluster
        self._interval = interval
        self._burst = burst
        self._log = logs.get()
        # Set for good by run(); a tick called directly (tests) is never stopped.
        self._stop = asyncio.Event()
        self.progress = Progress()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await every(self._interval, self._tick_once, stop, burst=self._burst)

    async def _tick_once(self) -> None:
        try:
            done = await self.tick()
        except (AwsError, SchedulerError) as exc:
            self._log.warning("tick_failed", error=str(exc))
            done = None
        if done is None:
            self.progress.failed()
        else:
            self.progress.succeeded()

    @abstractmethod
    async def tick(self) -> object | None:
        """One unit of work; None when it could not be done (and was logged why)."""


async def every(
    interval: float, tick: Callable[[], Awaitable[object]], stop: asyncio.Event, *, burst: bool
) -> None:
    """Run ``tick`` every ``interval`` seconds until ``stop`` (once, in burst mode).

    On a fixed schedule: a slow tick does not push the next ones back.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    ticks = 0
    while True:
        await tick()
        if burst:
            return
        ticks += 1
        delay = max(0.0, started + ticks * interval - loop.time())
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return
        except TimeoutError:
            pass
