"""The head node configures itself at every boot: the cluster's munge key, the scheduler's
configuration, and the daemons that read them.

As cloud-init's boot jobs do: look at the machine, write only what differs, restart only
the daemons whose input changed, and do it all again safely at the next boot. The munge
key comes from the secret the stack generated, so it is in no image and the same on every
node of the cluster; slurm.conf is rendered from the facts of this head node and of the
compute group (``schedulers.slurmconf``).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cfncluster_node import commands, imds, logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import BootstrapSettings, Config
from cfncluster_node.node import group
from cfncluster_node.schedulers import slurmconf

_SYSTEMCTL_TIMEOUT_S = 120.0
# A cluster whose group cannot be read (no group, or it cannot grow) still gets a
# controller: the ceiling of nodes at once, raised when the group is.
_NODES_WITHOUT_GROUP = 1000


class BootstrapError(Exception):
    """The node cannot be configured; the message says which step failed and why."""


@dataclass(frozen=True)
class HeadFacts:
    """What slurm.conf is made of: who the controller is and how large the fleet gets."""

    hostname: str
    address: str
    max_nodes: int


async def head_node(settings: Config, boot: BootstrapSettings, aws: Aws) -> None:
    """Munge, then Slurm's configuration, then the daemons: enabled, started, and
    restarted where their input changed."""
    log = logs.get(step="bootstrap")
    key_changed = await install_munge_key(aws, boot.munge_key_secret, boot.munge_key)
    await ensure_running("munge", restart=key_changed)
    if settings.cluster.scheduler != "slurm":
        return
    facts = await head_facts(settings, aws)
    cluster = slurmconf.SlurmCluster(
        name=settings.cluster.stack_name,
        controller=facts.hostname,
        controller_address=facts.address,
        max_nodes=facts.max_nodes,
        feature=settings.slurm.feature,
    )
    conf_changed = await asyncio.to_thread(
        write_if_changed_all,
        {
            boot.slurm_dir / "slurm.conf": slurmconf.render(cluster),
            boot.slurm_dir / "cgroup.conf": slurmconf.cgroup_conf(),
        },
    )
    await ensure_running("slurmctld", restart=conf_changed or key_changed)
    log.info(
        "head_node_configured",
        controller=facts.hostname,
        address=facts.address,
        max_nodes=facts.max_nodes,
        munge_key_changed=key_changed,
        slurm_conf_changed=conf_changed,
    )


async def head_facts(settings: Config, aws: Aws) -> HeadFacts:
    try:
        found = await imds.read(["local-ipv4"])
    except imds.MetadataError as exc:
        raise BootstrapError(f"this head node's address: {exc}") from None
    if "local-ipv4" not in found:
        raise BootstrapError("this head node's address: the metadata has no local-ipv4")
    name = settings.cluster.compute_group
    members = await group.describe(aws, name) if name else None
    ceiling = members.max_size if members is not None and members.max_size > 0 else None
    return HeadFacts(
        # slurmctld runs only where its own hostname is SlurmctldHost.
        hostname=socket.gethostname().split(".")[0],
        address=found["local-ipv4"],
        max_nodes=settings.cluster.max_size or ceiling or _NODES_WITHOUT_GROUP,
    )


async def install_munge_key(aws: Aws, secret_id: str, path: Path) -> bool:
    """The cluster's key at ``path``, readable by munge alone; True if it was not there."""
    secret = await aws.call("secretsmanager", "get_secret_value", SecretId=secret_id)
    changed = await asyncio.to_thread(place_munge_key, path, str(secret["SecretString"]))
    if changed:
        logs.get().info("munge_key_installed", path=str(path))
    return changed


def place_munge_key(path: Path, key: str) -> bool:
    """``key`` at ``path``, owned by munge and readable by it alone; True if it changed."""
    if path.exists() and path.read_bytes() == key.encode():
        return False
    owner = pwd.getpwnam("munge")
    _write_atomically(path, key.encode(), mode=0o400, uid=owner.pw_uid, gid=owner.pw_gid)
    return True


def write_if_changed_all(files: Mapping[Path, str]) -> bool:
    """Each file's text written where it differs; True if any did."""
    return any([write_if_changed(path, text) for path, text in files.items()])


def write_if_changed(path: Path, text: str) -> bool:
    """``text`` at ``path`` (mode 0644); True if the file held something else."""
    if path.exists() and path.read_text() == text:
        return False
    _write_atomically(path, text.encode(), mode=0o644, uid=0, gid=0)
    logs.get().info("config_written", path=str(path))
    return True


def _write_atomically(path: Path, data: bytes, *, mode: int, uid: int, gid: int) -> None:
    """Written beside, owned and locked down before it has the name: never a moment
    where the key is readable by another user, nor a half-written file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.new")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, data)
        os.fchown(descriptor, uid, gid)
        os.fchmod(descriptor, mode)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    staged.replace(path)


async def daemon_reload() -> None:
    """systemd reads the units again: a drop-in written is one in force."""
    await _systemctl(["daemon-reload"])


async def ensure_running(unit: str, *, restart: bool) -> None:
    """The unit enabled for the next boots and running now, restarted if asked.

    ``enable`` only where the unit is not: for a unit that also has a SysV script (munge,
    slurmd) it runs update-rc.d, seconds of a boot that is already enabled from the image.
    """
    enabled = await commands.run(
        ["systemctl", "is-enabled", "--quiet", unit], timeout=_SYSTEMCTL_TIMEOUT_S, check=False
    )
    if enabled.returncode != 0:
        await _systemctl(["enable", unit])
    await _systemctl(["restart" if restart else "start", unit])


async def _systemctl(args: list[str]) -> None:
    try:
        await commands.run(["systemctl", *args], timeout=_SYSTEMCTL_TIMEOUT_S)
    except commands.CommandError as exc:
        raise BootstrapError(f"systemctl {' '.join(args)}: {exc}") from None
