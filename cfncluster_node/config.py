"""The head node's configuration: one TOML file, validated before anything starts.

The file is found at ``--config PATH``, else ``$CFNCLUSTER_NODE_CONFIG``, else
``/etc/cfncluster/node.toml``. Every key is documented in the README with its default.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from cfncluster_node import names, protocol

DEFAULT_PATH = Path("/etc/cfncluster/node.toml")
COMPUTE_PATH = Path("/etc/cfncluster/compute.toml")
ENV_VAR = "CFNCLUSTER_NODE_CONFIG"

ServiceName = Literal["sqswatcher", "publisher", "reconciler", "scalein"]
SchedulerName = Literal["slurm", "sge"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the fix."""


class Section(BaseModel):
    # TOML has inf and nan; no timeout, interval or size of ours means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ClusterSettings(Section):
    stack_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9-]*$")
    region: str = Field(pattern=names.REGION)
    scheduler: SchedulerName = "slurm"
    # Job slots of a compute node whose join message does not say (old compute AMIs), and
    # of the nodes the publisher asks for while none is registered.
    default_slots: StrictInt = Field(default=1, ge=1, le=100_000)
    # The compute group's maximum size: a job that needs more nodes can never run.
    # Default: the group's own MaxSize, read each time.
    max_size: StrictInt | None = Field(default=None, ge=0)
    # The DynamoDB instance table, and how long a terminated instance's row stays.
    table: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    # As long as the queue keeps a message (14 days): a join replayed that late still
    # finds its tombstone.
    tombstone_days: StrictFloat = Field(default=14.0, gt=0)
    # The compute Auto Scaling group: every joining instance must be its member, and the
    # reconciler, the publisher and scale-in read and change it.
    compute_group: str = Field(min_length=1, max_length=255)
    # This head node's logical id in the stack: CloudFormation waits for its signal
    # (SignalResource) that storage and services are up, or that they failed and why.
    signal_resource: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]+$")


class AwsSettings(Section):
    retry_mode: Literal["standard", "adaptive"] = "adaptive"
    max_attempts: StrictInt = Field(default=8, ge=1, le=50)
    connect_timeout: StrictFloat = Field(default=5.0, gt=0)
    # Must outlast SQS long polling (20 s).
    read_timeout: StrictFloat = Field(default=40.0, gt=20)
    proxy: str | None = Field(default=None, pattern=r"^(NONE|https?://\S+)$")


class SqsWatcherSettings(Section):
    queue: str = Field(min_length=1, description="queue name or URL")
    # Who may send on the queue (node/trust.py): Auto Scaling's events come only through
    # the stack's topic, a compute node's only from the compute role's session of itself.
    topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
    compute_role_id: str = Field(pattern=r"^AROA[A-Z0-9]{12,124}$")
    # What SQS says SNS's deliveries are sent by; the same in every region seen so far.
    topic_sender_id: str = Field(default=protocol.SNS_SENDER_ID, pattern=r"^[A-Z0-9]{16,128}$")
    receivers: StrictInt = Field(default=4, ge=1, le=32)
    max_batch: StrictInt = Field(default=1000, ge=1, le=10_000)
    visibility_timeout: StrictInt = Field(default=120, ge=10, le=43_200)
    retry_backoff_max: StrictInt = Field(default=300, ge=1, le=43_200)


class PublisherSettings(Section):
    interval: StrictFloat = Field(default=60.0, gt=0)
    # For stacks without alarms: raise the group's desired capacity to the demand directly.
    direct: bool = False


class ReconcilerSettings(Section):
    interval: StrictFloat = Field(default=300.0, gt=0)
    # A running instance that has not joined after this many seconds is reported.
    join_timeout: StrictFloat = Field(default=900.0, ge=0)
    # ... and terminated, so the group launches a replacement.
    replace_unjoined: bool = False


class ScaleInSettings(Section):
    interval: StrictFloat = Field(default=60.0, gt=0)
    # The lineage's scaledown_idletime: minutes a node stays idle before it goes.
    idle_minutes: StrictFloat = Field(default=10.0, ge=0)
    # Seconds between draining a node and checking it again before it is terminated.
    grace_seconds: StrictFloat = Field(default=30.0, ge=0)


class SlurmSettings(Section):
    # Dynamic compute nodes carry this feature; slurm.conf maps it to partitions with a
    # Nodeset (``Nodeset=compute Feature=compute``).
    feature: str = Field(default="compute", pattern=r"^[A-Za-z0-9_-]+$")
    conf: Path | None = None
    bin_dir: Path | None = None
    command_timeout: StrictFloat = Field(default=30.0, gt=0)


