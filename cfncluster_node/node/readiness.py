"""Telling CloudFormation the head node is up, or why it is not.

The stack's head node has a creation policy: the stack completes only when the head node
signals SUCCESS (``cloudformation:SignalResource``), after its storage is set up and its
scheduler answers. A setup that fails signals FAILURE, so the stack fails at once with
the cause instead of timing out half an hour later.

SignalResource carries no reason, only a UniqueId of up to 64 characters, which
CloudFormation shows in the resource's event ("Received FAILURE signal with UniqueId
..."): a failure's UniqueId is the instance id followed by the start of the reason. The
whole reason is in the journal (event=head_node_failed).
"""

from __future__ import annotations

from collections.abc import Callable

from cfncluster_node import imds, logs
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import ClusterSettings, Config
from cfncluster_node.node import bootstrap, hooks, metadata, sdnotify
from cfncluster_node.node.registry import Registry
from cfncluster_node.storage import setup

_UNIQUE_ID_MAX = 64


def failure_id(instance_id: str, reason: str) -> str:
    """The UniqueId of a FAILURE signal: the instance, then as much of the reason as fits."""
    words = " ".join(reason.split())
    return f"{instance_id} {words}"[:_UNIQUE_ID_MAX].rstrip()


class Readiness:
    """Signals the stack once, if the config names this head node's resource in it."""

    def __init__(self, aws: Aws, cluster: ClusterSettings) -> None:
        self._aws = aws
        self._cluster = cluster
        self._log = logs.get(stack=cluster.stack_name, resource=cluster.signal_resource)

    async def ready(self) -> None:
        self._log.info("head_node_ready")
        await self._signal("SUCCESS", lambda instance_id: instance_id)

    async def failed(self, reason: str) -> None:
        self._log.error("head_node_failed", reason=reason)
        sdnotify.notify(STATUS=f"failed: {reason}"[:200])
        await self._signal("FAILURE", lambda instance_id: failure_id(instance_id, reason))

    async def _signal(self, status: str, unique_id: Callable[[str], str]) -> None:
        if self._cluster.signal_resource is None:
            return
        try:
            instance_id = (await imds.read(["instance-id"])).get("instance-id", "head-node")
        except imds.MetadataError as exc:
            self._log.warning("instance_id_unknown", error=str(exc))
            instance_id = "head-node"
        try:
            await self._aws.call(
                "cloudformation",
                "signal_resource",
                StackName=self._cluster.stack_name,
                LogicalResourceId=self._cluster.signal_resource,
                UniqueId=unique_id(instance_id),
                Status=status,
            )
        except AwsError as exc:
            # Not fatal: after a restart the stack is complete and refuses a second
            # signal; otherwise CloudFormation times out with its own message.
            self._log.warning("stack_signal_failed", status=status, error=str(exc))
            return
        self._log.info("stack_signalled", status=status)


async def bring_up(settings: Config, aws: Aws, registry: Registry) -> None:
    """The operator's pre_install hook, storage, the node's own configuration (munge,
    the scheduler's), the post_install hook, then a scheduler that answers: the services
    never start on a half-set-up node. The stack hears the outcome either way, with the
    step that failed."""
    stack = Readiness(aws, settings.cluster)
    step = "metadata"
    try:
        if settings.bootstrap is not None:
            # Before any of the operator's or the users' code can run.
            await metadata.lock(settings.bootstrap.metadata_users)
        step = "pre_install"
        await hooks.run(step, settings.hooks, aws, role="head")
        step = "storage"
        sdnotify.notify(STATUS="setting up storage")
        await setup.set_up_all(settings.storage, aws=aws)
        if settings.bootstrap is not None:
            step = "bootstrap"
            sdnotify.notify(STATUS="configuring munge and the scheduler")
            await bootstrap.head_node(settings, settings.bootstrap, aws)
        step = "post_install"
        await hooks.run(step, settings.hooks, aws, role="head")
        step = "scheduler"
        await registry.scheduler.list_hosts()
    except Exception as exc:
        # Any failure, not only the expected kinds (an IMDS error, blkid's, a bug): the
        # unit would restart into the same failure while the stack waited half an hour.
        await stack.failed(f"{step}: {exc}")
        raise
    await stack.ready()
