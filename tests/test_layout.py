"""The house: the rooms, the way their imports point, the pure core, and what ships.

The layout is the architecture (README, "Layout"). These tests keep it so: each room
imports only the rooms beneath it, the pure modules import no I/O, the README's drawing
matches the package, no file the code or the docs cite is missing, and the AMI's wheel
carries neither the local playground nor moto.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "cfncluster_node"

# Decisions without I/O: tested by the hundred in milliseconds (`make test-fast`).
PURE = {
    "names",
    "protocol",
    "node.messages",
    "node.trust",
    "node.lifecycle",
    "node.records",
    "node.fleet",
    "node.drift",
    "schedulers",
    "schedulers.hostlist",
    "schedulers.slurmconf",
    "schedulers.sgeconf",
    "storage",
    "storage.devices",
    "storage.plan",
    "storage.raid",
    "stack.policy",
    "stack.template",
}
# Configuration: pure parsing behind a load() that reads its file; pure modules may use it.
CONFIGURATION = {"config", "stack.clusterconfig"}
# What a pure module must never import: the network, processes, the event loop, logging,
# terminals.
IO_LIBRARIES = {
    "aiobotocore",
    "aiohttp",
    "asyncio",
    "botocore",
    "http",
    "logging",
    "moto",
    "os",
    "rich",
    "socket",
    "structlog",
    "subprocess",
    "urllib",
    "uvloop",
}
FOUNDATION = {"config", "names", "protocol", "aws", "imds", "commands", "files", "logs"}
# Each room and the rooms it may import (besides itself and the foundation).
MAY_IMPORT = {
    "foundation": set(),
    "schedulers": set(),
    "storage": set(),
    "node": {"schedulers", "storage"},
    "stack": set(),
    "local": {"node", "stack", "schedulers", "storage"},
    "cli": {"node", "stack", "schedulers", "storage"},
}


def modules() -> dict[str, Path]:
    """Every module of the package by its name below ``cfncluster_node``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts) or "__init__"] = path
    return found


def room_of(module: str) -> str:
    top = module.split(".")[0]
    if top == "__main__":
        return "cli"
    if module in FOUNDATION or top == "__init__":
        return "foundation"
    return top


def imports_of(path: Path, *, top_level_only: bool = False) -> tuple[set[str], set[str]]:
    """(project modules, other top-level packages) that ``path`` imports."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    project, other = set(), set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            names = [f"{base}.{alias.name}" for alias in node.names] if base else []
            names = names if base.startswith("cfncluster_node") else [base]
        else:
            continue
        for name in names:
            if name == "cfncluster_node" or name.startswith("cfncluster_node."):
                project.add(_project_module(name.removeprefix("cfncluster_node").lstrip(".")))
            else:
                other.add(name.split(".")[0])
    project.discard("__future__")
    other.discard("__future__")
    return project, other


def _project_module(name: str) -> str:
    """``node.fleet.Group`` -> ``node.fleet``; ``node.fleet`` -> itself; ``__version__``
    and other package attributes -> the package."""
    known = modules()
    while name and name not in known:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name or "__init__"


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_io(module: str) -> None:
    project, other = imports_of(modules()[module])
    assert not other & IO_LIBRARIES, f"{module} imports {sorted(other & IO_LIBRARIES)}"
    impure = project - PURE - CONFIGURATION - {"__init__"}
    assert not impure, f"{module} imports modules with I/O: {sorted(impure)}"


def test_each_room_imports_only_the_rooms_beneath_it() -> None:
    wrong = []
    for module, path in modules().items():
        room = room_of(module)
        allowed = {room, "foundation"} | MAY_IMPORT[room]
        top_level, _ = imports_of(path, top_level_only=True)
        for imported in imports_of(path)[0]:
            target = room_of(imported)
            # The command line reaches the playground only for `demo`, lazily.
            lazy_playground = room == "cli" and target == "local" and imported not in top_level
            if target not in allowed and not lazy_playground:
                wrong.append(f"{module} ({room}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_the_readme_draws_the_package_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    drawn, stack = set(), []
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+?)(/|\.py)(\s|$)", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack[depth:] = [match.group(2)]
        if match.group(3) == ".py":
            drawn.add("/".join(stack) + ".py")
    actual = {
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert drawn == actual, f"only drawn: {drawn - actual}; only in the package: {actual - drawn}"


CITED = re.compile(
    r"(?<![\w/.-])((?:docs|tests|packer|systemd|examples|cfncluster_node|bench|\.ci)/[\w./-]*[\w/])"
)


def test_no_file_that_the_docs_or_the_code_cite_is_missing() -> None:
    sources = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("docs/*.md")]
    sources += [*PACKAGE.rglob("*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]
    missing = []
    for source in sources:
        text = source.read_text()
        if source == Path(__file__):
            continue
        assert "PROTOCOL.md" not in text, f"{source.name} cites PROTOCOL.md: cite docs/protocol.md"
        for cited in CITED.findall(text):
            if not (ROOT / cited).exists():
                missing.append(f"{source.relative_to(ROOT)}: {cited}")
    assert not missing, "\n".join(missing)


@pytest.mark.real
def test_the_amis_wheel_carries_no_playground_and_no_moto(tmp_path: Path) -> None:
    # Built from a copy: pip builds in the source tree, and a checkout's stale build/
    # would both hide and leave traces.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "tests"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
    )
    [wheel] = tmp_path.glob("cfncluster_node-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        requires = [
            line
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert "cfncluster_node/node/supervisor.py" in names
    assert not [name for name in names if name.startswith("cfncluster_node/local/")]
    # moto only ever comes with an extra: the demo's or the developers'.
    assert all("extra ==" in line for line in requires if "moto" in line)
