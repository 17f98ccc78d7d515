"""What an operator asks the launcher for: one cluster, described in a TOML file.

``cfncluster-node launch create NAME --config cluster.toml`` validates it (errors name the
file, the key and the fix), renders the stack template from it (``template``), and the
stack writes the head node's own ``node.toml`` from it and from the resources it creates.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, StrictBool, StrictFloat, StrictInt, model_validator

from cfncluster_node import config, names
from cfncluster_node.config import Section

_AMI = r"^ami-[0-9a-f]{8,17}$"


class ClusterSection(Section):
    region: str = Field(pattern=names.REGION)
    # The head node's image (packer/) has both; its bootstrap configures and starts the
    # one named here.
    scheduler: Literal["slurm", "sge"] = "slurm"
    # An EC2 key pair for SSH to the nodes; none: reach them through SSM or not at all.
    key_name: str | None = Field(default=None, min_length=1, max_length=255)
    # Where the launcher uploads templates; default: cfncluster-node-ACCOUNT-REGION.
    template_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class NetworkSection(Section):
    vpc_id: str = Field(pattern=r"^vpc-[0-9a-f]{8,17}$")
    subnet_id: str = Field(pattern=r"^subnet-[0-9a-f]{8,17}$")
    # The subnet's zone: the shared volume is created there, beside the head node.
    availability_zone: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
    # SSH to the head node from here; none: no SSH rule at all.
    ssh_from: IPv4Network | None = None
    public_ip: StrictBool = True


class HeadNodeSection(Section):
    image_id: str = Field(pattern=_AMI)
    instance_type: str = Field(default="c5.large", pattern=names.INSTANCE_TYPE)
    # How long CloudFormation waits for the head node's "ready" before failing the stack.
    ready_timeout_minutes: StrictInt = Field(default=30, ge=5, le=720)


class ComputeSection(Section):
    image_id: str = Field(pattern=_AMI)
    instance_type: str = Field(default="c5.xlarge", pattern=names.INSTANCE_TYPE)
    min_size: StrictInt = Field(default=0, ge=0)
    desired_size: StrictInt = Field(default=0, ge=0)
    max_size: StrictInt = Field(default=10, ge=1, le=10_000)
    purchase: Literal["on-demand", "spot"] = "on-demand"
    # US dollars per hour; none: up to the on-demand price.
    spot_max_price: StrictFloat | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _sizes_and_price(self) -> Self:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"sizes must satisfy min_size <= desired_size <= max_size, found "
                f"{self.min_size} <= {self.desired_size} <= {self.max_size}"
            )
        if self.spot_max_price is not None and self.purchase != "spot":
            raise ValueError("spot_max_price is for spot instances: set purchase = 'spot'")
        return self


class ScalingSection(Section):
    # elastic: alarms on the pending metric grow the group and idle nodes go;
    # static: the group stays at its desired size.
    mode: Literal["elastic", "static"] = "elastic"
    threshold: StrictFloat = Field(default=1.0, gt=0)
    adjustment: StrictInt = Field(default=1, ge=1)
    large_threshold: StrictFloat = Field(default=200.0, gt=0)
    large_adjustment: StrictInt = Field(default=10, ge=1)
    evaluation_periods: StrictInt = Field(default=2, ge=1, le=10)
    cooldown: StrictInt = Field(default=300, ge=0)
    idle_minutes: StrictFloat = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _steps_grow(self) -> Self:
        if self.large_threshold <= self.threshold:
            raise ValueError("large_threshold must be above threshold")
        return self


# Per volume type: (min size GiB, max size GiB, iops range or None, throughput range or None).
_EBS_LIMITS: dict[str, tuple[int, int, tuple[int, int] | None, tuple[int, int] | None]] = {
    "gp3": (1, 16_384, (3_000, 16_000), (125, 1_000)),
    "gp2": (1, 16_384, None, None),
    "io1": (4, 16_384, (100, 64_000), None),
    "io2": (4, 65_536, (100, 256_000), None),
    "st1": (125, 16_384, None, None),
    "sc1": (125, 16_384, None, None),
    "standard": (1, 1_024, None, None),
}


class SharedVolumeSection(Section):
    size: StrictInt = Field(default=20, ge=1, description="GiB")
    type: Literal["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"] = "gp3"
    iops: StrictInt | None = None
    throughput: StrictInt | None = Field(default=None, description="MiB/s, gp3 only")
    encrypted: StrictBool = True
    kms_key_id: str | None = Field(
        default=None, pattern=r"^(arn:aws[a-z-]*:kms:\S+|alias/\S+|[0-9a-f-]{36})$"
    )
    snapshot_id: str | None = Field(default=None, pattern=r"^snap-[0-9a-f]{8,17}$")
    mount_point: str = Field(default="/shared", pattern=r"^/[A-Za-z0-9/_.-]+$")
    fs_type: Literal["ext4", "xfs"] = "ext4"
    # Root on a compute node is nobody on the share, unless this is false (README).
    root_squash: StrictBool = True
    # What the stack's deletion does to the volume: it holds the users' data.
    on_stack_delete: Literal["retain", "snapshot", "delete"] = "retain"

    @model_validator(mode="after")
    def _fits_its_type(self) -> Self:
        low, high, iops, throughput = _EBS_LIMITS[self.type]
        if not low <= self.size <= high:
            raise ValueError(
                f"a {self.type} volume is {low} to {high} GiB, found size = {self.size}"
            )
        if self.iops is not None and iops is None:
            raise ValueError(
                f"iops is not settable on {self.type}: remove it or use gp3, io1 or io2"
            )
        if iops is not None and self.iops is not None and not iops[0] <= self.iops <= iops[1]:
            raise ValueError(f"{self.type} iops are {iops[0]} to {iops[1]}, found {self.iops}")
        if self.type in ("io1", "io2") and self.iops is None:
            raise ValueError(f"a {self.type} volume needs iops")
        if self.throughput is not None and throughput is None:
            raise ValueError("throughput is settable on gp3 only")
        if (
            throughput is not None
            and self.throughput is not None
            and not throughput[0] <= self.throughput <= throughput[1]
        ):
            raise ValueError(
                f"gp3 throughput is {throughput[0]} to {throughput[1]} MiB/s, "
                f"found {self.throughput}"
            )
        if self.kms_key_id is not None and not self.encrypted:
            raise ValueError("kms_key_id needs encrypted = true")
        return self


class S3Access(Section):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # Only keys under this prefix; empty: the whole bucket.
    prefix: str = Field(default="", pattern=r"^[^*?]*$")
    access: Literal["read-only", "read-write"] = "read-only"


class ClusterConfig(Section):
    cluster: ClusterSection
    network: NetworkSection
    head_node: HeadNodeSection
    compute: ComputeSection
    scaling: ScalingSection = ScalingSection()
    shared_volume: SharedVolumeSection = SharedVolumeSection()
    s3_access: list[S3Access] = Field(default_factory=list)
    # pre_install and post_install on every node, head and compute alike.
    hooks: config.HooksSettings = config.HooksSettings()


def load(path: Path) -> ClusterConfig:
    return config.parse(config.read(path), source=str(path), model=ClusterConfig)
