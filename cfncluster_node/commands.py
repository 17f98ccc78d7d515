"""The one way this project runs a program: an argv list (never a shell), a timeout, a log.

A command that hangs (an unreachable scheduler, a stuck mount) is killed at its timeout,
with its whole process group, so it can never stop a daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cfncluster_node import logs

# Long command lines (a batch of 1,000 hosts) are logged shortened; the full argv is in
# the exception when it fails.
_LOGGED_ARG_CHARS = 200


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class CommandError(Exception):
    def __init__(self, argv: Sequence[str], reason: str, stderr: str = "") -> None:
        self.argv = tuple(argv)
        self.reason = reason
        self.stderr = stderr.strip()
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(f"{shorten(self.argv)} {reason}{detail}")


def shorten(argv: Sequence[str]) -> str:
    return " ".join(
        arg if len(arg) <= _LOGGED_ARG_CHARS else f"{arg[:_LOGGED_ARG_CHARS]}...({len(arg)} chars)"
        for arg in argv
    )


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
) -> CommandResult:
    """Run ``argv`` (``input`` on its standard input, else none); raise CommandError on a
    timeout, or on a non-zero exit when ``check``."""
    log = logs.get(command=argv[0])
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandError(argv, f"could not start: {exc.strerror}") from None
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(None if input is None else input.encode()), timeout
        )
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(process)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        log.warning("command_timed_out", argv=shorten(argv), timeout_s=timeout)
        raise CommandError(argv, f"timed out after {timeout:g} s") from None
    seconds = time.monotonic() - started
    result = CommandResult(
        tuple(argv),
        process.returncode if process.returncode is not None else -1,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        seconds,
    )
    log.debug(
        "command_ran",
        argv=shorten(argv),
        returncode=result.returncode,
        duration_ms=round(seconds * 1000, 1),
    )
    if check and result.returncode != 0:
        raise CommandError(argv, f"exited with {result.returncode}", result.stderr or result.stdout)
    return result


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
