"""The supervisor: runs every service in one TaskGroup, restarts a crashed one, stops all.

Under systemd it speaks the notify protocol (``sdnotify``): READY once the services
start, a STATUS line with each service's state and last success, WATCHDOG from the event
loop, STOPPING on SIGTERM. The same states go to ``supervisor.health_file`` for
``cfncluster-node status``.

A service (``service.Service``) that raises is logged with its traceback and restarted
after a capped exponential backoff; the others keep running. SIGTERM and SIGINT set
``stop``; a service still running ``stop_timeout`` seconds later is cancelled, so the
process always exits in bounded time.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

import uvloop

from cfncluster_node import logs
from cfncluster_node.config import SupervisorSettings
from cfncluster_node.node import sdnotify
from cfncluster_node.node.service import Service

# A service that ran this long before crashing starts again from the initial backoff.
_STABLE_AFTER_S = 60.0
# How often the services' progress is looked at for the STATUS line and the health file.
_REPORT_EVERY_S = 5.0


async def supervise(
    services: Sequence[Service], stop: asyncio.Event, settings: SupervisorSettings
) -> None:
    states = _States(services, settings.health_file)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_keep_running(s, stop, settings, states)) for s in services]
        deadline = group.create_task(_cancel_when_late(stop, settings.stop_timeout, tasks))
        reporter = group.create_task(_report_progress(states))
        # Whatever had to come first (storage, the scheduler) is up: systemd may go on.
        sdnotify.notify(READY=1, STATUS=states.summary())
        await asyncio.wait(tasks)
        deadline.cancel()
        reporter.cancel()
    states.report()


class _States:
    """Each service's state and progress: systemd's STATUS line and the health file."""

    def __init__(self, services: Sequence[Service], health_file: Path | None) -> None:
        self._services = services
        self._states = {service.name: "running" for service in services}
        self._health_file = health_file
        self._reported: tuple[str, str] | None = None

    def set(self, name: str, state: str) -> None:
        self._states[name] = state
        self.report()

    def summary(self) -> str:
        by_state: dict[str, list[str]] = {}
        for service in self._services:
            by_state.setdefault(self._states[service.name], []).append(_with_progress(service))
        return "; ".join(f"{state}: {', '.join(names)}" for state, names in by_state.items())

    def health(self) -> str:
        return json.dumps(
            {
                service.name: {
                    "state": self._states[service.name],
                    "last_success": _isoformat(service.progress.last_success),
                    "failures_since": service.progress.failures,
                }
                for service in self._services
            },
            indent=2,
        )

    def report(self) -> None:
        """Send what changed since the last report."""
        now = (self.summary(), self.health())
        if now == self._reported:
            return
        if self._reported is None or now[0] != self._reported[0]:
            sdnotify.notify(STATUS=now[0])
        if self._health_file is not None:
            _write_atomically(self._health_file, now[1])
        self._reported = now


def _with_progress(service: Service) -> str:
    last = service.progress.last_success
    return service.name if last is None else f"{service.name} (ok {last:%H:%M:%S})"


def _isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(text + "\n")
        staged.replace(path)
    except OSError as exc:
        logs.get().warning("health_file_failed", path=str(path), error=str(exc))


async def _report_progress(states: _States) -> None:
    while True:
        await asyncio.sleep(_REPORT_EVERY_S)
        states.report()


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
