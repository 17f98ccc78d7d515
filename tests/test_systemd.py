"""Running under systemd: the units, the notify protocol and the journal's native protocol.

Here systemd is not PID 1, so its sockets are played by datagram sockets the tests bind;
``make vmtest`` boots a real systemd and checks the same things against it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfncluster_node import logs
from cfncluster_node.local.cloud import ClusterResources, MotoServer
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import sdnotify
from tests.clusters import node_toml
from tests.conftest import GROUP

UNITS = Path(__file__).parent.parent / "systemd"


def verify_root(tmp_path: Path) -> Path:
    """A root with systemd's own units, ours, and the executable they name."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(UNITS, root / "etc/systemd/system")
    program = root / "opt/cfncluster-node/bin/cfncluster-node"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_systemd_analyze_verify_passes_without_a_warning(unit: str, tmp_path: Path) -> None:
    root = verify_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    root = verify_root(tmp_path)
    unit = root / "etc/systemd/system/cfncluster-node.service"
    unit.write_text(unit.read_text().replace("bin/cfncluster-node run", "bin/nothing run"))
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            "/etc/systemd/system/cfncluster-node.service",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "is not executable" in result.stderr


def listener(path: Path | str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_reaches_the_socket_systemd_names(
    abstract: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"\0cfncluster-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with listener(name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name[1:] if abstract else name)
        assert sdnotify.notify(READY=1, STATUS="running: sqswatcher")
        assert sock.recv(4096) == b"READY=1\nSTATUS=running: sqswatcher"


def test_outside_systemd_notify_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert not sdnotify.notify(READY=1)
    assert sdnotify.watchdog_interval() is None


def test_the_watchdog_is_pinged_twice_a_period_and_only_for_our_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None


async def test_a_blocked_event_loop_stops_the_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with listener(tmp_path / "notify") as sock:
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        feeding = asyncio.create_task(sdnotify.keep_watchdog_fed(0.05))
        await asyncio.sleep(0.3)
        before = drain(sock)
        time.sleep(0.5)  # noqa: ASYNC251 - the hang under test: nothing can ping
        during = drain(sock)
        feeding.cancel()
    assert before.count(b"WATCHDOG=1") >= 4
    assert during.count(b"WATCHDOG=1") <= 1  # at most one, queued as the hang began


def drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            out += sock.recv(4096) + b"|"
        except BlockingIOError:
            return out


def test_the_service_tells_systemd_ready_status_watchdog_and_stopping(
    tmp_path: Path, moto: MotoServer, cluster: ClusterResources, slurm: LocalSlurm
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        node_toml(
            cluster,
            stack="test",
            group=GROUP,
            after=f'[slurm]\nconf = "{slurm.conf}"\n'
            '[supervisor]\nservices = ["sqswatcher", "publisher"]\n'
            f'health_file = "{tmp_path / "health.json"}"\n',
        )
    )
    with listener(tmp_path / "notify") as sock:
        process = subprocess.Popen(
            [sys.executable, "-m", "cfncluster_node", "run", "--config", str(config)],
            env={
                **os.environ,
                **moto.env,
                "NOTIFY_SOCKET": str(tmp_path / "notify"),
                "WATCHDOG_USEC": "400000",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            seen = [sock.recv(4096).decode() for _ in range(6)]
            process.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in seen[-1]:
                seen.append(sock.recv(4096).decode())
            assert process.wait(timeout=30) == 0
        finally:
            process.kill()
    assert "READY=1\nSTATUS=running: sqswatcher, publisher" in seen
    assert seen.count("WATCHDOG=1") >= 2
    assert seen[-1] == "STOPPING=1\nSTATUS=stopping"


def journal_records(sock: socket.socket) -> list[dict[str, str]]:
    """Datagrams of the journal's native protocol, parsed as journald does."""
    records = []
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return records
        fields: dict[str, str] = {}
        while data:
            line, _, rest = data.partition(b"\n")
            if b"=" in line:
                key, _, value = line.partition(b"=")
                fields[key.decode()] = value.decode()
                data = rest
            else:
                (size,) = struct.unpack("<Q", rest[:8])
                fields[line.decode()] = rest[8 : 8 + size].decode()
                data = rest[8 + size + 1 :]
        records.append(fields)


def test_under_journald_each_field_is_a_journal_field(tmp_path: Path) -> None:
    with listener(tmp_path / "journal") as sock, (tmp_path / "stdout").open("w") as stdout:
        logs.configure("debug", "journal", stdout, journal_socket=str(tmp_path / "journal"))
        try:
            log = logs.get(service="sqswatcher")
            log.info("host_registered", instance_id="i-0abc", hostname="ip-10-0-0-1", slots=4)
            log.warning("receive_failed", error="line one\nline two")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.exception("service_crashed")
            records = journal_records(sock)
        finally:
            logs.configure("debug", "json")
    registered, failed, crashed = records
    assert registered["EVENT"] == "host_registered"
    assert registered["INSTANCE_ID"] == "i-0abc"
    assert registered["HOSTNAME"] == "ip-10-0-0-1"
    assert registered["SLOTS"] == "4"
    assert registered["SERVICE"] == "sqswatcher"
    assert registered["PRIORITY"] == "6"
    assert registered["SYSLOG_IDENTIFIER"] == "cfncluster-node"
    assert registered["MESSAGE"] == (
        "host_registered service=sqswatcher instance_id=i-0abc hostname=ip-10-0-0-1 slots=4"
    )
    assert (failed["PRIORITY"], failed["ERROR"]) == ("4", "line one\nline two")
    assert crashed["PRIORITY"] == "3"
    assert "RuntimeError: boom" in crashed["EXCEPTION"]
    assert (tmp_path / "stdout").read_text() == ""


def test_journal_stream_is_recognised_by_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "out").open("w") as stream:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        assert logs.under_journald(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino + 1}")
        assert not logs.under_journald(stream)


def test_a_journal_that_refuses_keeps_the_line_on_stdout(tmp_path: Path) -> None:
    with (tmp_path / "stdout").open("w") as stdout:
        logs.configure("info", "journal", stdout, journal_socket=str(tmp_path / "absent"))
        try:
            logs.get().info("metrics_published", pending_nodes=3)
        finally:
            logs.configure("debug", "json")
    assert "EVENT=metrics_published" in (tmp_path / "stdout").read_text()
    assert "PENDING_NODES=3" in (tmp_path / "stdout").read_text()
