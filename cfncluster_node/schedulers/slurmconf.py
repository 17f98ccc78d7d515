"""slurm.conf for a cluster of dynamic compute nodes, rendered from a few facts: pure.

The head node's bootstrap writes it at every boot (``node.bootstrap``), and the local
playground renders its private controller's from the same function, so the Slurm the
tests run is configured as a real head node's is. Compute nodes never get a copy: the
controller runs configless (``enable_configless``) and each slurmd fetches it.

What it settles, and why:
- dynamic nodes (``slurmd -Z``, ``scontrol create``): no node is listed, ``MaxNodeCount``
  bounds them, and a ``Nodeset`` on the compute feature puts every one in the partition;
- ``TreeWidth=65533``: the controller talks to each node directly, since dynamic nodes'
  addresses are not all known to each other;
- ``CommunicationParameters=NoAddrCache``: EC2 reuses private addresses, a cached one
  would reach the wrong instance;
- ``PrivateData=cloud``: cloud nodes stay visible to ``sinfo`` and ``scontrol``;
- ``ReturnToService=2``: a node that was DOWN for not responding comes back by itself
  once its slurmd registers again;
- ``SrunPortRange``: srun listens for its steps in the range the security group opens
  on the head node (``protocol.SRUN_PORTS``), not on any ephemeral port.
"""

from __future__ import annotations

from dataclasses import dataclass

from cfncluster_node import protocol

# slurmd's own placeholder: a file per node when several slurmd share one file system.
NODE_NAME = "%n"


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool = False


@dataclass(frozen=True)
class SlurmCluster:
    """name: ClusterName. controller: the head node's short hostname; controller_address:
    where slurmds reach it. max_nodes: the most dynamic nodes at once. feature: what
    compute nodes register with; every partition holds the nodes that have it."""

    name: str
    controller: str
    controller_address: str
    max_nodes: int
    feature: str = "compute"
    partitions: tuple[Partition, ...] = (Partition("compute", default=True),)
    ctld_port: int = protocol.SLURMCTLD_PORT
    slurmd_port: int = protocol.SLURMD_PORT
    srun_ports: tuple[int, int] = protocol.SRUN_PORTS
    # Debian's packages make these, owned by the slurm user.
    state_dir: str = "/var/lib/slurm/slurmctld"
    spool_dir: str = "/var/lib/slurm/slurmd"
    # Where Debian's slurmctld.service and slurmd.service look for them (PIDFile=).
    ctld_pid_file: str = "/run/slurmctld.pid"
    slurmd_pid_file: str = "/run/slurmd.pid"
    # None: slurmctld logs to syslog, which systemd's journal keeps.
    log_file: str | None = None
    # On a real node jobs are held in cgroups; a node without systemd cannot.
    cgroups: bool = True
    # Seconds before a silent slurmd is DOWN.
    slurmd_timeout: int = 300


def render(cluster: SlurmCluster) -> str:
    """The whole slurm.conf; the same facts always give the same text."""
    track, tasks = (
        ("proctrack/cgroup", "task/affinity,task/cgroup")
        if cluster.cgroups
        else ("proctrack/linuxproc", "task/none")
    )
    lines = [
        "# Written by cfncluster-node at every boot; a change made here is overwritten.",
        f"ClusterName={cluster.name.lower()}",
        f"SlurmctldHost={cluster.controller}({cluster.controller_address})",
        "SlurmctldParameters=enable_configless",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"SlurmctldPort={cluster.ctld_port}",
        f"SlurmdPort={cluster.slurmd_port}",
        f"SrunPortRange={cluster.srun_ports[0]}-{cluster.srun_ports[1]}",
        f"StateSaveLocation={cluster.state_dir}",
        f"SlurmdSpoolDir={cluster.spool_dir}",
        f"SlurmctldPidFile={cluster.ctld_pid_file}",
        f"SlurmdPidFile={cluster.slurmd_pid_file}",
        *([f"SlurmctldLogFile={cluster.log_file}"] if cluster.log_file else []),
        f"ProctrackType={track}",
        f"TaskPlugin={tasks}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "ReturnToService=2",
        f"MaxNodeCount={cluster.max_nodes}",
        "MaxJobCount=100000",
        "MaxArraySize=20001",
        "TreeWidth=65533",
        "PrivateData=cloud",
        "CommunicationParameters=NoAddrCache",
        f"SlurmdTimeout={cluster.slurmd_timeout}",
        f"Nodeset={cluster.feature}set Feature={cluster.feature}",
        *(
            f"PartitionName={partition.name} Nodes={cluster.feature}set"
            f" Default={'YES' if partition.default else 'NO'} MaxTime=INFINITE State=UP"
            for partition in cluster.partitions
        ),
    ]
    return "\n".join(lines) + "\n"


def cgroup_conf() -> str:
    """cgroup.conf beside slurm.conf, where jobs run in cgroups (served configless too)."""
    return (
        "# Written by cfncluster-node at every boot; a change made here is overwritten.\n"
        "CgroupPlugin=autodetect\n"
        "ConstrainCores=yes\n"
        "ConstrainRAMSpace=yes\n"
    )
