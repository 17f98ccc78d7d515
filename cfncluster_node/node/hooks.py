"""pre_install and post_install: the operator's own scripts, run as root around a node's
setup, as CfnCluster ran them.

The script is fetched from S3 (through the node's role) or HTTPS, written to a private
directory, and run with its arguments, without a shell, within ``hooks.timeout``. Its
output goes to the journal line by line (``event=hook_output``). A script that fails,
or cannot be fetched, fails the node's setup with the hook's name and exit code.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from pathlib import Path

import aiohttp

from cfncluster_node import commands, logs
from cfncluster_node.aws import Aws, AwsError
from cfncluster_node.config import HookSettings, HooksSettings
from cfncluster_node.node.bootstrap import BootstrapError

# What the script can test to know where it runs, as CfnCluster's cfn_node_type.
ROLE_VARIABLE = "CFNCLUSTER_NODE_ROLE"


async def run(name: str, hooks: HooksSettings, aws: Aws, *, role: str) -> None:
    """Run the hook called ``name`` (pre_install, post_install) if the node has one."""
    hook: HookSettings | None = getattr(hooks, name)
    if hook is None:
        return
    log = logs.get(hook=name, url=hook.url)
    script = await fetch(hook.url, aws)
    with tempfile.TemporaryDirectory(prefix=f"cfncluster-{name}-") as directory:
        path = Path(directory) / Path(hook.url).name
        await asyncio.to_thread(_write_executable, path, script)
        try:
            result = await commands.run(
                [str(path), *hook.args],
                timeout=hooks.timeout,
                env={ROLE_VARIABLE: role},
                check=False,
            )
        except commands.CommandError as exc:  # it could not start, or ran out of time
            raise BootstrapError(f"{exc.reason}: {hook.url}") from None
    for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        for line in text.splitlines():
            log.info("hook_output", stream=stream, line=line)
    if result.returncode != 0:
        log.error("hook_failed", exit_code=result.returncode)
        raise BootstrapError(f"exited with {result.returncode}: {hook.url}")
    log.info("hook_done", seconds=round(result.seconds, 1))


async def fetch(url: str, aws: Aws) -> bytes:
    """The script at ``s3://bucket/key`` or ``https://...``."""
    if url.startswith("s3://"):
        bucket, key = url.removeprefix("s3://").split("/", 1)
        try:
            found = await aws.call("s3", "get_object", Bucket=bucket, Key=key)
            async with found["Body"] as body:
                data: bytes = await body.read()
        except AwsError as exc:
            raise BootstrapError(f"cannot fetch {url}: {exc}") from None
        return data
    try:
        timeout = aiohttp.ClientTimeout(total=120)
        # Made now, not at import: the machine's trust store as it is (SSL_CERT_FILE too).
        verified = ssl.create_default_context()
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, ssl=verified) as response,
        ):
            response.raise_for_status()
            script: bytes = await response.read()
            return script
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BootstrapError(f"cannot fetch {url}: {exc}") from None


def _write_executable(path: Path, script: bytes) -> None:
    path.write_bytes(script)
    path.chmod(0o700)
