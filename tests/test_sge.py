"""The SGE backend: its parsers on what SGE 8.1.9 really prints, then against a real qmaster.

The outputs below were recorded from Debian's gridengine 8.1.9 on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cfncluster_node import commands, config
from cfncluster_node.config import SgeSettings
from cfncluster_node.local.sge import LocalSge
from cfncluster_node.node import services
from cfncluster_node.schedulers import (
    Holdup,
    Host,
    PendingJob,
    SchedulerError,
    checked_hostnames,
    sgeconf,
)
from cfncluster_node.schedulers.sge import (
    Expect,
    QueueInstance,
    Sge,
    SgeJob,
    expand_tasks,
    judge,
    parse_allocation_rule,
    parse_jobs_xml,
    parse_queue_xml,
    pending_jobs,
    track_idle,
)
from tests.clusters import node_toml

HOSTS = ["ip-10-1-0-10", "ip-10-1-0-11"]
INSTANCES = [f"all.q@{host}" for host in HOSTS]


@pytest.mark.parametrize(
    "output",
    [
        "ip-10-1-0-10 added to administrative host list\n"
        "ip-10-1-0-11 added to administrative host list",
        "ip-10-1-0-10 added to submit host list",
        'root@sgemaster modified "@allhosts" in host group list',
        '"complex_values" of "exechost" is empty - Adding new element(s).\n'
        'root@sgemaster modified "ip-10-1-0-10" in exechost list',
        'root@sgemaster changed state of "all.q@ip-10-1-0-10" (disabled)',
        'root@sgemaster changed state of "all.q@ip-10-1-0-10" (enabled)',
        'Queue instance "all.q@ip-10-1-0-10" is already in the specified state: enabled',
        "Forced rescheduling of job 9 on host ip-10-1-0-10\n"
        "Forced rescheduling of job-array task 8.1 on host ip-10-1-0-10",
        'root@sgemaster removed "ip-10-1-0-10" from execution host list',
        'root@sgemaster removed "ip-10-1-0-10" from administrative host list',
        "",  # qmod -f -rq with no job to reschedule
    ],
)
def test_changes_that_say_they_were_made_succeed(output: str) -> None:
    assert judge(output, subjects=HOSTS + INSTANCES) == []


@pytest.mark.parametrize(
    ("output", "expect"),
    [
        ('adminhost "ip-10-1-0-10" already exists', Expect.PRESENT),
        ('submithost "ip-10-1-0-11" already exists', Expect.PRESENT),
        (
            'No modification because "ip-10-1-0-10" already exists in "hostlist" of "hostgroup"',
            Expect.PRESENT,
        ),
        ('"ip-10-1-0-10" does not exist in "hostlist" of "hostgroup"', Expect.ABSENT),
        ('denied: execution host "ip-10-1-0-10" does not exist', Expect.ABSENT),
        ('denied: submit host "ip-10-1-0-10" does not exist', Expect.ABSENT),
        ('denied: administrative host "ip-10-1-0-11" does not exist', Expect.ABSENT),
        ('invalid queue "all.q@ip-10-1-0-10"', Expect.ABSENT),
        ("ip-10-1-0-10 is not an execution host", Expect.ABSENT),
        # SGE may print a host as it resolved it.
        ('adminhost "IP-10-1-0-10" already exists', Expect.PRESENT),
    ],
)
def test_a_repeat_succeeds_when_it_is_expected_and_names_the_hosts_given(
    output: str, expect: Expect
) -> None:
    assert judge(output, subjects=HOSTS + INSTANCES, expect=expect) == []
    assert judge(output, subjects=HOSTS + INSTANCES) == [output]
    other = Expect.ABSENT if expect is Expect.PRESENT else Expect.PRESENT
    assert judge(output, subjects=HOSTS + INSTANCES, expect=other) == [output]
    assert judge(output, subjects=["ip-10-1-0-99"], expect=expect) == [output]


@pytest.mark.parametrize(
    "output",
    [
        # The host group or queue itself missing is a broken configuration.
        'denied: host group "@nogroup" does not exist',
        'invalid queue "nosuch.q@ip-10-1-0-10"',
        # An execution host that the host group did not create.
        'denied: exechost "ip-10-1-0-10" does not exist',
        # Exit 0, yet nothing was done (qmod -rq without -f, qconf -purge).
        "The job 1 is running in queue none where jobs are not rerunable.",
        'Attribute name ("slots") and/or value ("ip-10-1-0-10") not found',
        # Exit 1.
        'can\'t resolve hostname "ip-10-9-9-9"',
        'unable to resolve host "ip-10-1-0-10,ip-10-1-0-11"',
        'denied: "sgeadmin" must be manager for this operation',
        "error: commlib error: got select error (Connection refused)",
        'unable to send message to qmaster using port 6444 on host "cfn-qmaster": got send error',
        "All list elements must be separated by commas",
    ],
)
def test_anything_else_is_a_failure_even_when_a_repeat_is_expected(output: str) -> None:
    for expect in (None, Expect.PRESENT, Expect.ABSENT):
        assert judge(output, subjects=HOSTS + INSTANCES, expect=expect) == [output]


def test_only_the_failed_lines_of_a_batch_are_reported() -> None:
    output = (
        "ip-10-1-0-10 added to administrative host list\n"
        'can\'t resolve hostname "ip-10-9-9-9"\n'
        'adminhost "ip-10-1-0-11" already exists\n'
    )

    assert judge(output, subjects=[*HOSTS, "ip-10-9-9-9"], expect=Expect.PRESENT) == [
        'can\'t resolve hostname "ip-10-9-9-9"'
    ]


QUEUES = """\
<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <Queue-List>
      <name>all.q@ip-10-1-0-3</name>
      <qtype>BIP</qtype>
      <slots_used>0</slots_used>
      <slots_resv>0</slots_resv>
      <slots_total>99999</slots_total>
      <state>au</state>
      <resource name="slots" type="hc">4</resource>
    </Queue-List>
    <Queue-List>
      <name>all.q@ip-10-9-0-1</name>
      <qtype>BIP</qtype>
      <slots_used>3</slots_used>
      <slots_resv>0</slots_resv>
      <slots_total>99999</slots_total>
      <load_avg>0.96143</load_avg>
      <arch>lx-amd64</arch>
      <state>d</state>
      <resource name="slots" type="hc">1.000000</resource>
      <job_list state="running">
        <JB_job_number>9</JB_job_number>
      </job_list>
    </Queue-List>
    <Queue-List>
      <name>all.q@ip-10-9-0-2</name>
      <slots_used>1</slots_used>
      <slots_resv>1</slots_resv>
      <slots_total>8</slots_total>
    </Queue-List>
    <Queue-List>
      <name>interactive.q@ip-10-9-0-1</name>
      <slots_used>0</slots_used>
      <slots_resv>0</slots_resv>
      <slots_total>1</slots_total>
    </Queue-List>
  </queue_info>
  <job_info>
  </job_info>
