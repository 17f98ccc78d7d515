"""node.toml kept in step with the stack, as cfn-hup kept the lineage's head nodes.

The stack holds the head node's node.toml in an SSM parameter (``/cfncluster/STACK/
node.toml``), which ``launch update`` changes without touching the instance. At start,
``run`` writes the parameter's text to node.toml; while it runs, the ``configwatch``
service reads the parameter every ``supervisor.config_poll`` seconds. A new text that
validates is written, and only what it touches restarts: a service whose own section
changed is replaced under the supervisor, anything else (the cluster, AWS, the
scheduler, storage) restarts the daemon, so that storage and bootstrap run again. A text
that does not validate is refused with one log line, and the node runs on as it was.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

from cfncluster_node import config
from cfncluster_node.aws import Aws
from cfncluster_node.config import Change, ClusterSettings, Config, ConfigError, affected
from cfncluster_node.node import bootstrap
from cfncluster_node.node.service import Periodic


async def fetch(aws: Aws, parameter: str) -> str:
    response = await aws.call("ssm", "get_parameter", Name=parameter)
    text: str = response["Parameter"]["Value"]
    return text if text.endswith("\n") else text + "\n"


async def install(aws: Aws, parameter: str, path: Path) -> bool:
    """The parameter's node.toml at ``path``, if it validates; True if it changed."""
    text = await fetch(aws, parameter)
    config.parse(text, source=f"ssm:{parameter}")
    return await asyncio.to_thread(bootstrap.write_if_changed, path, text)


Apply = Callable[[Config, Change], Awaitable[None]]


class ConfigWatch(Periodic):
    """Follows the stack's node.toml and applies a change through ``apply``.

    aws: the client factory. cluster: the ``[cluster]`` section. parameter: the SSM
    parameter. path: node.toml. interval: seconds between two reads. apply: restarts
    what a change touches (the services, or the daemon).
    """

    name = "configwatch"

    def __init__(
        self,
        aws: Aws,
        cluster: ClusterSettings,
        parameter: str,
        path: Path,
        interval: float,
        apply: Apply,
        *,
        burst: bool = False,
    ) -> None:
        super().__init__(aws, cluster, interval, burst=burst)
        self._parameter = parameter
        self._path = path
        self._apply = apply

    async def tick(self) -> Change | None:
        """One look; the change applied (empty if none), None if the new text was refused."""
        text = await fetch(self._aws, self._parameter)
        current = await asyncio.to_thread(self._path.read_text)
        if text == current:
            return Change()
        try:
            settings: Config = config.parse(text, source=f"ssm:{self._parameter}")
        except ConfigError as exc:
            self._log.error("config_update_refused", parameter=self._parameter, error=str(exc))
            return None
        change = affected(tomllib.loads(current), tomllib.loads(text))
        await asyncio.to_thread(bootstrap.write_if_changed, self._path, text)
        self._log.warning(
            "config_updated",
            sections=list(change.sections),
            services=sorted(change.services),
            daemon=change.daemon,
        )
        await self._apply(settings, change)
        return change
