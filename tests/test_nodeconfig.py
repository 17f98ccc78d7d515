"""node.toml follows the stack: a change restarts exactly what it touches.

What a change restarts is decided by a pure function; the real `cfncluster-node run`
follows a real SSM parameter on moto, replaces the one service whose section changed,
restarts as a whole (exit 75, for systemd) when a shared section changed, and refuses
a text that does not validate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cfncluster_node import config, protocol
from cfncluster_node.aws import Aws
from cfncluster_node.config import Change, affected
from cfncluster_node.local.cloud import ClusterResources, MotoServer
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import nodeconfig
from tests.test_crash import wait_until, write_config

SERVICES = {"supervisor": {"services": ["sqswatcher", "publisher", "reconciler"]}}


def test_a_services_own_section_restarts_that_service_alone() -> None:
    old = {**SERVICES, "publisher": {"interval": 60.0}, "cluster": {"table": "t"}}
    new = {**old, "publisher": {"interval": 30.0}}

    assert affected(old, new) == Change(("publisher",), frozenset({"publisher"}), False)
    assert affected(old, new).describe() == "restarts publisher on the head node"


def test_a_shared_section_restarts_the_daemon() -> None:
    old = {**SERVICES, "cluster": {"table": "t"}, "storage": {}}

    for changed in ({"cluster": {"table": "u"}}, {"storage": {"fstab": "/x"}}, {"hooks": {}}):
        change = affected(old, {**old, **changed})
        assert change.daemon and change.describe().startswith("restarts the head node's daemon")


def test_a_section_of_a_service_that_does_not_run_restarts_nothing_and_same_is_no_change() -> None:
    old = {**SERVICES, "cluster": {"table": "t"}}

    assert affected(old, {**old, "scalein": {"idle_minutes": 5.0}}) == Change(("scalein",))
    assert not affected(old, dict(old))


def node_toml(config_path: Path, **sections: str) -> str:
    return config_path.read_text() + "".join(
        f"\n[{name}]\n{body}\n" for name, body in sections.items()
    )


def start_run(config_path: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`cfncluster-node run` as systemd starts it under the stack, its log to a file."""
    return subprocess.Popen(
        [sys.executable, "-m", "cfncluster_node", "run", "--config", str(config_path)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def put(aws: Aws, parameter: str, text: str) -> None:
    await aws.call(
        "ssm", "put_parameter", Name=parameter, Value=text, Type="String", Overwrite=True
    )


async def test_run_follows_the_stacks_node_toml_and_restarts_only_what_changed(
    aws: Aws, cluster: ClusterResources, slurm: LocalSlurm, moto: MotoServer, tmp_path: Path
) -> None:
    base = write_config(tmp_path / "base.toml", cluster, slurm)
    supervisor = (
        '[supervisor]\nservices = ["sqswatcher", "publisher"]\nconfig_poll = 0.2\n'
        f'health_file = "{tmp_path / "health.json"}"\n'
    )
    first = node_toml(base, publisher="interval = 60.0") + supervisor
    parameter = protocol.config_parameter("crash")
    await put(aws, parameter, first)
    path = tmp_path / "node.toml"
    log = tmp_path / "run.log"
    env = {
        **os.environ,
        **moto.env,
        protocol.CONFIG_PARAMETER_ENV: parameter,
        "AWS_REGION": "us-east-1",
    }
    process = start_run(path, env, log)
    try:

        def events(name: str) -> list[dict[str, object]]:
            records = [json.loads(line) for line in log.read_text().splitlines() if "{" in line]
            return [r for r in records if r.get("event") == name]

        async def started() -> bool:
            return bool(events("sqswatcher_started"))

        await wait_until(started, 60)
        assert path.read_text() == first  # written from the parameter before anything ran

        # Refused: the node runs on, as it was.
        await put(aws, parameter, first.replace("interval = 60.0", "interval = -1"))

        async def refused() -> bool:
            return bool(events("config_update_refused"))

        await wait_until(refused, 30)
        assert path.read_text() == first and process.poll() is None

        # The publisher's own section: the publisher alone is replaced.
        second = first.replace("interval = 60.0", "interval = 30.0")
        await put(aws, parameter, second)

        async def replaced() -> bool:
            return bool(events("service_replaced"))

        await wait_until(replaced, 30)
        assert [r["service"] for r in events("service_replaced")] == ["publisher"]
        assert path.read_text() == second and process.poll() is None

        # A shared section: the whole daemon restarts, for systemd to start it again.
        await put(aws, parameter, second.replace('table = "', 'default_slots = 2\ntable = "'))
        assert process.wait(timeout=60) == 75
        update = events("config_updated")[-1]
        assert (update["daemon"], update["sections"]) == (True, ["cluster"])
    finally:
        process.kill()
        process.wait()


@pytest.mark.privilege(stack="t")
async def test_install_writes_the_stacks_node_toml_only_when_it_validates(
    aws: Aws, moto: MotoServer, tmp_path: Path
) -> None:
    parameter = protocol.config_parameter("t")
    path = tmp_path / "node.toml"
    await put(aws, parameter, '[cluster]\nstack_name = "t"\n')

    with pytest.raises(config.ConfigError, match=r"key 'cluster\.region'"):
        await nodeconfig.install(aws, parameter, path)
    assert not path.exists()