</job_info>
"""


def test_queue_instances_give_slots_use_and_state_of_the_queue_asked_for() -> None:
    assert parse_queue_xml(QUEUES, "all.q") == [
        QueueInstance("ip-10-1-0-3", used=0, free=4, flags="au"),
        QueueInstance("ip-10-9-0-1", used=3, free=1, flags="d"),
        # No host limit: the queue's slots less those used and reserved.
        QueueInstance("ip-10-9-0-2", used=1, free=6, flags=""),
    ]
    assert parse_queue_xml(QUEUES.replace("all.q@", "other.q@"), "all.q") == []


def test_output_that_is_not_xml_is_a_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="no valid XML"):
        parse_queue_xml("error: commlib error: got select error", "all.q")


JOBS = """\
<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>1</JB_job_number>
      <state>r</state>
      <queue_name>all.q@ip-10-9-0-1</queue_name>
      <slots>1</slots>
    </job_list>
    <job_list state="running">
      <JB_job_number>8</JB_job_number>
      <state>r</state>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>3</JB_job_number>
      <state>hqw</state>
      <slots>1</slots>
      <predecessor_jobs_req>1</predecessor_jobs_req>
      <predecessor_jobs>1</predecessor_jobs>
    </job_list>
    <job_list state="pending">
      <JB_job_number>6</JB_job_number>
      <state>qw</state>
      <slots>8</slots>
      <requested_pe name="mpi4">8</requested_pe>
    </job_list>
    <job_list state="pending">
      <JB_job_number>8</JB_job_number>
      <state>qw</state>
      <slots>1</slots>
      <tasks>2-5:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>17</JB_job_number>
      <state>hqw</state>
      <slots>1</slots>
      <tasks>1-3:1</tasks>
      <ad_predecessor_jobs_req>16</ad_predecessor_jobs_req>
      <ad_predecessor_jobs>16</ad_predecessor_jobs>
    </job_list>
  </job_info>
