"""commands.run: argv only, a timeout that kills the whole process group, clear errors."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from cfncluster_node import commands
from cfncluster_node.commands import CommandError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of ours that nobody reaped yet is a zombie: gone for our purposes.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not alive(pid)


async def test_run_returns_stdout_and_exit_code() -> None:
    result = await commands.run(["echo", "hello", "world"], timeout=10)

    assert result.stdout == "hello world\n"
    assert result.returncode == 0
    assert result.argv == ("echo", "hello", "world")
    assert result.seconds >= 0


async def test_run_captures_stderr_separately() -> None:
    result = await commands.run(["sh", "-c", "echo out; echo err >&2"], timeout=10)

    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


async def test_non_zero_exit_raises_with_stderr_in_the_message() -> None:
    with pytest.raises(CommandError) as raised:
        await commands.run(["sh", "-c", "echo 'no such node' >&2; exit 3"], timeout=10)

    error = raised.value
    assert "exited with 3" in str(error)
    assert "no such node" in str(error)
    assert error.stderr == "no such node"
    assert error.argv == ("sh", "-c", "echo 'no such node' >&2; exit 3")


async def test_non_zero_exit_without_stderr_reports_stdout() -> None:
    with pytest.raises(CommandError, match="exited with 1: only on stdout"):
        await commands.run(["sh", "-c", "echo only on stdout; exit 1"], timeout=10)


async def test_check_false_returns_the_exit_code() -> None:
    result = await commands.run(["sh", "-c", "echo partial; exit 7"], timeout=10, check=False)

    assert result.returncode == 7
    assert result.stdout == "partial\n"


async def test_env_is_added_to_the_inherited_environment() -> None:
    result = await commands.run(
        ["sh", "-c", 'echo "$CFN_TEST_VALUE:$PATH"'], timeout=10, env={"CFN_TEST_VALUE": "x"}
    )

    assert result.stdout == f"x:{os.environ['PATH']}\n"


async def test_timeout_kills_the_process_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; echo $$ >> {pids}; sleep 30"
    started = time.monotonic()

    with pytest.raises(CommandError, match=r"timed out after 0\.5 s"):
        await commands.run(["sh", "-c", script], timeout=0.5)

    assert time.monotonic() - started < 5
    child, shell = (int(line) for line in pids.read_text().split())
    assert await wait_gone(shell)
    assert await wait_gone(child), "the background child outlived the timeout"


async def test_cancelling_a_run_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; sleep 30"
    task = asyncio.create_task(commands.run(["sh", "-c", script], timeout=60))
    while not pids.exists() or not pids.read_text().strip():  # noqa: ASYNC110 (a file, not a task)
        await asyncio.sleep(0.02)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await wait_gone(int(pids.read_text()))


@pytest.mark.parametrize(
    "argument",
    ["a; rm -rf /", "$(touch pwned)", "`touch pwned`", "x && touch pwned", "*", "a b\nc", "'\""],
)
async def test_shell_metacharacters_are_passed_literally(
    argument: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")

    code = "import sys; sys.stdout.write(sys.argv[1])"
    result = await commands.run([sys.executable, "-c", code, argument], timeout=10)

    assert result.stdout == argument
    assert listing(tmp_path) == ["file"]


async def test_missing_program_raises_command_error() -> None:
    with pytest.raises(CommandError, match="could not start: No such file or directory") as raised:
        await commands.run(["/nonexistent/scontrol", "show", "nodes"], timeout=10)

    assert raised.value.argv == ("/nonexistent/scontrol", "show", "nodes")


async def test_program_not_on_path_raises_command_error() -> None:
    with pytest.raises(CommandError, match="could not start"):
        await commands.run(["cfncluster-no-such-program"], timeout=10)


async def test_long_arguments_are_shortened_in_the_message_but_kept_on_the_error() -> None:
    long = "n" * 5000

    with pytest.raises(CommandError) as raised:
        await commands.run(["sh", "-c", "exit 2", long], timeout=10)

    assert "...(5000 chars)" in str(raised.value)
    assert len(str(raised.value)) < 400
    assert raised.value.argv[-1] == long
