"""A private Grid Engine qmaster on this machine, for the tests.

Everything lives under ``root``: an SGE_ROOT with one cell and its spool, and a hosts
file. The qmaster runs in namespaces of its own, entered by every command through
``nsenter`` (``settings.wrapper``):
- mount: the hosts file is bind-mounted over /etc/hosts there only, so compute hostnames
  resolve (``ip-10-A-B-C`` to ``10.A.B.C``, A and B up to 3) while the machine's own
  /etc/hosts stays untouched;
- network: SGE's standard ports clash with nothing, and an address nobody answers for
  fails at once instead of waiting for DNS;
- UTS: a hostname of its own, which resolves to the address its clients connect from
  (a qmaster refuses a client whose address resolves to another name than it claims);
- PID: killing the namespace's init ends the qmaster, the execds and their jobs at once.

``start_execd`` runs a compute host for real: an execd in network, UTS and PID
namespaces of its own, joined to the qmaster's network by a veth pair, so the qmaster
sees it at its address under its name, as on a cluster. Killing it is an instance
vanishing.

Debian's gridengine-master, gridengine-client and gridengine-exec must be installed
(their postinst needs a debconf preseed; see ``SgeUnavailable``'s hint).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cfncluster_node.config import SgeSettings
from cfncluster_node.schedulers import sgeconf
from cfncluster_node.schedulers.sge import Sge, parse_queue_xml

SGE_LIB = Path("/usr/lib/gridengine")
SGE_SHARE = Path("/usr/share/gridengine")
# Debian's SGE_ROOT: the architecture directories every SGE_ROOT must hold.
DEBIAN_ROOT = Path("/var/lib/gridengine")
ADMIN_USER = sgeconf.ADMIN_USER
CELL = "default"
INSTALL_HINT = (
    "apt-get install gridengine-master gridengine-client gridengine-exec "
    "(preseed shared/gridenginemaster, shared/gridenginecell and shared/gridengineconfig "
    "with debconf-set-selections first)"
)

# Debian's global configuration (spooldefaults), changed where the tests need it.
GLOBAL_CONFIG = {
    # Jobs are submitted by root.
    "min_uid": "0",
    "min_gid": "0",
    "execd_spool_dir": "{root}/spool/execd",
}
# A scheduling run every second: a job starts a second after its host comes.
SCHEDULE_INTERVAL = "0:0:1"

_SUBMITTED = re.compile(r"Your job(?:-array)? (\d+)")
_COMPUTE = re.compile(r"ip-10-([0-3])-([0-3])-(\d{1,3})")


class SgeUnavailable(RuntimeError):
    pass


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or self.stdout or '').strip()[:1000]}"


@dataclass
class _Node:
    #: nsenter, in the machine's namespaces; the node's init is its grandchild.
    holder: subprocess.Popen[bytes]
    init: int


class LocalSge:
    """A qmaster under ``root``, a directory the sgeadmin user can reach (not a 0700 tmp)."""

    MASTER = "cfn-qmaster"
    MASTER_ADDRESS = "172.31.0.1"
    QUEUE = "all.q"
    HOST_GROUP = "@allhosts"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts_file = root / "hosts"
        self._namespace: subprocess.Popen[bytes] | None = None
        self._init = 0
        self._nodes: dict[str, _Node] = {}
        self._veths = 0

    @staticmethod
    def address(hostname: str) -> str:
        """The address a compute hostname resolves to in the qmaster's namespace."""
        match = _COMPUTE.fullmatch(hostname)
        if match is None or int(match[3]) > 255:
            raise ValueError(f"{hostname!r} does not resolve here: ip-10-[0-3]-[0-3]-[0-255]")
        return "10.{}.{}.{}".format(*match.groups())

    @property
    def wrapper(self) -> list[str]:
        return ["nsenter", "-t", str(self._init), "-m", "-n", "-u", f"--wd={self.root}"]

    @property
    def settings(self) -> SgeSettings:
        return SgeSettings(
            root=self.root,
            cell=CELL,
            queue=self.QUEUE,
            host_group=self.HOST_GROUP,
            # The binaries themselves: Debian's /usr/bin wrappers spend some 70 ms of
            # shell on every call finding the architecture.
            bin_dir=SGE_LIB,
            wrapper=self.wrapper,
            command_timeout=60,
        )

    @property
    def env(self) -> dict[str, str]:
        return {"SGE_ROOT": str(self.root), "SGE_CELL": CELL}

    def start(self) -> None:
        for program in ("unshare", "nsenter", "ip", "runuser"):
            if shutil.which(program) is None:
                raise SgeUnavailable(f"{program} not found: apt-get install util-linux iproute2")
        if not (SGE_LIB / "sge_qmaster").exists() or not DEBIAN_ROOT.is_dir():
            raise SgeUnavailable(f"Grid Engine not installed: {INSTALL_HINT}")
        self._lay_out()
        self._init_spool()
        self._enter_namespaces()
        self._run("/usr/sbin/sge_qmaster", pid=True)
        self._wait_for("qmaster", lambda: self._try(str(SGE_LIB / "qconf"), "-sh"))
        self._configure()

    def _lay_out(self) -> None:
        common = self.root / CELL / "common"
        common.mkdir(parents=True, exist_ok=True)
        for sub in ("spool/qmaster/job_scripts", "spool/spooldb", "spool/execd", "conf"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name in ("bin", "lib", "utilbin", "util"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(DEBIAN_ROOT / name)
        (common / "bootstrap").write_text(sgeconf.bootstrap(self.root / "spool", ADMIN_USER))
        (common / "act_qmaster").write_text(f"{self.MASTER}\n")
        computes = [
            f"10.{a}.{b}.{c} ip-10-{a}-{b}-{c}"
            for a in range(4)
            for b in range(4)
            for c in range(256)
        ]
        self.hosts_file.write_text(
            "\n".join(["127.0.0.1 localhost", f"{self.MASTER_ADDRESS} {self.MASTER}", *computes])
            + "\n"
        )
        admin = pwd.getpwnam(ADMIN_USER)
        for directory, subdirectories, files in os.walk(self.root):
            os.chown(directory, admin.pw_uid, admin.pw_gid)
            for name in subdirectories + files:
                os.chown(Path(directory, name), admin.pw_uid, admin.pw_gid, follow_symlinks=False)

    def _init_spool(self) -> None:
        """What Debian's init_cluster does for its cell, for this one."""
        conf = self.root / "conf" / "global"
        conf.write_text(
            sgeconf.edit(
                (SGE_SHARE / "default-configuration").read_text(),
                {key: value.format(root=self.root) for key, value in GLOBAL_CONFIG.items()},
            )
        )
        resources = SGE_SHARE / "util" / "resources"
        for argv in (
            ["spoolinit", "berkeleydb", "libspoolb", str(self.root / "spool/spooldb"), "init"],
            ["spooldefaults", "configuration", str(conf)],
            ["spooldefaults", "complexes", str(resources / "centry")],
            ["spooldefaults", "usersets", str(resources / "usersets")],
            # The qmaster's scheduler thread runs as the admin user.
            ["spooldefaults", "managers", ADMIN_USER],
        ):
            subprocess.run(
                ["runuser", "-u", ADMIN_USER, "--", str(SGE_LIB / argv[0]), *argv[1:]],
                env={**os.environ, **self.env},
                check=True,
                capture_output=True,
            )

    def _enter_namespaces(self) -> None:
        # --kill-child: should unshare be killed, the init goes too, and with it all
        # in the namespace. The init is a bash that reaps the orphans it adopts: the
        # daemons detach from whoever started them.
        with (self.root / "namespace.log").open("w") as log:
            self._namespace = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--net",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--propagation",
                    "private",
                    "bash",
                    "-c",
                    "sleep infinity & wait",
                ],
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        self._init = _child(self._namespace.pid)
        self._run("mount", "--bind", str(self.hosts_file), "/etc/hosts")
        self._run("hostname", self.MASTER)
        self._run("ip", "link", "set", "lo", "up")
        self._run("ip", "address", "add", f"{self.MASTER_ADDRESS}/32", "dev", "lo")

    def _configure(self) -> None:
        """The cell's objects, by the product's own code (the head node's bootstrap)."""
        (self.root / "conf" / "hostgroup").write_text(sgeconf.host_group(self.HOST_GROUP))
        sge = Sge(self.settings)
        asyncio.run(sge.configure_cell(self.MASTER, schedule_interval=SCHEDULE_INTERVAL))

    def add_parallel_environment(self, name: str, rule: str) -> None:
        """A parallel environment the queue offers, with its allocation rule
        ($pe_slots, $fill_up, $round_robin or a number of slots per host)."""
        path = self.root / "conf" / f"pe-{name}"
        path.write_text(sgeconf.parallel_environment(name, rule))
        self.qconf("-Ap", str(path))
        self.qconf("-aattr", "queue", "pe_list", name, self.QUEUE)

    def _run(self, *argv: str, pid: bool = False, into: int = 0, check: bool = True) -> str:
        """``argv`` in the qmaster's namespaces (or node ``into``'s); its output.

        pid: in the PID namespace too, for a daemon that must die with it."""
        result = self._exec(*argv, pid=pid, into=into)
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
        return result.stdout

    def _exec(
        self, *argv: str, pid: bool = False, into: int = 0
    ) -> subprocess.CompletedProcess[str]:
        namespaces = ["-m", "-n", "-u", *(["-p"] if pid else [])]
        return subprocess.run(
            ["nsenter", "-t", str(into or self._init), *namespaces, f"--wd={self.root}", *argv],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
        )

    def _try(self, *argv: str) -> bool:
        try:
            self._run(*argv)
        except CommandFailed:
            return False
        return True

    def _wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                messages = self.root / "spool" / "qmaster" / "messages"
                tail = messages.read_text()[-2000:] if messages.exists() else ""
                raise SgeUnavailable(f"{what} did not come up within {timeout:g} s\n{tail}")
            time.sleep(0.1)

    def qconf(self, *args: str) -> str:
        return self._run(str(SGE_LIB / "qconf"), *args)

    def qstat(self, *args: str) -> str:
        return self._run(str(SGE_LIB / "qstat"), *args)

    def qsub(self, *args: str) -> str:
        """Submit a job as root (``-b y`` for a command line); returns its number."""
        argv = [str(SGE_LIB / "qsub"), "-terse", "-o", "/dev/null", "-j", "y", *args]
        result = self._exec(*argv)
        # A parallel job no queue instance offers its environment to yet is submitted,
        # but qsub exits 1 and says so in words, -terse or not.
        submitted = _SUBMITTED.search(result.stdout + result.stderr)
        if result.returncode == 0:
            return result.stdout.strip().split(".")[0]
        if submitted is None:
            raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
        return submitted[1]

    def state(self, hostname: str) -> str:
        """The state flags of ``hostname``'s queue instance ("" when all is well)."""
        text = self.qstat("-f", "-q", f"{self.QUEUE}@{hostname}", "-xml")
        [instance] = parse_queue_xml(text, self.QUEUE)
        return instance.flags

    def start_execd(self, hostname: str) -> None:
        """An execd for ``hostname``, registered with the qmaster and ready for jobs.

        The host must have been added (an admin host in the queue's host group)."""
        address = self.address(hostname)
        with (self.root / f"node-{hostname}.log").open("w") as log:
            holder = subprocess.Popen(
                [
                    "nsenter",
                    "-t",
                    str(self._init),
                    "-m",
                    "-p",
                    "unshare",
                    "--net",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "bash",
                    "-c",
                    "sleep infinity & wait",
                ],
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        node = _Node(holder, _child(_child(holder.pid)))
        self._nodes[hostname] = node
        self._veths += 1
        veth = f"vsge{self._veths}"
        subprocess.run(
            # One end in the qmaster's namespace, the other as the node's eth0.
            [
                *("ip", "link", "add", veth, "netns", str(self._init), "type", "veth"),
                *("peer", "name", "eth0", "netns", str(node.init)),
            ],
            check=True,
            capture_output=True,
        )
        self._run("ip", "link", "set", veth, "up")
        self._run("ip", "route", "add", f"{address}/32", "dev", veth)
        for argv in (
            ["hostname", hostname],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "address", "add", f"{address}/32", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "route", "add", f"{self.MASTER_ADDRESS}/32", "dev", "eth0"],
            ["/usr/sbin/sge_execd"],
        ):
            self._run(*argv, pid=True, into=node.init)
        self._wait_for(f"execd on {hostname}", lambda: "u" not in self.state(hostname))

    def stop_execd(self, hostname: str) -> None:
        """The instance vanishes: its execd and jobs are killed, nobody tells the qmaster."""
        node = self._nodes.pop(hostname)
        _end(node.init, node.holder)

    def stop_execds(self) -> None:
        for hostname in list(self._nodes):
            self.stop_execd(hostname)

    def reset(self) -> None:
        """No job, no compute host: each test starts from an empty cluster."""
        if "job_list" in self.qstat("-u", "*", "-xml"):
            # 8.1.9's qmaster can crash (NULL JB_type) on a forced qdel of a job whose
            # execd is gone; rescheduling it is safe, and a pending job sends no signal.
            # Disabled first, so that nothing starts again meanwhile. Without queue
            # instances both fail, and there is nothing to do.
            qmod = str(SGE_LIB / "qmod")
            self._run(qmod, "-d", self.QUEUE, check=False)
            self._run(qmod, "-f", "-rq", self.QUEUE, check=False)
            self.qdel("-f", "-u", "*")
        self.stop_execds()
        self.qconf("-Mhgrp", str(self.root / "conf" / "hostgroup"))
        for show, delete in (("-sel", "-de"), ("-ss", "-ds"), ("-sh", "-dh")):
            # An empty list is an error (exit 1, "no execution host defined").
            listed = self._run(str(SGE_LIB / "qconf"), show, check=False).split()
            names = [name for name in listed if name != self.MASTER]
            if names:
                self.qconf(delete, ",".join(names))

    def qdel(self, *args: str) -> None:
        self._run(str(SGE_LIB / "qdel"), *args)

    def stop(self) -> None:
        self.stop_execds()
        if self._namespace is not None:
            _end(self._init, self._namespace)
            self._namespace = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end(init: int, holder: subprocess.Popen[bytes]) -> None:
    """Kill a PID namespace's init, and so all in it; its holder exits then.

    Not SIGTERM to unshare: it passes the signal on to the init, which ignores it (a
    namespace's init gets only the signals it handles)."""
    if init:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)
    else:
        holder.kill()
    holder.wait(timeout=15)


def _child(pid: int, timeout: float = 10) -> int:
    """The first child of process ``pid``, once it has one."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            found = children.read_text().split()
            if found:
                return int(found[0])
        time.sleep(0.01)
    raise SgeUnavailable(f"process {pid} started nothing within {timeout:g} s")
