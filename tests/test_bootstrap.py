"""The head node's bootstrap: the stack's munge key installed for munge alone, slurm.conf
from the head node's and the group's facts, each written only when it differs.

Against moto's CloudFormation and Secrets Manager (the key is the one the stack
generated) and the real file system. systemctl itself runs in the VM test: this machine
has no systemd.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from cfncluster_node import config, imds
from cfncluster_node.aws import Aws
from cfncluster_node.config import ComputeConfig, ComputeNodeSettings
from cfncluster_node.local.cloud import ClusterResources, create_compute_group
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import bootstrap, compute
from cfncluster_node.node.bootstrap import BootstrapError
from cfncluster_node.stack import launcher, template
from tests.clusters import cluster_config, on_moto
from tests.conftest import GROUP, REGION, MetadataService
from tests.test_launcher import console, head_node_comes_up

NODE_TOML = """
[cluster]
stack_name = "boot"
region = "us-east-1"
table = "boot-instances"
compute_group = "{group}"

[sqswatcher]
queue = "boot-queue"
topic_arn = "arn:aws:sns:us-east-1:123456789012:boot-events"
compute_role_id = "AROAEXAMPLEROLEID0001"

[bootstrap]
munge_key_secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:boot-munge-key-abcdef"
"""


@pytest.mark.privilege(stack="boot")
async def test_the_stacks_own_secret_becomes_the_munge_key_readable_by_munge_alone(
    aws: Aws, slurm: LocalSlurm, metadata_service: MetadataService, tmp_path: Path
) -> None:
    stacks = launcher.Launcher(aws, REGION, console(), poll_s=0.05)
    creating = asyncio.create_task(stacks.create("boot", await on_moto(aws)))
    await head_node_comes_up(aws, "boot", slurm, metadata_service)
    created = await creating
    secret = created.outputs["MungeKeySecret"]
    settings = config.parse(await stacks.node_config("boot"), source="user data")
    key = tmp_path / "munge" / "munge.key"

    assert settings.bootstrap is not None and settings.bootstrap.munge_key_secret == secret
    assert await bootstrap.install_munge_key(aws, secret, key) is True
    assert await bootstrap.install_munge_key(aws, secret, key) is False  # the next boot

    value = (await aws.call("secretsmanager", "get_secret_value", SecretId=secret))["SecretString"]
    assert key.read_text() == value and len(value) == 512 and value.isalnum()
    status = key.stat()
    assert stat.S_IMODE(status.st_mode) == 0o400
    assert status.st_uid == pwd.getpwnam("munge").pw_uid
    assert not list(key.parent.glob(".*"))  # nothing staged is left beside it

    # A compute node, with its own role, installs the same key from its compute.toml.
    node = compute_settings(created.outputs, tmp_path / "compute.key")
    assert node.munge_key_secret == secret
    assert await compute.install_munge_key(aws, node) is True
    assert (tmp_path / "compute.key").read_bytes() == key.read_bytes()


def compute_settings(outputs: dict[str, str], key: Path) -> ComputeNodeSettings:
    """The compute.toml the stack's launch template writes, as Fn::Sub fills it in."""
    text = template.compute_config(cluster_config())
    for name, value in {
        "${AWS::Region}": REGION,
        "${Queue}": outputs["QueueUrl"],
        "${HeadNode.PrivateIp}": "10.0.0.5",
        "${MungeKey}": outputs["MungeKeySecret"],
    }.items():
        text = text.replace(name, value)
    settings = config.parse(text, source="compute.toml", model=ComputeConfig).compute
    return settings.model_copy(update={"munge_key": key})


def test_a_changed_key_replaces_the_old_one_in_place(tmp_path: Path) -> None:
    key = tmp_path / "munge.key"

    assert bootstrap.place_munge_key(key, "a" * 64) is True
    assert bootstrap.place_munge_key(key, "b" * 64) is True
    assert bootstrap.place_munge_key(key, "b" * 64) is False
    assert key.read_text() == "b" * 64 and stat.S_IMODE(key.stat().st_mode) == 0o400


def test_configuration_is_written_only_where_it_differs(tmp_path: Path) -> None:
    slurm_conf, cgroup_conf = tmp_path / "slurm" / "slurm.conf", tmp_path / "slurm" / "cgroup.conf"
    files = {slurm_conf: "ClusterName=a\n", cgroup_conf: "CgroupPlugin=autodetect\n"}
    assert bootstrap.write_if_changed_all(files)
    before = cgroup_conf.stat().st_mtime_ns

    assert not bootstrap.write_if_changed_all(files)
    assert bootstrap.write_if_changed_all({**files, slurm_conf: "ClusterName=b\n"})
    assert slurm_conf.read_text() == "ClusterName=b\n"
    assert cgroup_conf.stat().st_mtime_ns == before
    assert stat.S_IMODE(cgroup_conf.stat().st_mode) == 0o644


