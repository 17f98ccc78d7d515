"""A compute node configures itself at every boot, then joins the cluster.

In order, each step safe to run again: the metadata service locked to root; the
operator's pre_install hook; the cluster's munge key and munge; the head node's shared
volumes over NFS, waited for until the head node exports them; scratch from this node's
own instance-store disks (the head node's storage code); slurmd, configless, fetching
slurm.conf from slurmctld under this node's own name; the post_install hook; and only
then ``announce ready``, so the head node registers a node that can run jobs. A node
whose bootstrap fails announces nothing: it says why in the journal, and the
reconciler's "never joined" deals with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from cfncluster_node import commands, logs, protocol
from cfncluster_node.aws import Aws
from cfncluster_node.config import ComputeConfig, ComputeNodeSettings
from cfncluster_node.node import announce, bootstrap, hooks, metadata
from cfncluster_node.node.bootstrap import BootstrapError
from cfncluster_node.schedulers import slurm
from cfncluster_node.storage import StorageError, setup
from cfncluster_node.storage.machine import mounts

SLURMD_DEFAULTS = Path("/etc/default/slurmd")
# Debian's slurmd.service starts only where /etc/slurm/slurm.conf exists: configless,
# none does.
SLURMD_DROP_IN = Path("/etc/systemd/system/slurmd.service.d/cfncluster.conf")
# slurmd exits when slurmctld does not answer (the head node may still be booting), and
# Debian's unit does not restart it: it retries here until the node is registered.
SLURMD_UNIT_OVERRIDES = """\
[Unit]
# Configless: slurm.conf comes from slurmctld.
ConditionPathExists=
StartLimitIntervalSec=0

[Service]
Restart=on-failure
RestartSec=5
"""
# Where slurmd keeps the slurm.conf it fetched, for scontrol on this node: /run/slurm/conf
# since Slurm 22.05, the spool directory before.
SLURMD_CONF_CACHES = (
    Path("/run/slurm/conf/slurm.conf"),
    Path("/var/spool/slurmd/conf-cache/slurm.conf"),
)
_MOUNT_TIMEOUT_S = 60.0
_MOUNT_RETRY_S = 5.0
_SCONTROL_TIMEOUT_S = 30.0
_REGISTRATION_POLL_S = 2.0


async def come_up(settings: ComputeConfig, aws: Aws) -> announce.Identity:
    """Configure this node and join: the identity it announced. A step that fails is
    logged with what came before it, then raised: the node sends nothing."""
    clock = Stopwatch()
    log = logs.get(step="compute_bootstrap")
    try:
        identity = await _configure(settings, aws, clock)
    except Exception as exc:
        log.error(
            "compute_node_failed", failed_step=clock.failed, error=str(exc), **clock.summary()
        )
        raise
    log.info("compute_node_configured", hostname=identity.hostname, **clock.summary())
    return identity


async def _configure(settings: ComputeConfig, aws: Aws, clock: Stopwatch) -> announce.Identity:
    node = settings.compute
    async with clock.step("metadata", OWN):
        # Before any of the operator's or the users' code can run.
        await metadata.lock(node.metadata_users)
    async with clock.step("pre_install", HOOK):
        await run_hook("pre_install", settings, aws)
    async with clock.step("munge_key", OWN):
        key_changed = await install_munge_key(aws, node)
    async with clock.step("munge", WAIT):
        await bootstrap.ensure_running("munge", restart=key_changed)
    async with clock.step("nfs", WAIT):
        for mount_point in node.shared:
            await mount_shared(node, mount_point)
    async with clock.step("scratch", OWN):
        try:
            await setup.set_up_all(settings.storage, aws=aws)
        except StorageError as exc:
            raise BootstrapError(f"scratch: {exc}") from None
    async with clock.step("slurmd", OWN):
        identity = await announce.identify()
        await start_slurmd(node, identity.hostname, restart=key_changed)
    async with clock.step("slurmd_registration", WAIT):
        await wait_until_registered(node, identity.hostname)
    async with clock.step("post_install", HOOK):
        await run_hook("post_install", settings, aws)
    async with clock.step("announce", OWN):
        await announce.send(aws, node.queue_url, protocol.READY_EVENT, identity)
    return identity


# Where a compute node's boot goes: the product's own work, what it waits for (the head
# node, slurmctld, the daemons it starts) and the operator's hooks.
OWN, WAIT, HOOK = "own", "waited", "hooks"


class Stopwatch:
    def __init__(self) -> None:
        self._steps: list[tuple[str, str, float]] = []
        self.failed: str | None = None

    @contextlib.asynccontextmanager
    async def step(self, name: str, kind: str) -> AsyncIterator[None]:
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.failed = name
            raise
        finally:
            self._steps.append((name, kind, time.monotonic() - started))

    def summary(self) -> dict[str, object]:
        """``duration_ms``, then the milliseconds of each kind, then of each step."""

        def ms(seconds: float) -> float:
            return round(seconds * 1000, 1)

        return {
            "duration_ms": ms(sum(seconds for _, _, seconds in self._steps)),
            **{
                f"{kind}_ms": ms(sum(s for _, k, s in self._steps if k == kind))
                for kind in (OWN, WAIT, HOOK)
            },
            "steps": " ".join(f"{name}={ms(seconds)}" for name, _, seconds in self._steps),
        }


async def run_hook(name: str, settings: ComputeConfig, aws: Aws) -> None:
    await hooks.run(name, settings.hooks, aws, role="compute")


async def install_munge_key(aws: Aws, node: ComputeNodeSettings) -> bool:
    return await bootstrap.install_munge_key(aws, node.munge_key_secret, node.munge_key)


async def mount_shared(node: ComputeNodeSettings, mount_point: str) -> None:
    """The head node's export at the same path, retried until the head node serves it."""
    source = f"{node.head_node}:{mount_point}"
    if any(m.target == mount_point and m.source == source for m in await mounts()):
        return
    await asyncio.to_thread(Path(mount_point).mkdir, parents=True, exist_ok=True)
    deadline = time.monotonic() + node.mount_timeout
    while True:
        try:
            await commands.run(
                ["mount", "-t", "nfs4", "-o", "hard,noatime,_netdev", source, mount_point],
                timeout=_MOUNT_TIMEOUT_S,
            )
            logs.get().info("shared_volume_mounted", source=source, mount_point=mount_point)
            return
        except commands.CommandError as exc:
            if time.monotonic() > deadline:
                raise BootstrapError(f"{source} not mounted: {exc}") from None
            logs.get().info("shared_volume_waiting", source=source, error=str(exc))
            await asyncio.sleep(_MOUNT_RETRY_S)


