"""Structured logging: every record is an event name plus fields.

Under systemd (``JOURNAL_STREAM`` names our stdout) each record goes to the journal with
its fields as journal fields, so an operator filters with ``journalctl -u cfncluster-node
EVENT=host_registered`` or ``INSTANCE_ID=i-0abc``; levels become priorities. Elsewhere:
JSON lines when stdout is not a terminal, readable ``key=value`` on a terminal. Services
bind ``service=...`` once with ``bind_service``; the ids a record concerns
(``instance_id``, ``hostname``, ``message_id``) are fields.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import sys
from typing import Any, Literal, TextIO

import structlog

Format = Literal["auto", "json", "console", "journal"]
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "cfncluster-node"
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
_NOT_A_FIELD = re.compile(r"[^A-Z0-9_]")


def configure(
    level: str = "info",
    fmt: Format = "auto",
    stream: TextIO | None = None,
    *,
    journal_socket: str = JOURNAL_SOCKET,
) -> None:
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "journal" if under_journald(stream) else "console" if stream.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    factory: Any = structlog.PrintLoggerFactory(stream)
    match fmt:
        case "journal":
            processors += [structlog.processors.format_exc_info, journal_datagram]
            factory = JournalLoggerFactory(journal_socket, stream)
        case "json":
            processors += [
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ]
        case _:
            processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def under_journald(stream: TextIO) -> bool:
    """systemd's own test: JOURNAL_STREAM is the device and inode of our output."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{found.st_dev}:{found.st_ino}"


def journal_field(key: str) -> str:
    """A journal field name: upper case letters, digits and underscores, not leading ``_``."""
    name = _NOT_A_FIELD.sub("_", key.upper()).lstrip("_")
    return name or "FIELD"


def journal_datagram(_: Any, method: str, event: dict[str, Any]) -> bytes:
    """One record in the journal's native protocol: a field per line, newlines length-framed."""
    level = str(event.pop("level", method))
    name = str(event.pop("event", ""))
    event.pop("timestamp", None)  # the journal stamps its own
    words = " ".join(f"{key}={value}" for key, value in event.items() if key != "exception")
    fields: dict[str, str] = {
        "MESSAGE": f"{name} {words}".strip(),
        "PRIORITY": str(_PRIORITIES.get(level, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "EVENT": name,
    }
    for key, value in event.items():
        fields[journal_field(key)] = value if isinstance(value, str) else json.dumps(value)
    out = bytearray()
    for key, value in fields.items():
        encoded = value.encode()
        if b"\n" in encoded:
            out += key.encode() + b"\n" + struct.pack("<Q", len(encoded)) + encoded + b"\n"
        else:
            out += key.encode() + b"=" + encoded + b"\n"
    return bytes(out)


class JournalLogger:
    """Sends each record to journald's socket; to ``fallback`` if the journal refuses it."""

    def __init__(self, path: str, fallback: TextIO) -> None:
        self._path = path
        self._fallback = fallback
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, datagram: bytes) -> None:
        try:
            self._socket.sendto(datagram, self._path)
        except OSError:
            # A journal that is gone or a record too large: the line still reaches stdout.
            self._fallback.write(datagram.decode(errors="replace").replace("\n", " ") + "\n")
            self._fallback.flush()

    msg = debug = info = warning = warn = error = critical = exception = fatal = send


class JournalLoggerFactory:
    def __init__(self, path: str, fallback: TextIO) -> None:
        self._logger = JournalLogger(path, fallback)

    def __call__(self, *args: Any) -> JournalLogger:
        return self._logger


def bind_service(name: str) -> None:
    """Tag every record of the current task (and the tasks it starts) with the service."""
    structlog.contextvars.bind_contextvars(service=name)


def get(**fields: Any) -> Any:
    return structlog.get_logger().bind(**fields)
