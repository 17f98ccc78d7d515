"""`cfncluster-node demo --quick`, as CI runs it: the whole cluster on an embedded default."""

from __future__ import annotations

import subprocess
import sys

import pytest


def summary_row(stdout: str, label: str) -> str:
    [line] = [line for line in stdout.splitlines() if label in line]
    return line.replace("│", " ").replace(label, "").strip()


@pytest.mark.real
@pytest.mark.privilege(stack="demo")
def test_quick_demo_grows_runs_the_jobs_scales_in_and_reports_ok() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cfncluster_node", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Received SUCCESS signal with UniqueId i-" in out  # the head node's, from its IMDS
    assert summary_row(out, "jobs submitted / completed") == "6 / 6"
    assert int(summary_row(out, "peak compute nodes")) >= 2
    assert summary_row(out, "hosts left in Slurm") == "0"
    assert summary_row(out, "stack deleted") == "yes"
    assert "demo_result=ok" in out
