"""config.parse, config.load and config.resolve_path: one TOML file, checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfncluster_node import config
from cfncluster_node.config import ConfigError

SOURCE = "/etc/cfncluster/node.toml"
MINIMAL = """\
[cluster]
stack_name = "demo"
region = "us-east-1"
table = "demo-instances"
compute_group = "demo-compute"

[sqswatcher]
queue = "demo-queue"
topic_arn = "arn:aws:sns:us-east-1:123456789012:demo-events"
compute_role_id = "AROAEXAMPLEROLEID0001"
"""


def with_key(section: str, line: str) -> str:
    """MINIMAL with one more line in ``section`` (a new section is appended)."""
    header = f"[{section}]\n"
    if header in MINIMAL:
        return MINIMAL.replace(header, header + line + "\n")
    return f"{MINIMAL}\n{header}{line}\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        config.parse(text, source=SOURCE)
    return str(raised.value)


def test_minimal_file_is_valid() -> None:
    loaded = config.parse(MINIMAL, source=SOURCE)

    assert loaded.cluster.stack_name == "demo"
    assert loaded.cluster.region == "us-east-1"
    assert loaded.sqswatcher.queue == "demo-queue"
    assert loaded.cluster.table == "demo-instances"


def test_defaults_fill_every_optional_key() -> None:
    loaded = config.parse(MINIMAL, source=SOURCE)

    assert loaded.cluster.scheduler == "slurm"
    assert loaded.cluster.default_slots == 1
    assert loaded.sqswatcher.receivers == 4
    assert loaded.sqswatcher.max_batch == 1000
    assert loaded.sqswatcher.visibility_timeout == 120
    assert loaded.cluster.tombstone_days == 14.0
    assert loaded.aws.retry_mode == "adaptive"
    assert loaded.aws.max_attempts == 8
    assert loaded.aws.read_timeout > 20
    assert loaded.aws.proxy is None
    assert loaded.slurm.feature == "compute"
    assert loaded.slurm.conf is None
    assert loaded.supervisor.services == ["sqswatcher"]
    assert loaded.logging.level == "info"
    assert loaded.logging.format == "auto"


def test_set_values_override_defaults() -> None:
    text = with_key("sqswatcher", "receivers = 8") + '\n[slurm]\nconf = "/etc/slurm/slurm.conf"\n'

    loaded = config.parse(text, source=SOURCE)

    assert loaded.sqswatcher.receivers == 8
    assert loaded.slurm.conf == Path("/etc/slurm/slurm.conf")


def test_configuration_is_frozen() -> None:
    loaded = config.parse(MINIMAL, source=SOURCE)

    with pytest.raises(ValueError, match="frozen"):
        loaded.cluster.default_slots = 3


@pytest.mark.parametrize(
    ("section", "line", "key", "expected", "found"),
    [
        ("sqswatcher", "receivers = 0", "sqswatcher.receivers", "greater than or equal to 1", "0"),
        ("sqswatcher", 'receivers = "four"', "sqswatcher.receivers", "a valid integer", "'four'"),
        ("cluster", "tombstone_days = -1", "cluster.tombstone_days", "greater than 0", "-1"),
        ("cluster", "default_slots = 1.5", "cluster.default_slots", "a valid integer", "1.5"),
        ("aws", 'retry_mode = "fast"', "aws.retry_mode", "'standard' or 'adaptive'", "'fast'"),
        ("aws", 'proxy = "ftp://proxy"', "aws.proxy", "match pattern", "'ftp://proxy'"),
        ("aws", "read_timeout = 10", "aws.read_timeout", "greater than 20", "10"),
        ("logging", 'level = "INFO"', "logging.level", "'debug', 'info'", "'INFO'"),
        ("supervisor", "services = []", "supervisor.services", "at least 1 item", "[]"),
        (
            "supervisor",
            'services = ["jobwatcher"]',
            "supervisor.services.0",
            "'sqswatcher'",
            "'jobwatcher'",
        ),
    ],
)
def test_bad_value_names_file_key_expectation_and_value(
    section: str, line: str, key: str, expected: str, found: str
) -> None:
    message = error_of(with_key(section, line))

    assert message.startswith(f"{SOURCE}: key '{key}': expected ")
    assert expected in message
    assert message.endswith(f"found {found}")
    assert "\n" not in message


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    ("section", "key"),
    [("aws", "connect_timeout"), ("scalein", "idle_minutes"), ("cluster", "tombstone_days")],
)
def test_infinity_and_nan_are_refused_with_the_key_named(
    section: str, key: str, value: str
) -> None:
    message = error_of(with_key(section, f"{key} = {value}"))

    assert message.startswith(f"{SOURCE}: key '{section}.{key}': expected ")
    assert "\n" not in message


def test_bad_pattern_is_explained_in_operator_words() -> None:
    message = error_of(MINIMAL.replace('"us-east-1"', '"useast"'))

    assert message.startswith(f"{SOURCE}: key 'cluster.region': expected a string that should ")
    assert "Input should" not in message
    assert message.endswith("found 'useast'")


def test_section_of_the_wrong_type_is_reported() -> None:
    message = error_of('logging = "debug"\n' + MINIMAL)

    assert message.startswith(f"{SOURCE}: key 'logging': expected ")
    assert message.endswith("found 'debug'")


def test_missing_required_key_is_named() -> None:
    message = error_of(MINIMAL.replace('table = "demo-instances"\n', ""))

    assert message == f"{SOURCE}: key 'cluster.table' is required but missing"


def test_missing_section_is_named() -> None:
    message = error_of(MINIMAL.split("[sqswatcher]")[0])

    assert message == f"{SOURCE}: key 'sqswatcher' is required but missing"


def test_every_error_is_reported_one_per_line() -> None:
    text = MINIMAL.replace('"demo"', '"1demo"').replace('"us-east-1"', '"useast"')

    lines = error_of(text).splitlines()

    assert len(lines) == 2
    assert all(line.startswith(f"{SOURCE}: key 'cluster.") for line in lines)


@pytest.mark.parametrize(
    ("section", "line", "key", "suggestion"),
    [
        ("cluster", "default_slot = 3", "cluster.default_slot", "default_slots"),
        ("sqswatcher", "reciever = 2", "sqswatcher.reciever", "receivers"),
        ("aws", 'retrymode = "standard"', "aws.retrymode", "retry_mode"),
        ("slurmm", 'feature = "x"', "slurmm", "slurm"),
    ],
)
def test_unknown_key_suggests_the_closest_one(
    section: str, line: str, key: str, suggestion: str
) -> None:
    message = error_of(with_key(section, line))

    assert message == f"{SOURCE}: unknown key '{key}' (did you mean '{suggestion}'?)"


def test_unknown_key_without_a_close_match_suggests_nothing() -> None:
    message = error_of(with_key("cluster", "colour = 'blue'"))

    assert message == f"{SOURCE}: unknown key 'cluster.colour'"


def test_invalid_toml_names_the_file() -> None:
    message = error_of("[cluster\nstack_name = ")

    assert message.startswith(f"{SOURCE}: not valid TOML: ")


def test_load_reads_the_given_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(MINIMAL, encoding="utf-8")

    assert config.load(path).cluster.stack_name == "demo"


def test_load_error_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(with_key("sqswatcher", "receivers = 0"), encoding="utf-8")

    with pytest.raises(ConfigError, match=rf"^{path}: key 'sqswatcher.receivers'"):
        config.load(path)


def test_missing_file_names_the_path_and_how_to_choose_another(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as raised:
        config.load(path)

    message = str(raised.value)
    assert message.startswith(f"{path}: no such file")
    assert "--config" in message
    assert "CFNCLUSTER_NODE_CONFIG" in message


def test_unreadable_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read: "):
        config.load(tmp_path)


def test_explicit_path_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "from-env.toml"))

    assert config.resolve_path(tmp_path / "explicit.toml") == tmp_path / "explicit.toml"


def test_environment_wins_over_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFNCLUSTER_NODE_CONFIG", str(tmp_path / "from-env.toml"))

    assert config.resolve_path(None) == tmp_path / "from-env.toml"


@pytest.mark.parametrize("value", [None, ""])
def test_default_path_without_explicit_path_or_environment(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(config.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(config.ENV_VAR, value)

    assert config.resolve_path(None) == Path("/etc/cfncluster/node.toml")


def test_load_uses_the_environment_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    monkeypatch.setenv(config.ENV_VAR, str(path))

    assert config.load().sqswatcher.queue == "demo-queue"
