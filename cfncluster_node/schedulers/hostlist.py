"""Slurm hostlist expressions: ``ip-10-0-0-[5,7-9]`` for five hosts in one argument."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def compress(names: Iterable[str]) -> str:
    """One expression naming exactly ``names`` (duplicates collapse, order is sorted)."""
    plain: set[str] = set()
    numbered: dict[tuple[str, int], set[int]] = defaultdict(set)
    for name in names:
        match = _NUMBERED.match(name)
        if match is None:
            plain.add(name)
            continue
        prefix, digits = match.groups()
        # A zero-padded number keeps its width; unpadded numbers of any width mix freely.
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        numbered[(prefix, width)].add(int(digits))
    parts = sorted(plain)
    for (prefix, width), numbers in sorted(numbered.items()):
        ranges = [_format(r, width) for r in _ranges(sorted(numbers))]
        if len(ranges) == 1 and "-" not in ranges[0]:
            parts.append(prefix + ranges[0])
        else:
            parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts)


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for number in numbers:
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    return ranges


def _format(bounds: tuple[int, int], width: int) -> str:
    low, high = (f"{n:0{width}d}" for n in bounds)
    return low if low == high else f"{low}-{high}"
