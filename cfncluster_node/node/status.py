"""``cfncluster-node status``: the services' health, then the fleet as one table, each
instance as EC2, the instance table and the scheduler see it, with what the reconciler
would heal marked as drift.

The services' health is what the running supervisor last wrote to its health file: each
service's state, its last success and the failures since.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from cfncluster_node.node.drift import MISSING, Drift, Observation, live_instances


@dataclass(frozen=True)
class FleetRow:
    instance_id: str | None
    hostname: str | None
    ec2: str | None
    table: str | None
    scheduler: str | None
    slots: int | None
    idle_s: int | None
    protected: bool | None
    drift: str | None


def fleet_rows(seen: Observation, drift: Drift, now: datetime) -> list[FleetRow]:
    """One row per live instance (table or group), then the hosts no instance holds."""
    marks = {row.instance_id: "instance_gone" for row in drift.gone}
    marks |= {row.instance_id: "host_missing" for row in drift.lost_hosts}
    marks |= dict.fromkeys(drift.never_joined, "never_joined")
    live = live_instances(seen.rows)
    rows = []
    shown_hosts = set()
    for instance_id in sorted(live | set(seen.group)):
        record = seen.rows.get(instance_id)
        hostname = record.hostname if record else None
        owned = hostname is not None and seen.hostnames.owner(hostname) == instance_id
        host = seen.hosts.get(hostname) if owned and hostname else None
        if host is not None:
            shown_hosts.add(host.hostname)
        instance = seen.instances.get(instance_id)
        member = seen.group.get(instance_id)
        rows.append(
            FleetRow(
                instance_id=instance_id,
                hostname=hostname,
                ec2=instance.state if instance else MISSING,
                table=record.state.value if record else None,
                scheduler=host.state if host else None,
                slots=host.slots if host else record.slots if record else None,
                idle_s=_seconds_since(host.idle_since, now) if host else None,
                protected=member.protected if member else None,
                drift=marks.get(instance_id),
            )
        )
    for hostname in sorted(set(seen.hosts) - shown_hosts):
        host = seen.hosts[hostname]
        rows.append(
            FleetRow(
                instance_id=None,
                hostname=hostname,
                ec2=None,
                table=None,
                scheduler=host.state,
                slots=host.slots,
                idle_s=_seconds_since(host.idle_since, now),
                protected=None,
                drift="unowned_host"
                if hostname in drift.unowned_hosts
                else "joining"
                if hostname in drift.joining
                else None,
            )
        )
    return rows


def _seconds_since(moment: datetime | None, now: datetime) -> int | None:
    return None if moment is None else max(0, int((now - moment).total_seconds()))


def read_health(path: Path | None) -> dict[str, Any] | None:
    """The supervisor's health file, or None if there is none to read (not running here)."""
    if path is None:
        return None
    try:
        health = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return health if isinstance(health, dict) else None


def as_json(rows: list[FleetRow], services: dict[str, Any] | None) -> str:
    return json.dumps({"services": services, "fleet": [asdict(row) for row in rows]}, indent=2)


def services_table(services: dict[str, Any] | None, now: datetime) -> Table:
    table = Table(title="services", title_justify="left")
    for column in ("service", "state", "last success", "failures since"):
        table.add_column(column)
    if services is None:
        table.add_row("-", "no health file: is `cfncluster-node run` running here?", "-", "-")
    for name, health in sorted((services or {}).items()):
        last = health.get("last_success")
        ago = _seconds_since(datetime.fromisoformat(last), now) if last else None
        table.add_row(
            name,
            str(health.get("state", "-")),
            "never" if ago is None else f"{ago} s ago",
            str(health.get("failures_since", "-")),
        )
    return table


def as_table(rows: list[FleetRow]) -> Table:
    table = Table(title=f"compute fleet: {len(rows)} rows", title_justify="left")
    for column in (
        "instance",
        "hostname",
        "EC2",
        "table",
        "scheduler",
        "slots",
        "idle",
        "protected",
        "drift",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.instance_id or "-",
            row.hostname or "-",
            row.ec2 or "-",
            row.table or "-",
            row.scheduler or "-",
            "-" if row.slots is None else str(row.slots),
            "-" if row.idle_s is None else f"{row.idle_s // 60} min",
            "-" if row.protected is None else ("yes" if row.protected else "no"),
            f"[bold red]{row.drift}[/]" if row.drift else "",
        )
    return table
