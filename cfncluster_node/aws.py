"""AWS clients: one aiobotocore session, one client per service, one way to call them.

Retries are the SDK's own (``standard`` or ``adaptive`` mode): throttling of every service,
transient 5xx and connection errors are retried with backoff and jitter. The SDK's
``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_<SERVICE>``) is honoured, so tests, the demo
and the benchmarks reach moto's server through exactly the production code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import create_loader
from botocore.parsers import ResponseParserError

from cfncluster_node.config import AwsSettings

# Told of every call made through an Aws: (region, service, API operation, parameters).
# The test suite's least-privilege check listens here (tests/privilege.py).
Observer = Callable[[str, str, str, dict[str, Any]], None]
observers: list[Observer] = []

# The services the node's daemons call.
NODE_SERVICES = (
    "autoscaling",
    "cloudformation",
    "cloudwatch",
    "dynamodb",
    "ec2",
    "s3",
    "secretsmanager",
    "sns",
    "sqs",
    "ssm",
    "sts",
)

# One loader for the process, so each service's model is read and parsed once.
_LOADER = create_loader()


def preload(services: Iterable[str]) -> None:
    """Parse these services' models now, before the event loop runs.

    Parsing a model is one long stretch of CPU that holds the GIL (EC2's takes 0.3 s on a
    fast core, tens of seconds on an emulated one): done by the first client on the loop,
    it stalls every service and the systemd watchdog that the loop feeds.
    """
    _LOADER.list_available_services("service-2")
    for name in ("endpoints", "partitions", "sdk-default-configuration"):
        _LOADER.load_data(name)
    for service in services:
        _LOADER.load_service_model(service, "service-2")
        _LOADER.load_service_model(service, "endpoint-rule-set-1")


class AwsError(Exception):
    def __init__(self, service: str, operation: str, code: str, message: str) -> None:
        self.service = service
        self.operation = operation
        self.code = code
        super().__init__(f"{service} {operation} failed: {code}: {message}")


class Aws:
    """Opened with ``async with``; clients are created on first use and closed at exit."""

    def __init__(self, settings: AwsSettings, region: str) -> None:
        self._region = region
        proxies = (
            {"http": settings.proxy, "https": settings.proxy}
            if settings.proxy and settings.proxy != "NONE"
            else None
        )
        self._config = AioConfig(
            retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_pool_connections=64,
            proxies=proxies,
        )
        self._session: AioSession = get_session()
        self._session.register_component("data_loader", _LOADER)
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._clients.clear()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def client(self, service: str) -> Any:
        if service not in self._clients:
            creator = self._session.create_client(
                service, region_name=self._region, config=self._config
            )
            self._clients[service] = await self._stack.enter_async_context(creator)
        return self._clients[service]

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """Call ``operation`` (snake_case) and turn any SDK failure into AwsError."""
        client = await self._observed(service, operation, params)
        with _as_aws_error(service, operation):
            response: dict[str, Any] = await getattr(client, operation)(**params)
        return response

    async def pages(
        self, service: str, operation: str, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Every page of a paginated ``operation``, through botocore's paginator (which
        knows each API's own token and truncation keys)."""
        client = await self._observed(service, operation, params)
        with _as_aws_error(service, operation):
            async for page in client.get_paginator(operation).paginate(**params):
                yield page

    async def _observed(self, service: str, operation: str, params: dict[str, Any]) -> Any:
        client = await self.client(service)
        if observers:
            api = client.meta.method_to_api_mapping.get(operation, operation)
            for observer in observers:
                observer(self._region, service, api, params)
        return client


@contextlib.contextmanager
def _as_aws_error(service: str, operation: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AwsError(
            service,
            operation,
            str(error.get("Code", "Unknown")),
            str(error.get("Message", exc)),
        ) from exc
    except (BotoCoreError, ResponseParserError) as exc:
        # A parser error is a reply that is not the API's (an HTML 500 page).
        raise AwsError(service, operation, type(exc).__name__, str(exc)) from exc
