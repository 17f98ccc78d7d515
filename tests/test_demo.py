"""`cfncluster-node demo --quick`, as CI runs it: the whole slice on an embedded default."""

from __future__ import annotations

import subprocess
import sys


def test_quick_demo_converges_and_reports_ok() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cfncluster_node", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo_result=ok" in result.stdout
    assert "5 / 5" in result.stdout  # hosts expected / in Slurm
