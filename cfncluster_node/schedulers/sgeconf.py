"""The Grid Engine cell a head node runs, in qconf's own file formats.

Rendered here, written by the head node's bootstrap (``node/bootstrap.py``) and by the
local qmaster of the tests and the demo alike:
- the cell's bootstrap file (where its spool is, who administers it);
- what the backend (``schedulers/sge.py``) relies on: a host group that compute hosts
  join, in the hostlist of the cluster's queue, and the ``smp`` parallel environment;
- the scheduler's timing.

Every SGE object is ``key value`` lines; a change is an edit of the one qconf shows.
"""

from __future__ import annotations

from pathlib import Path

ADMIN_USER = "sgeadmin"
# All of a job's slots on one host: what sites call smp.
SMP = "smp"

_BOOTSTRAP = """\
admin_user              {admin}
default_domain          none
ignore_fqdn             true
spooling_method         berkeleydb
spooling_lib            libspoolb
spooling_params         {spool}/spooldb
binary_path             /usr/sbin
qmaster_spool_dir       {spool}/qmaster
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
"""
_PARALLEL_ENVIRONMENT = """\
pe_name            {name}
slots              99999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    {rule}
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
"""


def bootstrap(spool: Path, admin: str = ADMIN_USER) -> str:
    """The cell's ``common/bootstrap``. ``ignore_fqdn``: hosts are known by their short
    names, as EC2's ``ip-10-0-0-5`` and the scheduler's hostnames are."""
    return _BOOTSTRAP.format(admin=admin, spool=spool)


def host_group(name: str) -> str:
    """An empty host group: the head node's watcher adds each compute host to it."""
    return f"group_name {name}\nhostlist NONE\n"


def parallel_environment(name: str, rule: str) -> str:
    """A parallel environment: ``rule`` is $pe_slots, $fill_up, $round_robin or a number
    of slots per host."""
    return _PARALLEL_ENVIRONMENT.format(name=name, rule=rule)


def queue(template: str, *, name: str, hosts: str, parallel_environments: str) -> str:
    """The cluster's queue, edited from qconf's template (``qconf -sq``)."""
    return edit(
        template,
        {
            "qname": name,
            "hostlist": hosts,
            "pe_list": parallel_environments,
            # A host's capacity is its execution host's slots (complex_values slots=N,
            # schedulers/sge.py), never the queue's.
            "slots": "99999",
            # A load alarm would hide a free host from the scheduler while the publisher
            # counts its slots: capacity is slots, not load.
            "load_thresholds": "NONE",
        },
    )


def scheduler(current: str, *, interval: str) -> str | None:
    """The scheduler's configuration with its timing set; None if it already is.

    A scheduling run ``interval`` apart, and one second after any submission or job end:
    a job starts as soon as a host is free, without a run every second on a large
    cluster."""
    wanted = {"schedule_interval": interval, "flush_submit_sec": "1", "flush_finish_sec": "1"}
    if all(values(current).get(key) == value for key, value in wanted.items()):
        return None
    return edit(current, wanted)


def values(text: str) -> dict[str, str]:
    """An SGE configuration's ``key value`` lines."""
    found = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            found[key] = value.strip()
    return found


def edit(text: str, changes: dict[str, str]) -> str:
    """An SGE configuration with ``changes`` set, every other line as it was."""
    lines = []
    for line in text.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        lines.append(f"{key} {changes[key]}" if key in changes else line)
    return "\n".join(lines) + "\n"
