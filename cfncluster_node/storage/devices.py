"""What a block device holds and where filesystems are mounted: plain data, and the
parsers of blkid's and findmnt's answers (pure). ``machine`` asks them."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    path: str
    fs_type: str | None = None
    uuid: str | None = None
    label: str | None = None
    partition_table: str | None = None
    usage: str | None = None  # "filesystem", "raid", "crypto", ...
    holder: str | None = None  # the running md array this disk is a member of

    @property
    def blank(self) -> bool:
        return not (self.fs_type or self.partition_table or self.usage)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fs_type: str


def parse_blkid(path: str, text: str) -> Device:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return Device(
        path=path,
        fs_type=fields.get("TYPE"),
        uuid=fields.get("UUID"),
        label=fields.get("LABEL"),
        partition_table=fields.get("PTTYPE"),
        usage=fields.get("USAGE"),
    )


def parse_findmnt(text: str) -> list[Mount]:
    if not text.strip():
        return []
    return [
        Mount(entry["source"], entry["target"], entry["fstype"])
        for entry in json.loads(text).get("filesystems", [])
    ]
