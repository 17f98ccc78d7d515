"""What counts as a hostname, an instance id, an instance type or a region: one definition
each, for the queue's messages, the scheduler command lines and both configuration files.

Pure predicates over strings and the regular expressions behind them (pydantic's
``pattern=`` takes the expressions, everything else calls the predicates).
"""

from __future__ import annotations

import re
from typing import Final

# RFC 1123 labels: nothing a command line could read as an option, a list, a wildcard or
# a group (``-x``, ``a,b``, ``*``, ``@allhosts``).
_LABEL: Final = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME: Final = re.compile(rf"{_LABEL}(\.{_LABEL})*")
HOSTNAME_MAX: Final = 253

INSTANCE_ID: Final = r"^i-[0-9a-f]{8,17}$"
# c5.xlarge, u-6tb1.metal, m7i-flex.large, r7iz.metal-16xl.
INSTANCE_TYPE: Final = r"^[a-z][a-z0-9-]*\.[a-z0-9][a-z0-9-]*$"
REGION: Final = r"^[a-z]{2}(-[a-z]+)+-\d$"

_INSTANCE_ID_RE: Final = re.compile(INSTANCE_ID)
_INSTANCE_TYPE_RE: Final = re.compile(INSTANCE_TYPE)


def is_hostname(value: str) -> bool:
    """A name fit for a scheduler's command line: dot-separated RFC 1123 labels."""
    return len(value) <= HOSTNAME_MAX and _HOSTNAME.fullmatch(value) is not None


def short_hostname(value: str) -> str | None:
    """The scheduler's name for a node, the first label of its FQDN in lower case; None
    if ``value`` is not a hostname."""
    name = value.lower().rstrip(".")
    return name.split(".", 1)[0] if name and is_hostname(name) else None


def is_instance_id(value: str) -> bool:
    return _INSTANCE_ID_RE.fullmatch(value) is not None


def is_instance_type(value: str) -> bool:
    return _INSTANCE_TYPE_RE.fullmatch(value) is not None
