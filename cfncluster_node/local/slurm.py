"""A private Slurm controller on this machine, for the tests, the benchmarks and the demo.

Starts munged (if none runs) and a slurmctld with its own state directory and ports
under ``root``, without systemd. Its slurm.conf is the product's
(``schedulers.slurmconf``), rendered with this machine's paths and ports: only what
stands in for a real head node (where things live, who starts the daemons) is local.
Debian's ``slurm-wlm`` and ``munge`` must be installed (``make test`` and ``make demo``
install them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from cfncluster_node.config import SlurmSettings
from cfncluster_node.local.cloud import free_port
from cfncluster_node.schedulers import slurmconf

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class SlurmUnavailable(RuntimeError):
    pass


class LocalSlurm:
    """A slurmctld under ``root``, a directory the slurm user can reach (not a 0700 tmp)."""

    def __init__(self, root: Path, *, feature: str = "compute", max_nodes: int = 5000) -> None:
        self.root = root
        self.feature = feature
        self.max_nodes = max_nodes
        self.conf = root / "slurm.conf"
        self.cluster = slurmconf.SlurmCluster(
            name="cfnlocal",
            controller=socket.gethostname().split(".")[0],
            controller_address="127.0.0.1",
            max_nodes=self.max_nodes,
            feature=self.feature,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            state_dir=f"{self.root}/state",
            # Several slurmds share this file system: each node has its own directory.
            spool_dir=f"{self.root}/nodes/{slurmconf.NODE_NAME}/spool",
            ctld_pid_file=f"{self.root}/slurmctld.pid",
            slurmd_pid_file=f"{self.root}/nodes/{slurmconf.NODE_NAME}/slurmd.pid",
            log_file=f"{self.root}/slurmctld.log",
            cgroups=False,
            # The demo's and the tests' nodes stop without a word: never mark them DOWN.
            slurmd_timeout=3600,
        )
        self._slurmds: list[subprocess.Popen[bytes]] = []

    @property
    def settings(self) -> SlurmSettings:
        return SlurmSettings(feature=self.feature, conf=self.conf, command_timeout=60)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        for program in ("slurmctld", "munged", "scontrol"):
            if shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
                raise SlurmUnavailable(f"{program} not found: apt-get install slurm-wlm munge")
        self._start_munged()
        for sub in ("state", "nodes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(slurmconf.render(self.cluster))
        slurm = pwd.getpwnam("slurm")
        for path in [self.root, *self.root.iterdir()]:
            os.chown(path, slurm.pw_uid, slurm.pw_gid)
        # -c: a clean start, no node or job state from an earlier run.
        subprocess.run(["/usr/sbin/slurmctld", "-c"], env=self._env(), check=True)
        self._wait_for("slurmctld", ["scontrol", "ping"], "UP")

    def _start_munged(self) -> None:
        if _munge_answers():
            return
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        munge = pwd.getpwnam("munge")
        for path in (MUNGE_SOCKET.parent, Path("/var/log/munge"), Path("/var/lib/munge")):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, munge.pw_uid, munge.pw_gid)
        # munged is the machine's daemon, shared by every Slurm here: it is left running.
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        deadline = time.monotonic() + 10
        while not _munge_answers():
            if time.monotonic() > deadline:
                raise SlurmUnavailable("munged did not answer within 10 s")
            time.sleep(0.05)

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _wait_for(self, what: str, argv: list[str], expected: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(argv, env=self._env(), capture_output=True, text=True)
            if expected in result.stdout:
                return
            time.sleep(0.1)
        log = self.root / "slurmctld.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise SlurmUnavailable(f"{what} did not come up within {timeout:g} s\n{tail}")

    def scontrol(self, *args: str) -> str:
        result = subprocess.run(
            ["scontrol", *args], env=self._env(), capture_output=True, text=True, check=True
        )
        return result.stdout

    def squeue(self, *args: str) -> str:
        result = subprocess.run(
            ["squeue", *args], env=self._env(), capture_output=True, text=True, check=True
        )
        return result.stdout

    def start_slurmd(self, nodename: str, cpus: int) -> None:
        """A real slurmd for one registered node, so jobs really run (-Z: dynamic node)."""
        (self.root / "nodes" / nodename / "spool").mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                "/usr/sbin/slurmd",
                "-D",
                "-Z",
                "--conf",
                f"CPUs={cpus} Features={self.feature}",
                "-N",
                nodename,
            ],
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=(self.root / f"slurmd-{nodename}.log").open("w"),
        )
        self._slurmds.append(process)
        self._wait_for(
            "slurmd", ["scontrol", "-o", "show", "node", nodename], "State=IDLE+DYNAMIC_NORM "
        )

    def stop_slurmds(self) -> None:
        # Jobs first: a job step outlives a slurmd stopped under it.
        if self._slurmds:
            self._cancel_jobs()
        for process in self._slurmds:
            process.terminate()
            process.wait(timeout=30)
        self._slurmds.clear()

    def sbatch(self, *args: str) -> str:
        """Submit a job as root; returns its id."""
        result = subprocess.run(
            # The job's output stays with this controller, not in the caller's directory.
            ["sbatch", "--parsable", f"--output={self.root}/job-%j.out", *args],
            env=self._env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().split(";")[0]

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args], env=self._env(), capture_output=True, check=True)

    def _cancel_jobs(self) -> None:
        self.scancel("--full", "-u", "root")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._jobs_left():
            time.sleep(0.1)

    def _jobs_left(self) -> bool:
        listed = subprocess.run(["squeue", "-h"], env=self._env(), capture_output=True, text=True)
        return bool(listed.stdout.strip())

    def reset(self) -> None:
        """Delete every dynamic node and job, so each test starts from an empty cluster."""
        # A dynamic slurmd left running would register its node again.
        self.stop_slurmds()
        # A node still finishing a cancelled job cannot be deleted yet.
        self._cancel_jobs()
        text = self.scontrol("-o", "-F", "show", "node")
        names = [
            line.split()[0].removeprefix("NodeName=")
            for line in text.splitlines()
            if line.startswith("NodeName=")
        ]
        if names:
            subprocess.run(
                ["scontrol", "delete", f"NodeName={','.join(names)}"],
                env=self._env(),
                capture_output=True,
            )

    def stop(self) -> None:
        self.stop_slurmds()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["scontrol", "shutdown", "slurmctld"],
                env=self._env(),
                capture_output=True,
                timeout=30,
            )
        pid_file = self.root / "slurmctld.pid"
        deadline = time.monotonic() + 15
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_file.exists():  # it did not shut down: no controller outlives its tests
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _munge_answers() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    credential = subprocess.run(["munge", "-n"], capture_output=True)
    if credential.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=credential.stdout, capture_output=True).returncode == 0


class ComputeNodes:
    """Compute nodes on this machine for the demo: each one a network namespace with its own
    address on a bridge, and a real slurmd in it.

    slurmd cannot listen on another port or address than slurm.conf's, so two on one
    network stack collide; in namespaces each listens on the standard port of its own
    address, and slurmctld reaches it at its NodeAddr as on a real cluster. They share one
    slurm.conf, the controller's reached at the bridge's address; each has its own spool.
    """

    BRIDGE = "cfnbr0"
    # The nodes' network: the demo's VPC in moto, so that each node's namespace holds the
    # address EC2 gave its instance (from the subnet) and slurmctld is the bridge's.
    NETWORK = "172.30.0.0/16"
    SUBNET = "172.30.16.0/20"
    GATEWAY = "172.30.0.1"
    _PREFIX = 16

    def __init__(self, slurm: LocalSlurm) -> None:
        self._slurm = slurm
        self._conf = slurm.root / "compute-slurm.conf"
        self._nodes: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        self._next = 0

    def open(self) -> None:
        if shutil.which("ip") is None or shutil.which("nsenter") is None:
            raise SlurmUnavailable("ip and nsenter not found: apt-get install iproute2 util-linux")
        # The controller's own slurm.conf, but reached at the bridge's address.
        controller = dataclasses.replace(self._slurm.cluster, controller_address=self.GATEWAY)
        self._conf.write_text(slurmconf.render(controller))
        self._remove_stale()
        _ip("link", "add", self.BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{self.GATEWAY}/{self._PREFIX}", "dev", self.BRIDGE)
        _ip("link", "set", self.BRIDGE, "up")

    def start(self, name: str, address: str, cpus: int) -> None:
        """Boot node ``name`` at ``address``: its namespace, then its slurmd."""
        index = self._next
        self._next += 1
        namespace, veth = f"cfn-{name}", f"cfnv{index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", veth, "master", self.BRIDGE, "up")
        inside = ("-n", namespace)
        _ip(*inside, "addr", "add", f"{address}/{self._PREFIX}", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "link", "set", "lo", "up")
        home = self._slurm.root / "nodes" / name
        (home / "spool").mkdir(parents=True, exist_ok=True)
        # nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs its cgroups.
        process = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{namespace}",
                "/usr/sbin/slurmd",
                "-D",
                "-Z",
                "-f",
                str(self._conf),
                "--conf",
                f"CPUs={cpus} Features={self._slurm.feature}",
                "-N",
                name,
            ],
            env={**os.environ, "SLURM_CONF": str(self._conf)},
            stdout=subprocess.DEVNULL,
            stderr=(home / "slurmd.log").open("w"),
        )
        self._nodes[name] = (index, process)

    def stop(self, name: str) -> None:
        """Shut node ``name`` down, booted or not: its slurmd, then its namespace (the veth
        goes with it)."""
        booted = self._nodes.pop(name, None)
        if booted is not None:
            process = booted[1]
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        subprocess.run(["ip", "netns", "del", f"cfn-{name}"], capture_output=True)

    def close(self) -> None:
        for name in list(self._nodes):
            self.stop(name)
        subprocess.run(["ip", "link", "del", self.BRIDGE], capture_output=True)

    def _remove_stale(self) -> None:
        """What a demo killed with SIGKILL left behind."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            if line.startswith("cfn-"):
                subprocess.run(["ip", "netns", "del", line.split()[0]], capture_output=True)
        subprocess.run(["ip", "link", "del", self.BRIDGE], capture_output=True)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
