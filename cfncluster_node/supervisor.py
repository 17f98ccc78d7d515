"""The supervisor: runs every service in one TaskGroup, restarts a crashed one, stops all.

Under systemd it speaks the notify protocol (``sdnotify``): READY once the services
start, a STATUS line per change of a service's state, WATCHDOG from the event loop,
STOPPING on SIGTERM.

A service is anything with a ``name`` and ``async def run(self, stop)``. It returns when
``stop`` is set (or, in burst mode, when its work is done). A service that raises is
logged with its traceback and restarted after a capped exponential backoff; the others
keep running. SIGTERM and SIGINT set ``stop``; a service still running ``stop_timeout``
seconds later is cancelled, so the process always exits in bounded time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import uvloop

from cfncluster_node import logs, sdnotify
from cfncluster_node.config import SupervisorSettings

# A service that ran this long before crashing starts again from the initial backoff.
_STABLE_AFTER_S = 60.0


class Service(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


async def supervise(
    services: Sequence[Service], stop: asyncio.Event, settings: SupervisorSettings
) -> None:
    states = _States([service.name for service in services])
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_keep_running(s, stop, settings, states)) for s in services]
        deadline = group.create_task(_cancel_when_late(stop, settings.stop_timeout, tasks))
        # Whatever had to come first (storage, the scheduler) is up: systemd may go on.
        sdnotify.notify(READY=1, STATUS=states.summary())
        await asyncio.wait(tasks)
        deadline.cancel()


class _States:
    """Each service's state, summed up in systemd's STATUS line."""

    def __init__(self, names: Sequence[str]) -> None:
        self._states = dict.fromkeys(names, "running")

    def set(self, name: str, state: str) -> None:
        self._states[name] = state
        sdnotify.notify(STATUS=self.summary())

    def summary(self) -> str:
        by_state: dict[str, list[str]] = {}
        for name, state in self._states.items():
            by_state.setdefault(state, []).append(name)
        return "; ".join(f"{state}: {', '.join(names)}" for state, names in by_state.items())


async def _keep_running(
    service: Service, stop: asyncio.Event, settings: SupervisorSettings, states: _States
) -> None:
    logs.bind_service(service.name)
    log = logs.get(service=service.name)
    delay = settings.restart_backoff_initial
    while not stop.is_set():
        started = time.monotonic()
        try:
            await service.run(stop)
            states.set(service.name, "stopped")
            return
        except Exception:
            if time.monotonic() - started > _STABLE_AFTER_S:
                delay = settings.restart_backoff_initial
            log.exception("service_crashed", restart_in_s=delay)
            states.set(service.name, "restarting")
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            log.info("service_restarting")
            states.set(service.name, "running")
        delay = min(delay * 2, settings.restart_backoff_max)


async def _cancel_when_late(
    stop: asyncio.Event, timeout: float, tasks: Sequence[asyncio.Task[None]]
) -> None:
    await stop.wait()
    await asyncio.sleep(timeout)
    late = [task for task in tasks if not task.done()]
    logs.get().error("stop_timeout_exceeded", timeout_s=timeout, services_cancelled=len(late))
    for task in late:
        task.cancel()


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


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop with SIGTERM and SIGINT setting ``stop``."""

    async def entry() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _stopper(stop, signum))
        interval = sdnotify.watchdog_interval()
        watchdog = asyncio.create_task(sdnotify.keep_watchdog_fed(interval)) if interval else None
        try:
            await main(stop)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    uvloop.run(entry())


def _stopper(stop: asyncio.Event, signum: int) -> Callable[[], None]:
    def on_signal() -> None:
        logs.get().info("stop_requested", signal=signal.Signals(signum).name)
        sdnotify.notify(STOPPING=1, STATUS="stopping")
        stop.set()

    return on_signal