class SgeSettings(Section):
    # $SGE_ROOT of every command (none: the environment's; Debian's commands default to
    # /var/lib/gridengine), and $SGE_CELL.
    root: Path | None = None
    cell: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    # Compute hosts join this host group, which must be in the queue's hostlist: that
    # makes each one an execution host with an instance of the queue. The queue's own
    # slots must not be the limit: each host's slots are its execution host's
    # ``complex_values slots=N``.
    queue: str = Field(default="all.q", pattern=r"^[A-Za-z0-9_.-]+$")
    host_group: str = Field(default="@allhosts", pattern=r"^@[A-Za-z0-9_.-]+$")
    # On Debian, /usr/lib/gridengine: the binaries themselves, without the /usr/bin
    # wrappers' 70 ms of shell per call.
    bin_dir: Path | None = None
    # Every command runs through this prefix when it is set, e.g. ``nsenter`` into the
    # qmaster's namespaces.
    wrapper: list[str] = Field(default_factory=list)
    command_timeout: StrictFloat = Field(default=30.0, gt=0)


class SupervisorSettings(Section):
    services: list[ServiceName] = Field(default=["sqswatcher"], min_length=1)
    stop_timeout: StrictFloat = Field(default=30.0, gt=0)
    restart_backoff_initial: StrictFloat = Field(default=1.0, gt=0)
    restart_backoff_max: StrictFloat = Field(default=60.0, gt=0)
    # Each service's state and last success, for `cfncluster-node status` (and scripts).
    health_file: Path | None = Path("/run/cfncluster-node/health.json")
    # Seconds between two reads of the stack's node.toml (configwatch, under the stack).
    config_poll: StrictFloat = Field(default=60.0, gt=0)


class SharedVolumeSettings(Section):
    # With volume_id, the name the volume is attached under (e.g. /dev/sdf).
    device: str = Field(pattern=r"^/dev/[A-Za-z0-9/_.-]+$")
    volume_id: str | None = Field(default=None, pattern=r"^vol-[0-9a-f]{8,17}$")
    mount_point: str = Field(pattern=r"^/[A-Za-z0-9/_.-]*$")
    fs_type: Literal["ext4", "xfs"] = "ext4"
    label: str | None = Field(default=None, max_length=12, pattern=r"^[A-Za-z0-9_-]+$")
    # Export over NFS to these networks (the compute subnets), read-write for the compute
    # nodes, root squashed unless root_squash is false.
    export_to: list[IPv4Network] = Field(default_factory=list)
    root_squash: bool = True


class ScratchSettings(Section):
    # The instance-store disks; empty: found from NVMe models or the instance metadata.
    devices: list[str] = Field(default_factory=list)
    mount_point: str = Field(default="/scratch", pattern=r"^/[A-Za-z0-9/_.-]*$")
    fs_type: Literal["ext4", "xfs"] = "ext4"
    raid: Literal["mdadm", "btrfs"] = "mdadm"


class StorageSettings(Section):
    fstab: Path = Path("/etc/fstab")
    exports: Path = Path("/etc/exports.d/cfncluster.exports")
    scratch: ScratchSettings | None = None
    shared: list[SharedVolumeSettings] = Field(default_factory=list)


class HookSettings(Section):
    """A script run as root before or after the node's own setup, as CfnCluster's
    pre_install and post_install were: fetched from S3 or HTTPS, run with ``args``."""

    url: str = Field(pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+|https://\S+)$")
    args: list[str] = Field(default_factory=list, max_length=64)


class HooksSettings(Section):
    pre_install: HookSettings | None = None
    post_install: HookSettings | None = None
    # Seconds a hook may run before it is killed and the node's setup fails.
    timeout: StrictFloat = Field(default=1800.0, gt=0)


_SECRET_ARN = r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:\S+$"


# Who may reach the instance metadata service (node/metadata.py): the node's own daemons
# run as root; the users' jobs must not get the instance's role.
MetadataUsers = Annotated[
    list[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]],
    Field(default=["root"], min_length=1),
]


class BootstrapSettings(Section):
    # The cluster's munge key, a Secrets Manager secret the stack generates (its ARN).
    munge_key_secret: str = Field(pattern=_SECRET_ARN)
    metadata_users: MetadataUsers
    munge_key: Path = Path("/etc/munge/munge.key")
    slurm_dir: Path = Path("/etc/slurm")
    # Debian's SGE_ROOT (when [sge] root is not set) and the qmaster's spool.
    sge_root: Path = Path("/var/lib/gridengine")
    sge_spool: Path = Path("/var/spool/gridengine")


