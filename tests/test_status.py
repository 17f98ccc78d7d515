"""`cfncluster-node status`: the fleet in one table (pure), and the command on real parts."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from cfncluster_node.aws import Aws
from cfncluster_node.local.cloud import ClusterResources, Instances, MotoServer
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node.drift import Drift, Instance, Observation
from cfncluster_node.node.fleet import Member
from cfncluster_node.node.lifecycle import Hostnames
from cfncluster_node.node.records import InstanceRecord, InstanceState
from cfncluster_node.node.status import FleetRow, fleet_rows, services_table
from cfncluster_node.schedulers import Host, HostStatus
from cfncluster_node.schedulers.slurm import Slurm
from tests.clusters import node_toml
from tests.conftest import GROUP
from tests.test_sqswatcher import drain

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
A, B = "i-0000000000000000a", "i-0000000000000000b"


def test_each_instance_shows_its_three_views_and_stray_hosts_follow() -> None:
    rows = [
        InstanceRecord(A, InstanceState.READY, NOW, NOW, hostname="h-a", slots=4, joined_at=NOW),
        InstanceRecord(B, InstanceState.READY, NOW, NOW, hostname="h-b", slots=4, joined_at=NOW),
    ]
    idle = HostStatus(
        "h-a",
        4,
        "127.0.0.1",
        "idle",
        available=True,
        busy=False,
        idle_since=NOW - timedelta(minutes=12),
    )
    stray = HostStatus("h-x", 8, None, "idle", available=True, busy=False)
    seen = Observation(
        rows={r.instance_id: r for r in rows},
        instances={A: Instance(A, "running"), B: Instance(B, "running")},
        group={A: Member("InService", protected=True)},
        hosts={"h-a": idle, "h-x": stray},
        hostnames=Hostnames(rows),
    )

    table = fleet_rows(seen, Drift(lost_hosts=[rows[1]], unowned_hosts=["h-x"]), NOW)

    assert table == [
        FleetRow(A, "h-a", "running", "ready", "idle", 4, 720, True, None),
        FleetRow(B, "h-b", "running", "ready", None, 4, None, None, "host_missing"),
        FleetRow(None, "h-x", None, None, "idle", 8, None, None, "unowned_host"),
    ]


async def test_status_json_marks_the_drift_on_real_parts(
    aws: Aws,
    cluster: ClusterResources,
    slurm: LocalSlurm,
    moto: MotoServer,
    fleet: Instances,
    tmp_path: Path,
) -> None:
    nodes = await fleet.launch(2)
    await fleet.join(*nodes)
    await drain(aws, cluster, slurm.settings)
    # Gone without its notification (the group does not replace it).
    await aws.call(
        "autoscaling",
        "terminate_instance_in_auto_scaling_group",
        InstanceId=nodes[0].instance_id,
        ShouldDecrementDesiredCapacity=True,
    )
    await Slurm(slurm.settings).add_hosts([Host("ip-10-8-9-9", 2, "127.8.9.9")])
    health = tmp_path / "health.json"
    health.write_text('{"reconciler": {"state": "running", "last_success": null}}')
    config = tmp_path / "node.toml"
    config.write_text(
        node_toml(
            cluster,
            stack="t",
            group=GROUP,
            after=f'[slurm]\nconf = "{slurm.conf}"\n[supervisor]\nhealth_file = "{health}"\n',
        )
    )

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cfncluster_node",
        "status",
        "--json",
        "--config",
        str(config),
        env={**os.environ, **moto.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, errors.decode()
    report = json.loads(output)
    assert report["services"] == {"reconciler": {"state": "running", "last_success": None}}
    shown = {(r["instance_id"], r["hostname"]): (r["ec2"], r["drift"]) for r in report["fleet"]}
    assert shown == {
        (nodes[0].instance_id, nodes[0].hostname): ("terminated", "instance_gone"),
        (nodes[1].instance_id, nodes[1].hostname): ("running", None),
        (None, "ip-10-8-9-9"): (None, "unowned_host"),
    }


def test_the_services_table_says_each_services_last_success_or_that_none_runs() -> None:
    health = {
        "publisher": {"state": "running", "last_success": "2026-11-26T11:59:30+00:00"},
        "reconciler": {"state": "restarting", "last_success": None, "failures_since": 3},
    }
    console = Console(width=120, record=True)
    console.print(services_table(health, NOW))
    console.print(services_table(None, NOW))
    lines = [
        " ".join(line.replace("│", " ").split()) for line in console.export_text().splitlines()
    ]

    assert "publisher running 30 s ago -" in lines
    assert "reconciler restarting never 3" in lines
    assert any("no health file: is `cfncluster-node run` running here?" in line for line in lines)
