"""The metadata service locked to root, with real netfilter rules in namespaces of our own.

Two network namespaces the test makes, joined by a veth pair: one serves EC2's metadata
addresses (169.254.169.254 and fd00:ec2::254, port 80), the other is the node, where the
product's lock runs in a process of its own and clients ask as root and as other users.
Nothing leaves the namespaces, and the machine's own rules are never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from cfncluster_node import imds
from cfncluster_node.node import metadata
from cfncluster_node.node.bootstrap import BootstrapError

NODE, SERVICE = "cfn-md-node", "cfn-md-service"
V4, V6 = "http://169.254.169.254/", "http://[fd00:ec2::254]/"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def in_node(*argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    as_user = ["runuser", "-u", user, "--"] if user else []
    env = {k: v for k, v in os.environ.items() if k != imds.IMDS_ENV}
    return subprocess.run(
        ["ip", "netns", "exec", NODE, *as_user, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def asks(url: str, user: str | None = None) -> str:
    """What a client on the node gets from ``url``: "ok", or its error."""
    probe = (
        "import sys, urllib.request\n"
        "try:\n"
        "    urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "    print('ok')\n"
        "except OSError as exc:\n"
        "    print(exc)\n"
    )
    # The system's Python: root's own (pyenv) is not for other users to run.
    return in_node("/usr/bin/python3", "-c", probe, url, user=user).stdout.strip()


def lock(*users: str) -> subprocess.CompletedProcess[str]:
    """The product's lock, run on the node as its bootstrap runs it."""
    code = "import asyncio\nfrom cfncluster_node.node import metadata\n"
    code += f"asyncio.run(metadata.lock({list(users)!r}))\n"
    return in_node(sys.executable, "-c", code)


@pytest.fixture
def metadata_network() -> Iterator[None]:
    subprocess.run(["ip", "netns", "del", NODE], capture_output=True)
    subprocess.run(["ip", "netns", "del", SERVICE], capture_output=True)
    ip("netns", "add", NODE)
    ip("netns", "add", SERVICE)
    server = None
    try:
        ip(
            "link",
            "add",
            "cfnmd0",
            "netns",
            NODE,
            "type",
            "veth",
            "peer",
            "cfnmd1",
            "netns",
            SERVICE,
        )
        for namespace, device, mine, theirs in (
            (
                SERVICE,
                "cfnmd1",
                ("169.254.169.254", "fd00:ec2::254"),
                ("169.254.0.2", "fd00:ec2::2"),
            ),
            (NODE, "cfnmd0", ("169.254.0.2", "fd00:ec2::2"), ("169.254.169.254", "fd00:ec2::254")),
        ):
            inside = ("-n", namespace)
            ip(*inside, "addr", "add", f"{mine[0]}/32", "dev", device)
            ip(*inside, "-6", "addr", "add", f"{mine[1]}/128", "dev", device, "nodad")
            ip(*inside, "link", "set", device, "up")
            ip(*inside, "link", "set", "lo", "up")
            ip(*inside, "route", "add", f"{theirs[0]}/32", "dev", device)
            ip(*inside, "-6", "route", "add", f"{theirs[1]}/128", "dev", device)
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                SERVICE,
                "/usr/bin/python3",
                "-m",
                "http.server",
                "--bind",
                "::",
                "80",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while asks(V4) != "ok" or asks(V6) != "ok":
            if time.monotonic() > deadline:
                raise AssertionError("the namespaced metadata service never answered")
            time.sleep(0.2)
        yield
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        subprocess.run(["ip", "netns", "del", NODE], capture_output=True)
        subprocess.run(["ip", "netns", "del", SERVICE], capture_output=True)


def rules(tool: str) -> list[str]:
    return in_node(tool, "-S").stdout.splitlines()


@pytest.mark.real
def test_only_root_reaches_the_metadata_service_once_locked(metadata_network: None) -> None:
    assert asks(V4, "nobody") == "ok"  # before: any job gets the instance's credentials

    locked = lock("root")

    assert locked.returncode == 0, locked.stderr
    assert asks(V4) == asks(V6) == "ok"
    for url in (V4, V6):
        started = time.monotonic()
        answer = asks(url, "nobody")
        assert "Connection refused" in answer, answer
        assert time.monotonic() - started < 4  # refused at once, not left to time out


@pytest.mark.real
def test_a_user_named_may_reach_it_too(metadata_network: None) -> None:
    assert lock("root", "daemon").returncode == 0

    assert asks(V4, "daemon") == "ok"
    assert "Connection refused" in asks(V4, "nobody")


@pytest.mark.real
def test_locking_at_every_boot_replaces_the_chain_and_jumps_once(metadata_network: None) -> None:
    for users in (("root", "daemon"), ("root",), ("root",)):
        assert lock(*users).returncode == 0

    for tool, address in (("iptables", "169.254.169.254/32"), ("ip6tables", "fd00:ec2::254/128")):
        listed = rules(tool)
        assert [r for r in listed if r.startswith(f"-A {metadata.CHAIN}")] == [
            f"-A {metadata.CHAIN} -m owner --uid-owner 0 -j ACCEPT",
            f"-A {metadata.CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
        ]
        jumps = [r for r in listed if r.startswith("-A OUTPUT")]
        assert jumps == [f"-A OUTPUT -d {address} -p tcp -m tcp --dport 80 -j {metadata.CHAIN}"]
    assert "Connection refused" in asks(V4, "daemon")


def test_the_default_endpoint_is_locked_on_both_families() -> None:
    assert [(str(e.address), e.port) for e in metadata.endpoints(imds.DEFAULT_URL)] == [
        ("169.254.169.254", 80),
        ("fd00:ec2::254", 80),
    ]


def test_another_endpoint_is_locked_where_it_is() -> None:
    [endpoint] = metadata.endpoints("http://10.1.2.3:8080")

    assert (str(endpoint.address), endpoint.port) == ("10.1.2.3", 8080)
    assert endpoint.match() == ["-d", "10.1.2.3/32", "-p", "tcp", "--dport", "8080"]


def test_an_endpoint_named_by_a_hostname_cannot_be_locked() -> None:
    with pytest.raises(BootstrapError, match="must be named by its address"):
        metadata.endpoints("http://metadata.internal")


def test_a_user_that_does_not_exist_is_a_clear_error() -> None:
    with pytest.raises(BootstrapError, match=r"no such user.*'no-such-user'"):
        metadata.uids_of(["root", "no-such-user"])


def test_the_chain_accepts_each_user_once_then_refuses() -> None:
    assert metadata.ruleset([0, 0, 101]).splitlines() == [
        "*filter",
        f":{metadata.CHAIN} - [0:0]",
        f"-A {metadata.CHAIN} -m owner --uid-owner 0 -j ACCEPT",
        f"-A {metadata.CHAIN} -m owner --uid-owner 101 -j ACCEPT",
        f"-A {metadata.CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
        "COMMIT",
    ]
