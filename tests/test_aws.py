"""The AWS edge's process-wide model cache: what ``preload`` parses, no client parses again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# In a fresh interpreter: the loader is the process's, and an audit hook sees every open.
_COUNT_MODEL_READS = """
import asyncio, json, sys
from cfncluster_node import aws
from cfncluster_node.config import AwsSettings

if sys.argv[1] == "preload":
    aws.preload(aws.NODE_SERVICES)
reads = []
sys.addaudithook(
    lambda event, args: reads.append(str(args[0]))
    if event == "open" and "botocore" in str(args[0]) and "data" in str(args[0])
    else None
)

async def main():
    one = aws.Aws(AwsSettings(), "us-east-1")
    two = aws.Aws(AwsSettings(), "eu-west-1")
    async with one, two:
        for service in aws.NODE_SERVICES:
            await one.client(service)
            await two.client(service)

asyncio.run(main())
print(json.dumps(reads))
"""


def _model_reads(mode: str) -> list[str]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_MODEL_READS, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reads: list[str] = json.loads(done.stdout.splitlines()[-1])
    return reads


def test_after_preload_no_client_reads_a_model_and_sessions_share_what_was_read() -> None:
    assert _model_reads("preload") == []


def test_without_preload_the_first_client_reads_its_model_and_the_second_session_does_not() -> None:
    reads = _model_reads("lazy")
    ec2_models = [path for path in reads if "/ec2/" in path and "service-2" in path]
    assert len(ec2_models) == 1, reads
