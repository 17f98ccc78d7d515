"""The head node's services, built from the configuration: the one place they are wired."""

from __future__ import annotations

from datetime import timedelta

from cfncluster_node.aws import Aws
from cfncluster_node.config import Config, ServiceName
from cfncluster_node.node.instances import InstanceTable
from cfncluster_node.node.publisher import Publisher
from cfncluster_node.node.reconciler import Reconciler
from cfncluster_node.node.registry import Registry
from cfncluster_node.node.scalein import ScaleIn
from cfncluster_node.node.service import Service
from cfncluster_node.node.sqswatcher import SqsWatcher
from cfncluster_node.schedulers import Scheduler
from cfncluster_node.schedulers.sge import Sge
from cfncluster_node.schedulers.slurm import Slurm


def build_scheduler(settings: Config) -> Scheduler:
    match settings.cluster.scheduler:
        case "slurm":
            return Slurm(settings.slurm)
        case "sge":
            return Sge(settings.sge)


def build_registry(settings: Config, aws: Aws) -> Registry:
    return Registry(
        InstanceTable(aws, settings.cluster.table),
        build_scheduler(settings),
        default_slots=settings.cluster.default_slots,
        tombstone_for=timedelta(days=settings.cluster.tombstone_days),
    )


def build(
    name: ServiceName, settings: Config, aws: Aws, registry: Registry, *, burst: bool = False
) -> Service:
    match name:
        case "sqswatcher":
            return SqsWatcher(
                aws,
                settings.sqswatcher,
                registry,
                compute_group=settings.cluster.compute_group,
                burst=burst,
            )
        case "scalein":
            return ScaleIn(aws, settings.scalein, settings.cluster, registry, burst=burst)
        case "reconciler":
            return Reconciler(aws, settings.reconciler, settings.cluster, registry, burst=burst)
        case "publisher":
            return Publisher(
                aws, settings.publisher, settings.cluster, registry.scheduler, burst=burst
            )