def slurmd_options(node: ComputeNodeSettings, hostname: str) -> list[str]:
    """slurmd's arguments: configless from the head node, a dynamic node under this
    node's own name, with the compute feature every partition selects."""
    return [
        "--conf-server",
        f"{node.head_node}:{node.slurmctld_port}",
        "-Z",
        "--conf",
        f"Features={node.feature}",
        "-N",
        hostname.split(".")[0],
    ]


async def start_slurmd(node: ComputeNodeSettings, hostname: str, *, restart: bool) -> None:
    options = " ".join(slurmd_options(node, hostname))
    changed = await asyncio.to_thread(
        bootstrap.write_if_changed_all,
        {
            SLURMD_DEFAULTS: f"SLURMD_OPTIONS={options}\n",
            SLURMD_DROP_IN: SLURMD_UNIT_OVERRIDES,
        },
    )
    if changed:
        await bootstrap.daemon_reload()
    await bootstrap.ensure_running("slurmd", restart=restart or changed)


async def wait_until_registered(
    node: ComputeNodeSettings,
    hostname: str,
    *,
    conf_caches: tuple[Path, ...] = SLURMD_CONF_CACHES,
    poll: float = _REGISTRATION_POLL_S,
) -> None:
    """Wait until slurmctld lists this node and hears from it: a node announced ready
    before then would be given jobs it cannot run."""
    name = hostname.split(".")[0]
    deadline = time.monotonic() + node.register_timeout
    last = "slurmd has not fetched slurm.conf yet"
    while True:
        conf = next((path for path in conf_caches if path.exists()), None)
        if conf is not None:
            try:
                result = await commands.run(
                    ["scontrol", "-o", "show", "node", name],
                    timeout=_SCONTROL_TIMEOUT_S,
                    env={"SLURM_CONF": str(conf)},
                )
            except commands.CommandError as exc:
                last = str(exc)
            else:
                if registered(result.stdout, name):
                    logs.get().info("slurmd_registered", hostname=name)
                    return
                last = result.stdout.strip()
        if time.monotonic() > deadline:
            raise BootstrapError(
                f"slurmd not registered with {node.head_node}:{node.slurmctld_port} "
                f"within {node.register_timeout:g} s: {last}"
            )
        await asyncio.sleep(poll)


def registered(scontrol_output: str, name: str) -> bool:
    """Whether ``scontrol -o show node NAME`` shows the node answering slurmctld."""
    return any(
        node.name == name and not node.flags & {"NOT_RESPONDING", "UNKNOWN", "FUTURE"}
        for node in slurm.parse_nodes(scontrol_output)
    )
