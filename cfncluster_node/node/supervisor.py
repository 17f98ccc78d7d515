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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import uvloop

from cfncluster_node import files, logs
from cfncluster_node.config import SupervisorSettings
from cfncluster_node.node import sdnotify
from cfncluster_node.node.service import Service

# A service that ran this long before crashing starts again from the initial backoff.
_STABLE_AFTER_S = 60.0
# How often the services' progress is looked at for the STATUS line and the health file.
_REPORT_EVERY_S = 5.0


async def supervise(
    services: Sequence[Service],
    stop: asyncio.Event,
    settings: SupervisorSettings,
    replacements: asyncio.Queue[Service] | None = None,
) -> None:
    """Run ``services`` until ``stop`` (or until they all return, in burst mode).

    replacements: services to run instead of the running one of the same name (a changed
    configuration): that one is stopped as at SIGTERM, then the new one starts.
    """
    slots = {service.name: _Slot(service) for service in services}
    states = _States(slots, settings.health_file)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_keep_running(slot, stop, settings, states))
            for slot in slots.values()
        ]
        helpers = [
            group.create_task(_cancel_when_late(stop, settings.stop_timeout, tasks)),
            group.create_task(_report_progress(states)),
            group.create_task(_relay_stop(stop, slots)),
        ]
        if replacements is not None:
            helpers.append(group.create_task(_replace(replacements, slots)))
        # Whatever had to come first (storage, the scheduler) is up: systemd may go on.
        sdnotify.notify(READY=1, STATUS=states.summary())
        await asyncio.wait(tasks)
        for helper in helpers:
            helper.cancel()
    states.report()


class _Slot:
    """One service's place: the instance that runs there, the event that stops it (the
    supervisor's stop, or a replacement), and the replacement waiting to start."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stop = asyncio.Event()
        self.next: Service | None = None

    def take_replacement(self) -> bool:
        if self.next is None:
            return False
        self.service, self.next = self.next, None
        self.stop = asyncio.Event()
        return True


async def _relay_stop(stop: asyncio.Event, slots: Mapping[str, _Slot]) -> None:
    await stop.wait()
    for slot in slots.values():
        slot.stop.set()


async def _replace(replacements: asyncio.Queue[Service], slots: Mapping[str, _Slot]) -> None:
    while True:
        service = await replacements.get()
        slot = slots.get(service.name)
        if slot is None:
            logs.get().warning("replacement_not_running", service=service.name)
            continue
        slot.next = service
        slot.stop.set()


class _States:
    """Each service's state and progress: systemd's STATUS line and the health file."""

    def __init__(self, slots: Mapping[str, _Slot], health_file: Path | None) -> None:
        self._slots = slots
        self._states = dict.fromkeys(slots, "running")
        self._health_file = health_file
        self._reported: tuple[str, str] | None = None

    def set(self, name: str, state: str) -> None:
        self._states[name] = state
        self.report()

    def summary(self) -> str:
        by_state: dict[str, list[str]] = {}
        for name, slot in self._slots.items():
            by_state.setdefault(self._states[name], []).append(_with_progress(slot.service))
        return "; ".join(f"{state}: {', '.join(names)}" for state, names in by_state.items())

    def health(self) -> str:
        return json.dumps(
            {
                name: {
                    "state": self._states[name],
                    "last_success": _isoformat(slot.service.progress.last_success),
                    "failures_since": slot.service.progress.failures,
                }
                for name, slot in self._slots.items()
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
            _write_health(self._health_file, now[1])
        self._reported = now


def _with_progress(service: Service) -> str:
    last = service.progress.last_success
    return service.name if last is None else f"{service.name} (ok {last:%H:%M:%S})"


def _isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _write_health(path: Path, text: str) -> None:
    try:
        files.write_atomically(path, text + "\n")
    except OSError as exc:
        logs.get().warning("health_file_failed", path=str(path), error=str(exc))


async def _report_progress(states: _States) -> None:
    while True:
        await asyncio.sleep(_REPORT_EVERY_S)
        states.report()


async def _keep_running(
    slot: _Slot, stop: asyncio.Event, settings: SupervisorSettings, states: _States
) -> None:
    name = slot.service.name
    logs.bind_service(name)
    log = logs.get(service=name)
    delay = settings.restart_backoff_initial
    while not stop.is_set():
        started = time.monotonic()
        try:
            await slot.service.run(slot.stop)
            if not stop.is_set() and slot.take_replacement():
                log.info("service_replaced")
                states.set(name, "running")
                continue
            states.set(name, "stopped")
            return
        except Exception:
            if time.monotonic() - started > _STABLE_AFTER_S:
                delay = settings.restart_backoff_initial
            log.exception("service_crashed", restart_in_s=delay)
            states.set(name, "restarting")
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            log.info("service_restarting")
            states.set(name, "running")
        slot.take_replacement()
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
