"""The instance metadata service, IMDSv2: what this instance is, asked of itself."""

from __future__ import annotations

import os

import aiohttp

# botocore's own variable for the endpoint, so one setting redirects both.
IMDS_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_URL = "http://169.254.169.254"
_TOKEN_TTL_S = "60"


class MetadataError(Exception):
    """The metadata service did not answer."""


async def read(keys: list[str]) -> dict[str, str]:
    """``/latest/meta-data/<key>`` for each key it knows; unknown keys are left out."""
    base = os.environ.get(IMDS_ENV, DEFAULT_URL).rstrip("/")
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.put(
                f"{base}/latest/api/token",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": _TOKEN_TTL_S},
            ) as response:
                response.raise_for_status()
                token = await response.text()
            found = {}
            for key in keys:
                async with session.get(
                    f"{base}/latest/meta-data/{key}",
                    headers={"X-aws-ec2-metadata-token": token},
                ) as response:
                    if response.status == 200:
                        found[key] = (await response.text()).strip()
            return found
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise MetadataError(f"instance metadata at {base} did not answer: {exc}") from None
