"""slurm.conf as the head node writes it (pure); the real slurmctld and slurmds of the
whole suite run on the same renderer's output (local.slurm), which is its test against
the real thing."""

from __future__ import annotations

from dataclasses import replace

from cfncluster_node import protocol
from cfncluster_node.schedulers.slurmconf import Partition, SlurmCluster, cgroup_conf, render

HEAD = SlurmCluster(
    name="MyCluster", controller="ip-10-0-0-5", controller_address="10.0.0.5", max_nodes=1000
)


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_compute_nodes_fetch_the_configuration_from_the_controller_at_its_address() -> None:
    conf = settings(render(HEAD))

    assert conf["SlurmctldHost"] == ["ip-10-0-0-5(10.0.0.5)"]
    assert conf["SlurmctldParameters"] == ["enable_configless"]
    assert conf["ClusterName"] == ["mycluster"]  # Slurm keeps cluster names in lower case
    assert conf["AuthType"] == ["auth/munge"]


def test_every_node_with_the_feature_is_in_the_partition_up_to_the_fleets_maximum() -> None:
    conf = settings(render(HEAD))

    assert conf["MaxNodeCount"] == ["1000"]
    assert conf["Nodeset"] == ["computeset Feature=compute"]
    assert conf["PartitionName"] == [
        "compute Nodes=computeset Default=YES MaxTime=INFINITE State=UP"
    ]
    assert "NodeName" not in conf  # dynamic nodes only


def test_each_partition_holds_the_compute_nodes_and_one_is_the_default() -> None:
    cluster = replace(HEAD, partitions=(Partition("short"), Partition("long", default=True)))

    assert settings(render(cluster))["PartitionName"] == [
        "short Nodes=computeset Default=NO MaxTime=INFINITE State=UP",
        "long Nodes=computeset Default=YES MaxTime=INFINITE State=UP",
    ]


def test_cloud_settings_that_ec2_needs() -> None:
    conf = settings(render(HEAD))

    assert conf["CommunicationParameters"] == ["NoAddrCache"]  # private addresses are reused
    assert conf["TreeWidth"] == ["65533"]
    assert conf["PrivateData"] == ["cloud"]
    assert conf["ReturnToService"] == ["2"]


def test_pid_files_are_where_debians_units_look_for_them() -> None:
    conf = settings(render(HEAD))

    assert conf["SlurmctldPidFile"] == ["/run/slurmctld.pid"]
    assert conf["SlurmdPidFile"] == ["/run/slurmd.pid"]


def test_jobs_run_in_cgroups_unless_the_node_has_none() -> None:
    with_cgroups = settings(render(HEAD))
    without = settings(render(replace(HEAD, cgroups=False)))

    assert with_cgroups["ProctrackType"] == ["proctrack/cgroup"]
    assert with_cgroups["TaskPlugin"] == ["task/affinity,task/cgroup"]
    assert without["ProctrackType"] == ["proctrack/linuxproc"]
    assert without["TaskPlugin"] == ["task/none"]
    assert "CgroupPlugin=autodetect" in cgroup_conf()


def test_each_key_is_set_once_and_the_same_facts_give_the_same_text() -> None:
    conf = settings(render(HEAD))

    assert render(HEAD) == render(replace(HEAD))
    assert {key: len(values) for key, values in conf.items() if len(values) > 1} == {}
    assert "SlurmctldLogFile" not in conf  # slurmctld logs to the journal


def test_srun_listens_where_the_head_nodes_security_group_is_open() -> None:
    text = render(SlurmCluster("c1", "head", "10.0.0.5", max_nodes=8))

    assert f"SrunPortRange={protocol.SRUN_PORTS[0]}-{protocol.SRUN_PORTS[1]}\n" in text
