"""The Slurm backend against a real slurmctld: batches, idempotence, hostlists."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cfncluster_node.local.cloud import free_port
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.schedulers import Holdup, Host, SchedulerError
from cfncluster_node.schedulers.hostlist import compress
from cfncluster_node.schedulers.slurm import Slurm


def hosts(count: int, *, slots: int = 4, start: int = 1) -> list[Host]:
    return [
        Host(f"ip-10-2-{n // 250}-{n % 250}", slots, f"127.2.{n // 250}.{n % 250}", f"i-{n:017x}")
        for n in range(start, start + count)
    ]


def show(slurm: LocalSlurm, name: str) -> str:
    return slurm.scontrol("-o", "show", "node", name)


async def test_a_batch_is_registered_with_its_addresses_slots_and_feature(
    slurm: LocalSlurm,
) -> None:
    backend = Slurm(slurm.settings)
    batch = [*hosts(3), Host("big-node", 64, "127.2.9.9", "i-00000000000000099")]

    await backend.add_hosts(batch)

    listed = {h.hostname: h for h in await backend.list_hosts()}
    assert set(listed) == {h.hostname for h in batch}
    assert {(listed[h.hostname].slots, listed[h.hostname].address) for h in batch} == {
        (h.slots, h.address) for h in batch
    }
    line = show(slurm, "big-node")
    assert "CPUTot=64" in line and "AvailableFeatures=compute" in line
    assert "Partitions=compute" in line
    # Registered hosts are resumed: idle, waiting only for their slurmd to answer.
    assert "IDLE" in line and "FUTURE" not in line and "DRAIN" not in line


async def test_adding_twice_changes_nothing_and_a_new_address_is_taken(slurm: LocalSlurm) -> None:
    backend = Slurm(slurm.settings)
    await backend.add_hosts(hosts(2))
    await backend.add_hosts(hosts(2))
    moved = Host("ip-10-2-0-1", 4, "127.2.200.1", "i-1")

    await backend.add_hosts([moved])

    listed = {h.hostname: h.address for h in await backend.list_hosts()}
    assert listed == {"ip-10-2-0-1": "127.2.200.1", "ip-10-2-0-2": "127.2.0.2"}


async def test_a_host_that_comes_back_with_other_slots_is_recreated(slurm: LocalSlurm) -> None:
    backend = Slurm(slurm.settings)
    await backend.add_hosts(hosts(1, slots=4))

    await backend.add_hosts(hosts(1, slots=16))

    [listed] = await backend.list_hosts()
    assert listed.slots == 16


async def test_removal_drains_then_deletes_and_ignores_unknown_hosts(slurm: LocalSlurm) -> None:
    backend = Slurm(slurm.settings)
    await backend.add_hosts(hosts(4))

    await backend.remove_hosts(["ip-10-2-0-1", "ip-10-2-0-3", "never-registered"])
    await backend.remove_hosts(["ip-10-2-0-1"])

    assert sorted(h.hostname for h in await backend.list_hosts()) == ["ip-10-2-0-2", "ip-10-2-0-4"]
    log = (slurm.root / "slurmctld.log").read_text()
    assert "ip-10-2-0-[1,3]" in log or "ip-10-2-0-1" in log


async def test_a_drain_by_an_admin_outlives_a_replayed_join(slurm: LocalSlurm) -> None:
    backend = Slurm(slurm.settings)
    await backend.add_hosts(hosts(1))
    slurm.scontrol("update", "NodeName=ip-10-2-0-1", "State=DRAIN", "Reason=maintenance")

    await backend.add_hosts(hosts(1))

    assert "DRAIN" in show(slurm, "ip-10-2-0-1")


async def test_a_host_left_drained_by_a_delete_cut_short_is_resumed_by_its_join(
    slurm: LocalSlurm,
) -> None:
    # The delete drains and downs the node, then deletes it: a crash in between.
    backend = Slurm(slurm.settings)
    await backend.add_hosts(hosts(1))
    for state in ("DRAIN", "DOWN"):
        slurm.scontrol(
            "update",
            "NodeName=ip-10-2-0-1",
            f"State={state}",
            "Reason=cfncluster-node: instance gone",
        )

    await backend.add_hosts(hosts(1))

    assert "DRAIN" not in show(slurm, "ip-10-2-0-1")


async def test_a_node_left_in_future_state_by_a_crash_is_completed(slurm: LocalSlurm) -> None:
    # A crash between `create` and `resume` leaves a FUTURE node, hidden from sinfo.
    slurm.scontrol("create", "NodeName=ip-10-2-0-1 CPUs=4 State=FUTURE Features=compute")
    backend = Slurm(slurm.settings)

    await backend.add_hosts(hosts(1))

    [listed] = await backend.list_hosts()
    assert (listed.hostname, listed.address) == ("ip-10-2-0-1", "127.2.0.1")
    assert "future" not in listed.state


async def test_a_thousand_hosts_take_a_few_commands_and_leave_the_same_way(
    slurm: LocalSlurm,
) -> None:
    backend = Slurm(slurm.settings)
    batch = hosts(1000)

    await backend.add_hosts(batch)
    assert len(await backend.list_hosts()) == 1000

    await backend.remove_hosts([h.hostname for h in batch])
    assert await backend.list_hosts() == []


def test_compressed_hostlists_expand_in_slurm_to_the_same_names(slurm: LocalSlurm) -> None:
    names = [f"ip-10-2-{n // 250}-{n % 250}" for n in (1, 2, 3, 7, 250, 251, 499)] + [
        "node007",
        "node008",
        "node010",
        "login",
        "gpu-a1",
    ]
    expression = compress(names)
    expanded = subprocess.run(
        ["scontrol", "show", "hostnames", expression],
        env={**slurm.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(expanded) == sorted(names)


async def test_jobs_tell_why_each_pending_job_waits(slurm: LocalSlurm) -> None:
    backend = Slurm(slurm.settings)
    held = slurm.sbatch("--hold", "-N", "1", "--wrap", "true")
    waiting = slurm.sbatch(f"--dependency=afterok:{held}", "-N", "1", "--wrap", "true")
    later = slurm.sbatch("--begin=now+1hour", "-N", "1", "--wrap", "true")
    wide = slurm.sbatch("-N", "2", "-c", "3", "--wrap", "true")  # no node yet: it waits

    jobs = await backend.jobs()

    assert jobs.running == 0
    assert {job.job_id: (job.nodes, job.slots, job.holdup) for job in jobs.pending} == {
        held: (1, 1, Holdup.HELD),
        waiting: (1, 1, Holdup.DEPENDENCY),
        later: (1, 1, Holdup.BEGIN_TIME),
        wide: (2, 6, Holdup.NONE),
    }


async def test_an_unreachable_controller_is_a_scheduler_error_not_a_hang(
    slurm: LocalSlurm, tmp_path: Path
) -> None:
    conf = tmp_path / "slurm.conf"
    text = slurm.conf.read_text()
    port = next(line for line in text.splitlines() if line.startswith("SlurmctldPort="))
    conf.write_text(text.replace(port, f"SlurmctldPort={free_port()}"))
    broken = Slurm(slurm.settings.model_copy(update={"conf": conf, "command_timeout": 3.0}))

    with pytest.raises(SchedulerError, match="scontrol"):
        await broken.list_hosts()
