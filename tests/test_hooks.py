"""pre_install and post_install: fetched from moto's S3 through each role, or over real
HTTPS from a server on 127.0.0.1, run as real processes; a failing one fails the head
node's stack with its name and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cfncluster_node.aws import Aws
from cfncluster_node.config import ComputeConfig, HooksSettings
from cfncluster_node.local.slurm import LocalSlurm
from cfncluster_node.node import compute, hooks
from cfncluster_node.node.bootstrap import BootstrapError
from cfncluster_node.stack import launcher, template
from tests.clusters import HOOK_BUCKET, HOOKS, on_moto
from tests.conftest import REGION, MetadataService
from tests.test_launcher import console, head_node_comes_up

SHOWS_ITSELF = b"""#!/bin/sh
echo "args: $1|$2"
echo "role: $CFNCLUSTER_NODE_ROLE"
echo "to stderr" >&2
"""


async def scripts_in_s3(aws: Aws, **scripts: bytes) -> None:
    await aws.call("s3", "create_bucket", Bucket=HOOK_BUCKET)
    for name, body in scripts.items():
        await aws.call("s3", "put_object", Bucket=HOOK_BUCKET, Key=name, Body=body)


def outputs(records: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(r["stream"], r["line"]) for r in records if r["event"] == "hook_output"]


async def test_an_s3_hook_runs_with_its_arguments_and_its_output_goes_to_the_journal(
    aws: Aws, moto: object
) -> None:
    await scripts_in_s3(aws, **{"pre.sh": SHOWS_ITSELF})
    settings = HooksSettings.model_validate(HOOKS)

    with structlog.testing.capture_logs() as records:
        await hooks.run("pre_install", settings, aws, role="head")
        await hooks.run("post_install", HooksSettings(), aws, role="head")  # none: nothing

    assert outputs(records) == [
        ("stdout", "args: --first|two words"),
        ("stdout", "role: head"),
        ("stderr", "to stderr"),
    ]
    assert [r["hook"] for r in records if r["event"] == "hook_done"] == ["pre_install"]


async def test_a_compute_node_fetches_its_hook_with_its_own_role(aws: Aws, moto: object) -> None:
    await scripts_in_s3(aws, **{"post.sh": SHOWS_ITSELF})
    settings = ComputeConfig.model_validate(
        {
            "compute": {
                "region": REGION,
                "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/c-queue",
                "head_node": "10.0.0.5",
                "munge_key_secret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf",
            },
            "hooks": HOOKS,
        }
    )

    with structlog.testing.capture_logs() as records:
        await compute.run_hook("post_install", settings, aws)

    assert ("stdout", "role: compute") in outputs(records)


async def test_a_failing_hook_fails_with_its_exit_code_and_a_missing_one_says_so(
    aws: Aws, moto: object
) -> None:
    await scripts_in_s3(aws, **{"pre.sh": b"#!/bin/sh\necho half done\nexit 3\n"})
    settings = HooksSettings.model_validate(HOOKS)

    with pytest.raises(BootstrapError, match=f"^exited with 3: s3://{HOOK_BUCKET}/pre.sh$"):
        await hooks.run("pre_install", settings, aws, role="head")
    with pytest.raises(BootstrapError, match=f"cannot fetch s3://{HOOK_BUCKET}/post.sh"):
        await hooks.run("post_install", settings, aws, role="head")


@contextlib.contextmanager
def trusted_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ssl.SSLContext]:
    """A certificate for 127.0.0.1 that this process's TLS clients trust (SSL_CERT_FILE)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    yield server


@contextlib.asynccontextmanager
async def https_server(script: bytes, context: ssl.SSLContext) -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=script)

    app = web.Application()
    app.router.add_get("/hooks/post.sh", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/hooks/post.sh"
    finally:
        await runner.cleanup()


async def test_an_https_hook_is_fetched_over_verified_tls(
    aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trusted_certificate(tmp_path, monkeypatch) as context:
        async with https_server(SHOWS_ITSELF, context) as url:
            settings = HooksSettings.model_validate({"post_install": {"url": url, "args": ["x"]}})
            with structlog.testing.capture_logs() as records:
                await hooks.run("post_install", settings, aws, role="head")

    assert ("stdout", "args: x|") in outputs(records)


@pytest.mark.privilege(stack="hooked")
async def test_a_failing_post_install_fails_the_stack_naming_the_hook_and_its_code(
    aws: Aws, slurm: LocalSlurm, metadata_service: MetadataService
) -> None:
    await scripts_in_s3(aws, **{"post.sh": b"#!/bin/sh\nexit 7\n"})
    cluster = await on_moto(aws, hooks={"post_install": HOOKS["post_install"]})
    stacks = launcher.Launcher(aws, REGION, console(), poll_s=0.05)
    creating = asyncio.create_task(stacks.create("hooked", cluster))
    with pytest.raises(BootstrapError):
        await head_node_comes_up(aws, "hooked", slurm, metadata_service)
    failed = await creating

    [failure] = failed.failures
    assert failure.logical_id == template.HEAD_NODE
    assert "post_install: exited with 7: s3://" in failure.reason
