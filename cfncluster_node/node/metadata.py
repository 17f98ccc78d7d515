"""Only root reaches the instance metadata service, on the head node and on compute nodes.

EC2 serves its role's credentials to every process on an instance that asks, and on a
cluster those processes are the users' jobs: with the head node's role a job could delete
the queue's messages or terminate the fleet; with a compute node's it could send as the
node. At every boot, before any of the operator's or the users' code runs (the hooks, the
scheduler's daemons), the node puts one netfilter chain in front of the metadata service:
the users named (root by default) may reach it, and anyone else is refused at once, so a
client fails fast instead of waiting out a timeout.

The chain is replaced whole each time (``iptables-restore --noflush``: one transaction
that leaves every other rule alone), and OUTPUT jumps to it first. It covers the address
and port this node reaches the service at (``AWS_EC2_METADATA_SERVICE_ENDPOINT``, else
169.254.169.254:80) and, with the default one, IPv6's fd00:ec2::254:80 too.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cfncluster_node import commands, imds, logs
from cfncluster_node.node.bootstrap import BootstrapError

CHAIN = "CFNCLUSTER_IMDS"
_IPV6_SERVICE = "[fd00:ec2::254]"
_TIMEOUT_S = 30.0
# xtables' lock, for the legacy backend: wait for it this long rather than fail at once.
_LOCK_WAIT_S = "10"


@dataclass(frozen=True)
class Endpoint:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def tools(self) -> tuple[str, str]:
        """(the rules' tool, its restore) for this address's family."""
        if self.address.version == 6:
            return "/usr/sbin/ip6tables", "/usr/sbin/ip6tables-restore"
        return "/usr/sbin/iptables", "/usr/sbin/iptables-restore"

    def match(self) -> list[str]:
        prefix = 128 if self.address.version == 6 else 32
        return ["-d", f"{self.address}/{prefix}", "-p", "tcp", "--dport", str(self.port)]


def endpoints(base_url: str) -> list[Endpoint]:
    """Where this node reaches the metadata service, from its base URL: the IPv6 address
    too when it is EC2's own."""
    urls = [base_url] + ([f"http://{_IPV6_SERVICE}"] if base_url == imds.DEFAULT_URL else [])
    found = []
    for url in urls:
        parts = urlsplit(url)
        try:
            address = ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            raise BootstrapError(
                f"{imds.IMDS_ENV}={url}: the metadata service must be named by its address"
            ) from None
        found.append(Endpoint(address, parts.port or 80))
    return found


def ruleset(uids: Sequence[int]) -> str:
    """The chain, as iptables-restore reads it: the users accepted, everyone else refused
    (a TCP reset, so a client is told at once)."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += [f"-A {CHAIN} -m owner --uid-owner {uid} -j ACCEPT" for uid in sorted(set(uids))]
    lines += [f"-A {CHAIN} -p tcp -j REJECT --reject-with tcp-reset", "COMMIT", ""]
    return "\n".join(lines)


def uids_of(users: Sequence[str]) -> list[int]:
    try:
        return [pwd.getpwnam(user).pw_uid for user in users]
    except KeyError as exc:
        raise BootstrapError(f"no such user to allow the metadata service: {exc}") from None


async def lock(users: Sequence[str]) -> None:
    """Let only ``users`` reach this node's metadata service, from now on."""
    uids = uids_of(users)
    base_url = os.environ.get(imds.IMDS_ENV, imds.DEFAULT_URL).rstrip("/")
    locked = endpoints(base_url)
    try:
        for family in sorted({endpoint.tools for endpoint in locked}):
            tool, restore = family
            await commands.run([restore, "--noflush"], input=ruleset(uids), timeout=_TIMEOUT_S)
            for endpoint in (e for e in locked if e.tools == family):
                jump = [*endpoint.match(), "-j", CHAIN]
                checked = await commands.run(
                    [tool, "-w", _LOCK_WAIT_S, "-C", "OUTPUT", *jump],
                    timeout=_TIMEOUT_S,
                    check=False,
                )
                if checked.returncode != 0:
                    await commands.run(
                        [tool, "-w", _LOCK_WAIT_S, "-I", "OUTPUT", "1", *jump],
                        timeout=_TIMEOUT_S,
                    )
    except commands.CommandError as exc:
        raise BootstrapError(f"locking the metadata service: {exc}") from None
    logs.get().info(
        "metadata_service_locked",
        endpoints=" ".join(f"{e.address}:{e.port}" for e in locked),
        users=" ".join(users),
    )
