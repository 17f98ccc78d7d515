"""Structured logging: every record is an event name plus fields.

JSON lines when stdout is not a terminal (journald keeps them whole), readable
``key=value`` on a terminal. Services bind ``service=...`` once with ``bind_service``;
the ids a record concerns (``instance_id``, ``hostname``, ``message_id``) are fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

Format = Literal["auto", "json", "console"]


def configure(level: str = "info", fmt: Format = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def bind_service(name: str) -> None:
    """Tag every record of the current task (and the tasks it starts) with the service."""
    structlog.contextvars.bind_contextvars(service=name)


def get(**fields: Any) -> Any:
    return structlog.get_logger().bind(**fields)
