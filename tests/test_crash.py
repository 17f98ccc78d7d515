"""The watcher as operators run it: a process that is killed, restarted and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cfncluster_node.aws import Aws
from cfncluster_node.local.cloud import (
    ClusterResources,
    Instances,
    MotoServer,
    publish_autoscaling,
    queue_depth,
)
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node.records import InstanceState
from tests.clusters import node_toml, wait_until
from tests.conftest import GROUP
from tests.test_sqswatcher import TERMINATE, rows, slurm_hosts

JOINS = 200
TERMINATED = 100


def write_config(path: Path, cluster: ClusterResources, slurm: LocalSlurm) -> Path:
    path.write_text(
        node_toml(
            cluster,
            stack="crash",
            group=GROUP,
            sqswatcher="visibility_timeout = 10\nmax_batch = 20\n",
            after=f'[slurm]\nconf = "{slurm.conf}"\n[logging]\nformat = "json"\n',
        )
    )
    return path


def start_daemon(
    config: Path, moto: MotoServer, log: Path, command: str = "sqswatcher"
) -> subprocess.Popen[bytes]:
    """The daemon as systemd starts it: its own process, its log to a file."""
    return subprocess.Popen(
        [sys.executable, "-m", "cfncluster_node", command, "--config", str(config)],
        env={**os.environ, **moto.env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_kill_9_mid_burst_then_restart_loses_nothing_and_doubles_nothing(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    moto: MotoServer,
    fleet: Instances,
    tmp_path: Path,
) -> None:
    nodes = await fleet.launch(JOINS)
    config = write_config(tmp_path / "node.toml", cluster, slurm)
    log = tmp_path / "watcher.log"
    first = start_daemon(config, moto, log)
    try:
        for start in range(0, JOINS, 20):
            await fleet.join(*nodes[start : start + 20])

        async def half_registered() -> bool:
            return len(await slurm_hosts(slurm)) >= JOINS // 4

        await wait_until(half_registered, 60)
    finally:
        first.kill()  # SIGKILL: no cleanup, messages in flight stay invisible
        first.wait()

    # Terminates (and a replay of some joins) arrive while no watcher runs.
    for node in nodes[:TERMINATED]:
        await publish_autoscaling(aws, cluster.topic_arn, TERMINATE, node.instance_id)
    await fleet.join(*nodes[::7])

    second = start_daemon(config, moto, log)
    try:
        expected_hosts = {node.hostname for node in nodes[TERMINATED:]}

        async def converged() -> bool:
            return set(await slurm_hosts(slurm)) == expected_hosts and (
                await queue_depth(aws, cluster.queue_url) == 0
            )

        await wait_until(converged, 120)
    finally:
        second.send_signal(signal.SIGTERM)
        exit_code = second.wait(timeout=60)

    assert exit_code == 0, log.read_text()[-3000:]
    assert set(await slurm_hosts(slurm)) == expected_hosts
    table = await rows(aws, cluster)
    assert len(table) == JOINS
    assert {i for i, r in table.items() if r.state is InstanceState.TERMINATED} == {
        node.instance_id for node in nodes[:TERMINATED]
    }
    assert await queue_depth(aws, cluster.dead_letter_url) == 0


async def test_run_supervises_every_service_and_stops_them_all_on_sigterm(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    moto: MotoServer,
    fleet: Instances,
    tmp_path: Path,
) -> None:
    [node] = await fleet.launch(1)
    config = write_config(tmp_path / "node.toml", cluster, slurm)
    config.write_text(
        config.read_text()
        + '\n[supervisor]\nservices = ["sqswatcher", "publisher", "reconciler"]\n'
        + "stop_timeout = 20.0\n"
        + f'health_file = "{tmp_path / "health.json"}"\n'
        + "[publisher]\ninterval = 1.0\n[reconciler]\ninterval = 1.0\n"
    )
    log = tmp_path / "run.log"
    process = start_daemon(config, moto, log, "run")
    try:
        await fleet.join(node)

        async def all_working() -> bool:
            text = log.read_text()
            return all(
                f'"event": "{event}"' in text
                for event in ("host_registered", "metrics_published", "reconciled")
            )

        await wait_until(all_working, 60)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)

    text = log.read_text()
    assert exit_code == 0, text[-3000:]
    assert '"event": "stop_requested"' in text and '"event": "sqswatcher_stopped"' in text
    assert '"event": "service_crashed"' not in text
