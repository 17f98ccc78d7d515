"""The command line as an operator meets it: configuration errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cfncluster_node import cli, local
from tests.clusters import node_toml


def cfncluster_node(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfncluster_node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_missing_config_file_exits_2_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "node.toml"

    result = cfncluster_node("sqswatcher", "--config", str(missing))

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cfncluster-node: {missing}: no such file; pass --config PATH or set "
        "CFNCLUSTER_NODE_CONFIG"
    )


def test_every_bad_key_is_one_line_naming_file_key_expected_and_found(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        node_toml(stack="c1", sqswatcher='receivers = "four"\nvisibilty_timeout = 30\n')
    )

    result = cfncluster_node("run", "--config", str(config))

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cfncluster-node: {config}: key 'sqswatcher.receivers': expected a valid integer, "
        "found 'four'",
        f"cfncluster-node: {config}: unknown key 'sqswatcher.visibilty_timeout' "
        "(did you mean 'visibility_timeout'?)",
    ]
    assert "Traceback" not in result.stderr


def test_check_config_prints_the_defaults_it_filled_in(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(node_toml(stack="c1"))

    result = cfncluster_node(
        "check-config", env={"CFNCLUSTER_NODE_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    )

    assert result.returncode == 0, result.stderr
    assert '"receivers": 4' in result.stdout
    assert '"retry_mode": "adaptive"' in result.stdout


def test_check_config_never_prints_the_proxy_password(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    proxy = 'proxy = "http://ops:s3cret@proxy.internal:3128"\n'
    config.write_text(node_toml(stack="c1", after=f"[aws]\n{proxy}"))

    result = cfncluster_node("check-config", "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert '"proxy": "http://ops:***@proxy.internal:3128"' in result.stdout


def test_the_demo_says_what_to_install_when_moto_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)  # as if it were not installed

    assert cli.main(["demo", "--quick"]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == (
        "cfncluster-node: demo: moto, which plays AWS, is missing; install it with "
        "`pip install 'cfncluster-node[demo]'` (`make demo` does)\n"
    )


def test_the_demo_says_where_it_runs_when_the_playground_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As in the AMI, whose wheel has no cfncluster_node.local.
    monkeypatch.delattr(local, "demo", raising=False)
    monkeypatch.setitem(sys.modules, "cfncluster_node.local.demo", None)

    assert cli.main(["demo"]) == cli.EXIT_FAILED
    assert "run `make demo` from a checkout of cfncluster-node" in capsys.readouterr().err
