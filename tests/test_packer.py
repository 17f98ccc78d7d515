"""The image templates: valid for Packer, and each image provisioned for its own role."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "packer" / "cfncluster-node.pkr.hcl"


@pytest.mark.real
@pytest.mark.parametrize("variables", [[], ["-var", 'ami_regions=["eu-west-1","us-west-2"]']])
def test_packer_validate_passes(variables: list[str], tmp_path: Path) -> None:
    # Packer checks that the images' source, dist/ (`make dist`), is there.
    (tmp_path / "dist").mkdir()
    result = subprocess.run(
        ["packer", "validate", *variables, str(TEMPLATE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_image_runs_the_install_script_for_its_role() -> None:
    text = TEMPLATE.read_text()
    images = set(re.findall(r'\bname\s*=\s*"([a-z-]+)"', text))
    provisioned = re.findall(
        r'only\s*=\s*\["amazon-ebs\.([a-z-]+)"\]\s*\n\s*inline\s*=\s*\[".*--role (\w+)', text
    )
    assert images == {"head-node", "compute"}
    assert sorted(provisioned) == [("compute", "compute"), ("head-node", "head")]


def test_the_install_script_refuses_a_missing_role_or_dist() -> None:
    script = ROOT / "packer" / "install.sh"
    no_role = subprocess.run(
        ["bash", str(script), "--from", "/nowhere"], capture_output=True, text=True
    )
    assert (no_role.returncode, no_role.stderr) == (
        2,
        "install.sh: --role head or --role compute\n",
    )
    no_dist = subprocess.run(
        ["bash", str(script), "--role", "head", "--from", "/nowhere"],
        capture_output=True,
        text=True,
    )
    assert no_dist.returncode == 2
    assert "/nowhere/wheels not found: run make dist" in no_dist.stderr
