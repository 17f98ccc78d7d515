"""The launcher's cluster config: what is accepted, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfncluster_node.config import ConfigError
from cfncluster_node.stack import clusterconfig

EXAMPLE = Path(__file__).parent.parent / "examples" / "cluster.toml"


def test_the_example_in_the_repository_is_valid() -> None:
    cluster = clusterconfig.load(EXAMPLE)
    assert cluster.compute.purchase == "spot"
    assert cluster.s3_access[0].bucket == "my-research-data"


def test_a_section_given_twice_is_a_toml_error(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(EXAMPLE.read_text() + "[compute]\nmax_size = 3\n")
    with pytest.raises(ConfigError, match=r"cluster\.toml: not valid TOML"):
        clusterconfig.load(path)


def replaced(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "max_size = 100",
            "max_size = 100\nmin_size = 200",
            "cluster.toml: key 'compute': sizes must satisfy min_size <= desired_size <= "
            "max_size, found 200 <= 0 <= 100",
        ),
        (
            'purchase = "spot"\n',
            "",
            "cluster.toml: key 'compute': spot_max_price is for spot instances: "
            "set purchase = 'spot'",
        ),
        (
            "iops = 6000",
            "iops = 20000",
            "cluster.toml: key 'shared_volume': gp3 iops are 3000 to 16000, found 20000",
        ),
        (
            'type = "gp3"\niops = 6000\nthroughput = 250',
            'type = "io1"',
            "cluster.toml: key 'shared_volume': a io1 volume needs iops",
        ),
        (
            'type = "gp3"\niops = 6000',
            'type = "gp2"',
            "cluster.toml: key 'shared_volume': throughput is settable on gp3 only",
        ),
        (
            'size = 500\ntype = "gp3"\niops = 6000\nthroughput = 250',
            'size = 100\ntype = "st1"',
            "cluster.toml: key 'shared_volume': a st1 volume is 125 to 16384 GiB, found size = 100",
        ),
        (
            'mount_point = "/shared"',
            'mount_point = "/shared"\nencrypted = false\nkms_key_id = "alias/k"',
            "cluster.toml: key 'shared_volume': kms_key_id needs encrypted = true",
        ),
        (
            'ssh_from = "203.0.113.0/24"',
            'ssh_from = "203.0.113.0/33"',
            "cluster.toml: key 'network.ssh_from': expected a valid IPv4 network",
        ),
        (
            'image_id = "ami-0123456789abcdef0"',
            'imageid = "ami-0123456789abcdef0"',
            "cluster.toml: unknown key 'head_node.imageid' (did you mean 'image_id'?)",
        ),
        (
            'access = "read-only"',
            'access = "write"',
            "cluster.toml: key 's3_access.0.access': expected 'read-only' or 'read-write'",
        ),
    ],
)
def test_errors_name_the_file_the_key_and_the_fix(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(replaced(old, new))
    with pytest.raises(ConfigError) as raised:
        clusterconfig.load(path)
    assert message in str(raised.value).replace(str(path), "cluster.toml")


def test_a_missing_file_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; pass --config PATH"):
        clusterconfig.load(tmp_path / "nope.toml")