async def test_the_controller_is_this_host_at_its_address_sized_by_the_group(
    aws: Aws, cluster: ClusterResources, metadata_service: MetadataService
) -> None:
    await create_compute_group(aws, GROUP, desired=0, max_size=7)
    settings = config.parse(NODE_TOML.format(group=GROUP), source="node.toml")
    os.environ[imds.IMDS_ENV] = await metadata_service({"local-ipv4": "10.0.0.5"})

    facts = await bootstrap.head_facts(settings, aws)

    assert facts == bootstrap.HeadFacts(os.uname().nodename.split(".")[0], "10.0.0.5", 7)


def test_slurmd_runs_configless_from_the_head_node_under_the_nodes_own_name() -> None:
    options = compute.slurmd_options(compute_node(), "ip-10-0-1-7.ec2.internal")

    assert options == [
        "--conf-server",
        "10.0.0.5:6817",
        "-Z",
        "--conf",
        "Features=compute",
        "-N",
        "ip-10-0-1-7",
    ]
    assert all(" " not in option for option in options)  # $SLURMD_OPTIONS is split on spaces


MUNGE_KEY_SECRET = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:c-munge-key-AbCdEf"


def compute_node(**overrides: object) -> ComputeNodeSettings:
    fields = {
        "region": "us-east-1",
        "queue_url": "https://sqs.us-east-1.amazonaws.com/1/q",
        "head_node": "10.0.0.5",
        "munge_key_secret": MUNGE_KEY_SECRET,
        **overrides,
    }
    return ComputeNodeSettings.model_validate(fields)


async def test_a_compute_node_is_ready_once_slurmctld_hears_from_its_slurmd(
    slurm: LocalSlurm,
) -> None:
    conf = slurm.conf
    slurm.start_slurmd("ip-10-0-1-7", cpus=2)

    await compute.wait_until_registered(
        compute_node(), "ip-10-0-1-7.ec2.internal", conf_caches=(conf,), poll=0.1
    )


async def test_a_compute_node_whose_slurmd_never_registers_fails_its_bootstrap(
    slurm: LocalSlurm, tmp_path: Path
) -> None:
    conf = slurm.conf
    node = compute_node(register_timeout=0.5)

    started = time.monotonic()
    with pytest.raises(
        BootstrapError, match=r"slurmd not registered with 10\.0\.0\.5:6817 within 0\.5 s"
    ):
        await compute.wait_until_registered(node, "ip-10-0-1-8", conf_caches=(conf,), poll=0.1)
    # Before slurmd has fetched slurm.conf there is nothing to ask: the same timeout holds.
    with pytest.raises(BootstrapError, match=r"has not fetched slurm\.conf"):
        await compute.wait_until_registered(
            node, "ip-10-0-1-8", conf_caches=(tmp_path / "absent.conf",), poll=0.1
        )
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("state", "answers"),
    [
        ("IDLE+DYNAMIC_NORM", True),
        ("ALLOCATED+DYNAMIC_NORM", True),
        ("IDLE+DYNAMIC_NORM+NOT_RESPONDING", False),
        ("UNKNOWN+DYNAMIC_NORM", False),
        ("FUTURE", False),
    ],
)
def test_a_node_counts_as_registered_only_while_it_answers(state: str, answers: bool) -> None:
    line = f"NodeName=ip-10-0-1-7 Arch=x86_64 CPUTot=2 State={state} Reason=none\n"

    assert compute.registered(line, "ip-10-0-1-7") is answers
    assert compute.registered(line, "ip-10-0-1-70") is False


async def test_a_compute_nodes_boot_is_split_into_its_own_work_its_waits_and_hooks() -> None:
    clock = compute.Stopwatch()
    async with clock.step("munge_key", compute.OWN):
        pass
    async with clock.step("nfs", compute.WAIT):
        await asyncio.sleep(0.05)
    with pytest.raises(BootstrapError):
        async with clock.step("slurmd_registration", compute.WAIT):
            raise BootstrapError("slurmd not registered")

    summary = clock.summary()

    assert clock.failed == "slurmd_registration"
    assert summary["hooks_ms"] == 0
    assert float(str(summary["waited_ms"])) >= 50
    own, waited = float(str(summary["own_ms"])), float(str(summary["waited_ms"]))
    assert float(str(summary["duration_ms"])) == pytest.approx(own + waited, abs=0.2)
    assert [step.split("=")[0] for step in str(summary["steps"]).split()] == [
        "munge_key",
        "nfs",
        "slurmd_registration",
    ]