class ComputeNodeSettings(Section):
    region: str = Field(pattern=names.REGION)
    # The cluster queue's URL: joins and leaves go there.
    queue_url: str = Field(pattern=r"^https?://\S+$")
    # The head node's private address: slurmctld and the NFS exports.
    head_node: IPv4Address
    munge_key_secret: str = Field(pattern=_SECRET_ARN)
    munge_key: Path = Path("/etc/munge/munge.key")
    # The head node's shared volumes, mounted at the same paths here.
    shared: list[str] = Field(default_factory=list)
    # Seconds to wait for the head node's exports before the node gives up joining.
    mount_timeout: StrictFloat = Field(default=600.0, gt=0)
    # Seconds to wait for slurmctld to hear from this node's slurmd before giving up.
    register_timeout: StrictFloat = Field(default=600.0, gt=0)
    slurmctld_port: StrictInt = Field(default=6817, ge=1, le=65535)
    feature: str = Field(default="compute", pattern=r"^[A-Za-z0-9_-]+$")
    metadata_users: MetadataUsers


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console", "journal"] = "auto"


class Config(Section):
    cluster: ClusterSettings
    sqswatcher: SqsWatcherSettings
    aws: AwsSettings = AwsSettings()
    publisher: PublisherSettings = PublisherSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    scalein: ScaleInSettings = ScaleInSettings()
    storage: StorageSettings = StorageSettings()
    slurm: SlurmSettings = SlurmSettings()
    sge: SgeSettings = SgeSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    # The stack's head node configures its scheduler and munge itself at every boot.
    bootstrap: BootstrapSettings | None = None
    hooks: HooksSettings = HooksSettings()
    logging: LoggingSettings = LoggingSettings()


class ComputeConfig(Section):
    """compute.toml, which the stack's user data writes on every compute node."""

    compute: ComputeNodeSettings
    storage: StorageSettings = StorageSettings()
    hooks: HooksSettings = HooksSettings()
    aws: AwsSettings = AwsSettings()
    logging: LoggingSettings = LoggingSettings()


# The sections one service reads alone: a change there restarts that service only.
SERVICE_SECTIONS = frozenset({"sqswatcher", "publisher", "reconciler", "scalein"})


@dataclass(frozen=True)
class Change:
    """What a new node.toml changes: its sections, the services to restart alone, or
    the whole daemon."""

    sections: tuple[str, ...] = ()
    services: frozenset[str] = frozenset()
    daemon: bool = False

    def __bool__(self) -> bool:
        return bool(self.sections)

    def describe(self) -> str:
        if self.daemon:
            return "restarts the head node's daemon (storage and bootstrap run again)"
        if self.services:
            return f"restarts {', '.join(sorted(self.services))} on the head node"
        return "changes nothing the head node runs"


def affected(old: Mapping[str, Any], new: Mapping[str, Any]) -> Change:
    """What going from node.toml ``old`` to ``new`` (parsed TOML) restarts; pure."""
    sections = tuple(sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)))
    running = set(new.get("supervisor", {}).get("services", ["sqswatcher"]))
    alone = [section for section in sections if section in SERVICE_SECTIONS]
    return Change(
        sections=sections,
        services=frozenset(section for section in alone if section in running),
        daemon=any(section not in SERVICE_SECTIONS for section in sections),
    )


def printable(settings: Config) -> str:
    """The settings as JSON for an operator's terminal: the proxy's password masked."""
    shown = settings.model_dump(mode="json")
    if proxy := shown["aws"].get("proxy"):
        shown["aws"]["proxy"] = re.sub(r"^(\w+://[^:@/]*):[^@/]*@", r"\1:***@", proxy)
    return json.dumps(shown, indent=2)


def resolve_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    from_env = os.environ.get(ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_PATH


def load(explicit: Path | None = None) -> Config:
    path = resolve_path(explicit)
    return parse(read(path, f"pass --config PATH or set {ENV_VAR}"), source=str(path))


Model = TypeVar("Model", bound=BaseModel)


def parse(text: str, *, source: str, model: type[Model] = Config) -> Model:  # type: ignore[assignment]
    """Validate a TOML document as ``model``; any error names the file, the key and the fix."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_explain(source, exc, model))) from None


def read(path: Path, hint: str = "pass --config PATH") -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _explain(source: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "missing":
            lines.append(f"{source}: key '{key}' is required but missing")
        elif kind == "value_error":
            # A rule across keys: its message is already the explanation.
            reason = error["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {f'key {key!r}: ' if key else ''}{reason}")
        elif kind == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'{_did_you_mean(model, error['loc'])}")
        else:
            found = error.get("input")
            lines.append(f"{source}: key '{key}': expected {_expected(error)}, found {found!r}")
    return lines


def _expected(error: Any) -> str:
    message: str = error["msg"]
    # pydantic says "Input should be ..."; an operator wants "expected ...".
    for prefix, expected in (
        ("Input should be ", "{}"),
        ("Input is not ", "{}"),
        ("String should ", "a string that should {}"),
    ):
        if message.startswith(prefix):
            return expected.format(message.removeprefix(prefix))
    return message[0].lower() + message[1:]


def _did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