</job_info>
"""


def test_jobs_are_pending_or_running_with_their_slots_tasks_and_waits() -> None:
    pending, running = parse_jobs_xml(JOBS)

    assert [(job.number, job.tasks) for job in running] == [("1", ""), ("8", "1")]
    assert pending == [
        SgeJob("3", "hqw", 1, "", None, predecessors=True),
        SgeJob("6", "qw", 8, "", "mpi4", predecessors=False),
        SgeJob("8", "qw", 1, "2-5:1", None, predecessors=False),
        SgeJob("17", "hqw", 1, "1-3:1", None, predecessors=True),
    ]


def test_predecessors_already_done_do_not_hold_a_job_back() -> None:
    text = JOBS.replace("<predecessor_jobs>1</predecessor_jobs>", "")

    assert not parse_jobs_xml(text)[0][0].predecessors


@pytest.mark.parametrize(
    ("tasks", "ids"),
    [("1-5:1", [1, 2, 3, 4, 5]), ("2,4-8:2", [2, 4, 6, 8]), ("7", [7]), ("", [])],
)
def test_task_ranges_expand_as_qstat_prints_them(tasks: str, ids: list[int]) -> None:
    assert expand_tasks(tasks) == ids


@pytest.mark.parametrize(
    ("rule", "slots"),
    [("4", 4), ("$pe_slots", None), ("$fill_up", None), ("$round_robin", None), ("0", None)],
)
def test_only_a_numeric_allocation_rule_fixes_slots_per_host(rule: str, slots: int | None) -> None:
    text = f"pe_name            mpi\nslots              99999\nallocation_rule    {rule}\n"

    assert parse_allocation_rule(text) == slots


def job(number: str = "5", state: str = "qw", **fields: Any) -> SgeJob:
    values: dict[str, Any] = {"slots": 1, "tasks": "", "pe": None, "predecessors": False}
    return SgeJob(number, state, **(values | fields))


@pytest.mark.parametrize(
    ("entry", "holdup"),
    [
        (job(), Holdup.NONE),
        (job(state="Rq"), Holdup.NONE),  # rescheduled: back in the queue
        (job(state="hqw"), Holdup.HELD),
        (job(state="Eqw"), Holdup.HELD),
        (job(state="hqw", predecessors=True), Holdup.DEPENDENCY),
        (job(state="Ehqw", predecessors=True), Holdup.HELD),
    ],
)
def test_each_pending_job_says_why_it_waits(entry: SgeJob, holdup: Holdup) -> None:
    [pending] = pending_jobs([entry], start_later=(), slots_per_host={})

    assert pending.holdup is holdup


def test_a_job_with_a_start_time_ahead_waits_for_it() -> None:
    [pending] = pending_jobs([job("7")], start_later={"7"}, slots_per_host={})

    assert pending.holdup is Holdup.BEGIN_TIME


def test_array_tasks_are_jobs_each_and_parallel_ones_span_hosts_by_their_rule() -> None:
    entries = [
        job("8", tasks="2-4:1"),
        job("6", slots=8, pe="mpi4"),
        job("9", slots=3, pe="mpi4"),
        job("10", slots=16, pe="smp"),
    ]

    pending = pending_jobs(entries, start_later=(), slots_per_host={"mpi4": 4})

    assert pending == [
        PendingJob("8.2", 1, 1, Holdup.NONE),
        PendingJob("8.3", 1, 1, Holdup.NONE),
        PendingJob("8.4", 1, 1, Holdup.NONE),
        PendingJob("6", 2, 8, Holdup.NONE),
        PendingJob("9", 1, 3, Holdup.NONE),
        PendingJob("10", 1, 16, Holdup.NONE),
    ]


def test_a_host_is_idle_since_it_was_first_seen_idle() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    later = start + timedelta(minutes=5)

    first = track_idle({}, {"a": False, "b": True}, start)
    second = track_idle(first, {"a": False, "b": False, "gone-before": False}, later)
    third = track_idle(second, {"a": True, "b": False}, later + timedelta(minutes=1))

    assert first == {"a": start}
    assert second == {"a": start, "b": later, "gone-before": later}
    assert third == {"b": later}


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-rf",
        "ip-10-0-0-1,ip-10-0-0-2",
        "ip-10-0-0-1 ip-10-0-0-2",
        "@allhosts",
        "all.q@ip-10-0-0-1",
        "*",
        "ip-10-0-0-*",
        "host-",
        "a..b",
        "ip-10-0-0-1\n",
        "\u0131p-10-0-0-1",  # a dotless i
        "x" * 64,
        "$(reboot)",
    ],
)
async def test_what_is_not_a_hostname_never_reaches_a_command_line(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "run", _no_command)
    backend = Sge(SgeSettings())

    with pytest.raises(SchedulerError, match="not a hostname"):
        checked_hostnames(["ip-10-0-0-1", name])
    for operation in (backend.remove_hosts, backend.resume_hosts):
        with pytest.raises(SchedulerError, match="not a hostname"):
            await operation([name])
    with pytest.raises(SchedulerError, match="not a hostname"):
        await backend.drain_hosts([name], "maintenance")
    with pytest.raises(SchedulerError, match="not a hostname"):
        await backend.add_hosts([Host(name, 4)])


@pytest.mark.parametrize("name", ["global", "NONE", "template"])
async def test_names_sge_reads_as_something_else_are_refused(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "run", _no_command)

    with pytest.raises(SchedulerError, match="not a host name in SGE"):
        await Sge(SgeSettings()).add_hosts([Host(name, 4)])


def test_hostnames_are_kept_in_order_once_each() -> None:
    assert checked_hostnames(["b", "a.example", "b", "ip-10-0-0-1"]) == [
        "b",
        "a.example",
        "ip-10-0-0-1",
    ]


def test_the_sge_section_configures_the_backend() -> None:
    loaded: config.Config = config.parse(
        node_toml(
            stack="c",
            cluster='scheduler = "sge"\n',
            after='[sge]\nroot = "/opt/sge"\nqueue = "compute.q"\nhost_group = "@compute"\n'
            'wrapper = ["nsenter", "-t", "1", "-m"]\n',
        ),
        source="node.toml",
    )

    backend = services.build_scheduler(loaded)

    assert isinstance(backend, Sge) and backend.name == "sge"
    assert loaded.sge.root == Path("/opt/sge") and loaded.sge.cell == "default"


def test_a_host_group_must_be_named_as_sge_names_them() -> None:
    with pytest.raises(config.ConfigError, match=r"sge\.host_group"):
        config.parse(
            node_toml(stack="c", after='[sge]\nhost_group = "allhosts"\n'),
            source="node.toml",
        )


async def _no_command(*args: Any, **kwargs: Any) -> commands.CommandResult:
    raise AssertionError("a command ran")


# Against a real qmaster.

NODE = Host("ip-10-3-0-1", 2)


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}")
        time.sleep(0.2)


def running(sge: LocalSge) -> list[str]:
    return [entry.number for entry in parse_jobs_xml(sge.qstat("-u", "*", "-xml"))[1]]


@pytest.mark.sge
async def test_a_host_runs_as_many_slots_as_it_has_and_no_more(sge: LocalSge) -> None:
    backend = Sge(sge.settings)
    await backend.add_hosts([NODE])
    sge.start_execd(NODE.hostname)

    wide = sge.qsub("-pe", "smp", "2", "-b", "y", "sleep", "600")
    wait_for("running", lambda: running(sge) == [wide])
    extra = sge.qsub("-b", "y", "sleep", "600")

    # The scheduler says why it left the job waiting: the host's slots are all taken.
    wait_for("refused", lambda: "hc:slots=0" in sge.qstat("-j", extra))
    [host] = await backend.list_hosts()
    assert (host.slots, host.busy, host.available) == (2, True, True)
    assert running(sge) == [wide]


@pytest.mark.sge
async def test_a_host_whose_instance_vanished_is_removed_and_its_job_requeued(
    sge: LocalSge,
) -> None:
    backend = Sge(sge.settings)
    await backend.add_hosts([NODE])
    sge.start_execd(NODE.hostname)
    job_id = sge.qsub("-b", "y", "sleep", "600")
    wait_for("running", lambda: running(sge) == [job_id])

    sge.stop_execd(NODE.hostname)  # no execd will ever answer again
    await backend.remove_hosts([NODE.hostname])

    assert await backend.list_hosts() == []
    jobs = await backend.jobs()
    assert (jobs.running, [job.job_id for job in jobs.pending]) == (0, [job_id])


@pytest.mark.sge
async def test_removed_hosts_leave_no_trace_in_the_cluster_configuration(sge: LocalSge) -> None:
    backend = Sge(sge.settings)
    batch = [Host(f"ip-10-1-0-{n}", 4) for n in range(1, 4)]
    await backend.add_hosts(batch)
    assert "complex_values        slots=4" in sge.qconf("-se", "ip-10-1-0-2")

    await backend.remove_hosts([host.hostname for host in batch])

    configuration = " ".join(
        [sge.qconf("-shgrp", LocalSge.HOST_GROUP), sge.qconf("-sh"), sge.qconf("-ss")]
    )
    assert "ip-10-1-0" not in configuration
    assert "ip-10-1-0" not in sge.qconf("-sq", LocalSge.QUEUE)


@pytest.mark.sge
async def test_pending_jobs_span_hosts_by_their_parallel_environment_and_tasks(
    sge: LocalSge,
) -> None:
    if "pairs" not in sge.qconf("-spl").split():
        sge.add_parallel_environment("pairs", "2")
    backend = Sge(sge.settings)
    wide = sge.qsub("-pe", "pairs", "6", "-b", "y", "true")
    array = sge.qsub("-t", "1-3", "-b", "y", "true")
    later = sge.qsub("-a", "203001010000", "-b", "y", "true")
    held_array = sge.qsub("-h", "-t", "1-2", "-b", "y", "true")
    after_array = sge.qsub("-t", "1-2", "-hold_jid_ad", held_array, "-b", "y", "true")

    jobs = await backend.jobs()

    assert {job.job_id: (job.nodes, job.slots, job.holdup) for job in jobs.pending} == {
        wide: (3, 6, Holdup.NONE),
        f"{array}.1": (1, 1, Holdup.NONE),
        f"{array}.2": (1, 1, Holdup.NONE),
        f"{array}.3": (1, 1, Holdup.NONE),
        later: (1, 1, Holdup.BEGIN_TIME),
        f"{held_array}.1": (1, 1, Holdup.HELD),
        f"{held_array}.2": (1, 1, Holdup.HELD),
        f"{after_array}.1": (1, 1, Holdup.DEPENDENCY),
        f"{after_array}.2": (1, 1, Holdup.DEPENDENCY),
    }


@pytest.mark.sge
async def test_only_the_host_groups_hosts_are_the_backends(sge: LocalSge) -> None:
    backend = Sge(sge.settings)
    await backend.add_hosts([NODE])
    sge.qconf("-ah", "ip-10-1-0-9")
    sge.qconf("-aattr", "queue", "hostlist", "ip-10-1-0-9", LocalSge.QUEUE)
    try:
        listed = [host.hostname for host in await backend.list_hosts()]
    finally:
        sge.qconf("-dattr", "queue", "hostlist", "ip-10-1-0-9", LocalSge.QUEUE)

    assert listed == [NODE.hostname]


@pytest.mark.sge
async def test_an_idle_host_keeps_the_time_it_was_first_seen_idle(sge: LocalSge) -> None:
    backend = Sge(sge.settings)
    await backend.add_hosts([NODE])

    [first] = await backend.list_hosts()
    [again] = await backend.list_hosts()

    assert first.idle_since is not None and again.idle_since == first.idle_since


@pytest.mark.sge
async def test_a_hostname_the_qmaster_cannot_resolve_fails_the_batch_naming_it(
    sge: LocalSge,
) -> None:
    backend = Sge(sge.settings)

    with pytest.raises(SchedulerError, match="ip-10-9-9-9"):
        await backend.add_hosts([NODE, Host("ip-10-9-9-9", 4)])

    await backend.add_hosts([NODE])  # the registry retries the others alone
    assert [host.hostname for host in await backend.list_hosts()] == [NODE.hostname]


@pytest.mark.sge
async def test_a_host_group_no_queue_uses_is_an_error_not_a_silent_success(
    sge: LocalSge,
) -> None:
    backend = Sge(sge.settings.model_copy(update={"host_group": "@nosuch"}))

    with pytest.raises(SchedulerError, match="@nosuch"):
        await backend.add_hosts([NODE])


@pytest.mark.sge
async def test_draining_or_resuming_a_host_sge_does_not_know_is_an_error(sge: LocalSge) -> None:
    backend = Sge(sge.settings)

    with pytest.raises(SchedulerError, match="invalid queue"):
        await backend.drain_hosts(["ip-10-1-0-1"], "maintenance")
    with pytest.raises(SchedulerError, match="invalid queue"):
        await backend.resume_hosts(["ip-10-1-0-1"])


@pytest.mark.sge
async def test_a_cell_that_is_not_there_is_a_scheduler_error(sge: LocalSge, tmp_path: Path) -> None:
    backend = Sge(sge.settings.model_copy(update={"root": tmp_path, "command_timeout": 5.0}))

    # Both queries run at once: whichever fails first is the one named.
    with pytest.raises(SchedulerError, match=r"qstat|qconf"):
        await backend.list_hosts()


async def test_the_head_nodes_cell_configuration_finds_all_in_place_at_the_next_boot(
    sge: LocalSge,
) -> None:
    """LocalSge's qmaster was configured by configure_cell: a second run, as the head
    node's next boot, changes nothing, and the queue is what the backend relies on."""
    backend = Sge(sge.settings)

    changed = await backend.configure_cell(sge.MASTER, schedule_interval="0:0:1")

    assert changed == []
    queue = sgeconf.values(sge.qconf("-sq", sge.QUEUE))
    assert queue["hostlist"] == sge.HOST_GROUP
    assert queue["slots"] == "99999"
    assert "smp" in queue["pe_list"].split()
    assert sgeconf.values(sge.qconf("-ssconf"))["flush_submit_sec"] == "1"
    assert sge.MASTER in sge.qconf("-ss").split()


def test_the_scheduler_is_edited_only_where_its_timing_differs() -> None:
    current = (
        "algorithm default\nschedule_interval 0:0:15\nflush_submit_sec 0\nflush_finish_sec 0\n"
    )

    edited = sgeconf.scheduler(current, interval="0:0:15")

    assert edited is not None
    assert sgeconf.values(edited) == {
        "algorithm": "default",
        "schedule_interval": "0:0:15",
        "flush_submit_sec": "1",
        "flush_finish_sec": "1",
    }
    assert sgeconf.scheduler(edited, interval="0:0:15") is None


def test_the_cells_bootstrap_knows_hosts_by_short_names_and_spools_where_asked() -> None:
    text = sgeconf.bootstrap(Path("/var/spool/gridengine"))

    assert sgeconf.values(text)["ignore_fqdn"] == "true"
    assert sgeconf.values(text)["spooling_params"] == "/var/spool/gridengine/spooldb"
    assert sgeconf.values(text)["qmaster_spool_dir"] == "/var/spool/gridengine/qmaster"
