"""The head node configures itself at every boot: the cluster's munge key, the scheduler's
configuration, and the daemons that read them.

As cloud-init's boot jobs do: look at the machine, write only what differs, restart only
the daemons whose input changed, and do it all again safely at the next boot. The munge
key comes from the secret the stack generated, so it is in no image and the same on every
node of the cluster. For Slurm, slurm.conf is rendered from the facts of this head node
and of the compute group (``schedulers.slurmconf``); for SGE, the cell is created once,
its qmaster pointed at this host, and its queue made (``schedulers.sgeconf``).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cfncluster_node import commands, imds, logs
from cfncluster_node.aws import Aws
from cfncluster_node.config import BootstrapSettings, Config
from cfncluster_node.node import group
from cfncluster_node.schedulers import SchedulerError, sgeconf, slurmconf
from cfncluster_node.schedulers.sge import Sge

_SYSTEMCTL_TIMEOUT_S = 120.0
_SGE_INIT_CLUSTER = "/usr/share/gridengine/scripts/init_cluster"
_SGE_INIT_CLUSTER_TIMEOUT_S = 120.0
_QMASTER_TIMEOUT_S = 120.0
# A scheduling run every 15 s, and one a second after each submission or job end.
_SGE_SCHEDULE_INTERVAL = "0:0:15"
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
    """Munge, then the scheduler's configuration, then its daemons: enabled, started, and
    restarted where their input changed."""
    key_changed = await install_munge_key(aws, boot.munge_key_secret, boot.munge_key)
    await ensure_running("munge", restart=key_changed)
    facts = await head_facts(settings, aws)
    match settings.cluster.scheduler:
        case "slurm":
            conf_changed = await slurm_controller(settings, boot, facts, restart=key_changed)
        case "sge":
            conf_changed = await sge_qmaster(settings, boot, facts)
    logs.get(step="bootstrap").info(
        "head_node_configured",
        scheduler=settings.cluster.scheduler,
        controller=facts.hostname,
        address=facts.address,
        max_nodes=facts.max_nodes,
        munge_key_changed=key_changed,
        scheduler_conf_changed=conf_changed,
    )


async def slurm_controller(
    settings: Config, boot: BootstrapSettings, facts: HeadFacts, *, restart: bool
) -> bool:
    """slurm.conf and cgroup.conf for this head node and its group, then slurmctld."""
    cluster = slurmconf.SlurmCluster(
        name=settings.cluster.stack_name,
        controller=facts.hostname,
        controller_address=facts.address,
        max_nodes=facts.max_nodes,
        feature=settings.slurm.feature,
    )
    changed = await asyncio.to_thread(
        write_if_changed_all,
        {
            boot.slurm_dir / "slurm.conf": slurmconf.render(cluster),
            boot.slurm_dir / "cgroup.conf": slurmconf.cgroup_conf(),
        },
    )
    await ensure_running("slurmctld", restart=changed or restart)
    return changed


async def sge_qmaster(settings: Config, boot: BootstrapSettings, facts: HeadFacts) -> bool:
    """The Grid Engine cell, created at the first boot (the image's package made none, or
    one for the host that baked it), the qmaster on this host, then the objects the
    backend needs (``Sge.configure_cell``)."""
    root = settings.sge.root or boot.sge_root
    common = root / settings.sge.cell / "common"
    spool = boot.sge_spool
    # The qmaster writes act_qmaster itself, as the admin user, when it starts. Where the
    # hostname resolves to a loopback address (Debian's 127.0.1.1 line, which cloud-init
    # writes on EC2 too), a command on this host reaches the qmaster from 127.0.0.1:
    # "localhost" must count as this host.
    changed = await asyncio.to_thread(
        write_if_changed_all,
        {
            common / "bootstrap": sgeconf.bootstrap(spool),
            common / "act_qmaster": f"{facts.hostname}\n",
            common / "host_aliases": f"{facts.hostname} localhost\n",
        },
        sgeconf.ADMIN_USER,
    )
    if not (spool / "spooldb" / "sge").exists():
        await create_sge_cell(root, settings.sge.cell, spool)
        changed = True
    await ensure_running("gridengine-master", restart=changed)
    backend = Sge(settings.sge)
    deadline = time.monotonic() + _QMASTER_TIMEOUT_S
    while True:
        try:
            await backend.configure_cell(facts.hostname, schedule_interval=_SGE_SCHEDULE_INTERVAL)
            return changed
        except SchedulerError as exc:
            if time.monotonic() > deadline:
                messages = spool / "qmaster" / "messages"
                said = messages.read_text()[-500:].strip() if messages.exists() else ""
                raise BootstrapError(
                    f"the qmaster did not answer: {exc}"
                    + (f"; its messages: {said}" if said else "")
                ) from None
            await asyncio.sleep(1)


async def create_sge_cell(root: Path, cell: str, spool: Path) -> None:
    """Debian's own cell creation (what gridengine-master's postinst runs when asked to),
    as the cell's admin user, into an empty spool."""
    admin = pwd.getpwnam(sgeconf.ADMIN_USER)
    for directory in (spool / "spooldb", spool / "qmaster" / "job_scripts", root / cell / "common"):
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, admin.pw_uid, admin.pw_gid)
    try:
        await commands.run(
            [
                *("runuser", "-u", admin.pw_name, "--", _SGE_INIT_CLUSTER),
                *(str(root), cell, str(spool / "spooldb"), admin.pw_name),
            ],
            timeout=_SGE_INIT_CLUSTER_TIMEOUT_S,
        )
    except commands.CommandError as exc:
        raise BootstrapError(f"creating the SGE cell: {exc}") from None
    logs.get().info("sge_cell_created", root=str(root), cell=cell, spool=str(spool))


async def head_facts(settings: Config, aws: Aws) -> HeadFacts:
    try:
        found = await imds.read(["local-ipv4"])
    except imds.MetadataError as exc:
        raise BootstrapError(f"this head node's address: {exc}") from None
    if "local-ipv4" not in found:
        raise BootstrapError("this head node's address: the metadata has no local-ipv4")
    members = await group.describe(aws, settings.cluster.compute_group)
    ceiling = members.max_size if members.max_size > 0 else None
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


def write_if_changed_all(files: Mapping[Path, str], owner: str = "root") -> bool:
    """Each file's text written where it differs; True if any did."""
    return any([write_if_changed(path, text, owner) for path, text in files.items()])


def write_if_changed(path: Path, text: str, owner: str = "root") -> bool:
    """``text`` at ``path`` (mode 0644, ``owner``'s); True if the file held something
    else or belonged to another user."""
    user = pwd.getpwnam(owner)
    if path.exists() and path.read_text() == text and path.stat().st_uid == user.pw_uid:
        return False
    _write_atomically(path, text.encode(), mode=0o644, uid=user.pw_uid, gid=user.pw_gid)
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
