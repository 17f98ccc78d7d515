"""``cfncluster-node``: the head node's supervisor and services, and the compute side."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from cfncluster_node import __version__, config, imds, logs, protocol
from cfncluster_node.aws import NODE_SERVICES, Aws, AwsError, preload
from cfncluster_node.config import AwsSettings, Config, ConfigError, ServiceName
from cfncluster_node.node import (
    announce,
    compute,
    drift,
    nodeconfig,
    readiness,
    reconciler,
    services,
    status,
    supervisor,
)
from cfncluster_node.node.bootstrap import BootstrapError
from cfncluster_node.node.service import Service
from cfncluster_node.schedulers import SchedulerError
from cfncluster_node.stack import clusterconfig, launcher, policy, template
from cfncluster_node.storage import StorageError, setup
from cfncluster_node.storage.plan import Step

EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
# The stack's node.toml changed what only a new process applies: systemd starts one.
EXIT_RESTART = 75


class DemoUnavailable(Exception):
    """The demo cannot run on this installation; the message says what to install."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"cfncluster-node: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except (
        AwsError,
        SchedulerError,
        StorageError,
        announce.AnnounceError,
        imds.MetadataError,
        BootstrapError,
        DemoUnavailable,
    ) as exc:
        print(f"cfncluster-node: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfncluster-node", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            help=f"TOML file (default: ${config.ENV_VAR}, else {config.DEFAULT_PATH})",
        )
        return sub

    run = with_config("run", "run the configured services under the supervisor")
    run.set_defaults(handler=_run)

    for service, help_text, burst_help in (
        ("sqswatcher", "run the SQS watcher alone", "exit once the queue is empty"),
        ("publisher", "run the pending-job publisher alone", "publish once and exit"),
        ("reconciler", "run the reconciler alone", "reconcile once and exit"),
        ("scalein", "run idle scale-in alone", "one pass, then exit"),
    ):
        alone = with_config(service, help_text)
        alone.add_argument("--burst", action="store_true", help=burst_help)
        alone.set_defaults(handler=_one_service, service=service)

    storage = with_config("storage", "set up the head node's volumes (formats only blank ones)")
    storage.add_argument("action", choices=["setup"])
    storage.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    storage.add_argument(
        "--destroy",
        action="store_true",
        help="format a device even if it holds data (a filesystem, partitions, RAID)",
    )
    storage.set_defaults(handler=_storage)

    status = with_config("status", "the compute fleet as EC2, the table and the scheduler see it")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.set_defaults(handler=_status)

    check = with_config("check-config", "validate the configuration and print it")
    check.set_defaults(handler=_check_config)

    _launch_parser(commands)

    demo = commands.add_parser(
        "demo", help="run the watcher on a local moto server, a private Slurm and a simulated fleet"
    )
    demo.add_argument("--quick", action="store_true", help="a small fleet (CI)")
    demo.set_defaults(handler=_demo)

    node = commands.add_parser(
        "compute", help="(compute node) configure this node and join, or leave the cluster"
    )
    node.add_argument("action", choices=["up", "leave"])
    node.add_argument(
        "--config",
        type=Path,
        default=config.COMPUTE_PATH,
        help=f"the node's TOML file (default: {config.COMPUTE_PATH})",
    )
    node.set_defaults(handler=_compute)

    ann = commands.add_parser(
        "announce", help="(compute node) tell the head node this node joins or leaves"
    )
    ann.add_argument("what", choices=["ready", "leave"])
    ann.add_argument(
        "--queue-url",
        default=os.environ.get("CFNCLUSTER_QUEUE_URL"),
        help="the cluster queue (default: $CFNCLUSTER_QUEUE_URL)",
    )
    ann.add_argument("--region", default=os.environ.get("AWS_REGION"))
    ann.add_argument("--instance-id")
    ann.add_argument("--hostname")
    ann.add_argument("--instance-type")
    ann.add_argument("--address")
    ann.add_argument("--slots", type=int)
    ann.set_defaults(handler=_announce)
    return parser


def _launch_parser(commands: Any) -> None:
    launch = commands.add_parser(
        "launch", help="create, watch, update and delete a cluster's stack (operator side)"
    )
    actions = launch.add_subparsers(required=True, metavar="ACTION")
    region_help = "the stack's region (default: $AWS_REGION, else $AWS_DEFAULT_REGION)"

    create = actions.add_parser("create", help="create the stack and wait until it works")
    create.add_argument("name")
    create.add_argument("--config", type=Path, required=True, help="the cluster's TOML file")
    create.add_argument(
        "--no-rollback", action="store_true", help="keep a failed stack's resources to debug"
    )
    create.set_defaults(handler=_launch, action="create")

    update = actions.add_parser("update", help="apply a changed config to the stack")
    update.add_argument("name")
    update.add_argument("--config", type=Path, required=True, help="the cluster's TOML file")
    update.set_defaults(handler=_launch, action="update")

    for action, help_text in (
        ("status", "the stack's status, outputs and failures"),
        ("delete", "delete the stack (a stack already gone is success)"),
    ):
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument("name")
        sub.add_argument("--region", help=region_help)
        sub.set_defaults(handler=_launch, action=action)
        if action == "status":
            sub.add_argument("--watch", action="store_true", help="follow it until it settles")

    shown = actions.add_parser(
        "template", help="print the stack's template, roles and all, without calling AWS"
    )
    shown.add_argument("name")
    shown.add_argument("--config", type=Path, required=True, help="the cluster's TOML file")
    shown.set_defaults(handler=_launch_offline, action="template")

    needs = actions.add_parser(
        "policy", help="print the IAM policy an operator needs to launch this cluster"
    )
    needs.add_argument("name")
    needs.add_argument("--config", type=Path, required=True, help="the cluster's TOML file")
    needs.add_argument("--account", help="the account's id (default: the caller's, from STS)")
    needs.set_defaults(handler=_launch_offline, action="policy")

    every = actions.add_parser("list", help="the clusters this tool created in a region")
    every.add_argument("--region", help=region_help)
    every.set_defaults(handler=_launch, action="list")


def _launch(args: argparse.Namespace) -> int:
    # Event lines are long and grepped: never broken at the terminal's width.
    console = Console(soft_wrap=True)
    logs.configure("warning", "console", stream=sys.stderr)
    cluster = clusterconfig.load(args.config) if getattr(args, "config", None) else None
    region = cluster.cluster.region if cluster else _operator_region(args.region)
    watching = False

    async def main() -> int:
        nonlocal watching
        async with Aws(AwsSettings(), region) as aws:
            stacks = launcher.Launcher(aws, region, console)
            view: launcher.StackView | None
            match args.action:
                case "list":
                    console.print(launcher.listing(await stacks.clusters()))
                    return 0
                case "create":
                    assert cluster is not None
                    watching = True
                    view = await stacks.create(args.name, cluster, rollback=not args.no_rollback)
                case "update":
                    assert cluster is not None
                    watching = True
                    view = await stacks.update(args.name, cluster)
                case "delete":
                    watching = True
                    view = await stacks.delete(args.name)
                    if view is None:
                        return 0
                case _:
                    view = await stacks.describe(launcher.check_name(args.name))
                    if view is None:
                        console.print(f"{args.name}: no such stack in {region}")
                        return EXIT_FAILED
                    if args.watch and not view.settled:
                        watching = True
                        view = await stacks.watch(view.stack_id, seen=set())
            launcher.report(console, view)
            return 0 if view.ok or (args.action == "status" and view.settled) else EXIT_FAILED

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        if not watching:
            raise
        console.print(
            f"\nstopped watching; the stack goes on as it was. Resume with: "
            f"cfncluster-node launch status {args.name} --region {region} --watch"
        )
        return EXIT_INTERRUPTED


def _launch_offline(args: argparse.Namespace) -> int:
    """What an operator reviews before a cluster exists: its template, or the policy that
    launching it needs. The template calls nothing; the policy asks STS whose account
    this is unless told."""
    name = launcher.check_name(args.name)
    cluster = clusterconfig.load(args.config)
    if args.action == "template":
        print(template.to_json(template.render(cluster)))
        return 0
    account = args.account
    if account is None:

        async def caller() -> str:
            async with Aws(AwsSettings(), cluster.cluster.region) as aws:
                return await launcher.caller_account(aws)

        account = asyncio.run(caller())
    document = policy.document(policy.operator_statements(cluster))
    print(
        json.dumps(
            policy.resolved(document, stack=name, region=cluster.cluster.region, account=account),
            indent=2,
        )
    )
    return 0


def _operator_region(explicit: str | None) -> str:
    region = explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ConfigError("launch: no region; pass --region or set AWS_REGION")
    return region


def _configured(args: argparse.Namespace) -> Config:
    settings = config.load(args.config)
    logs.configure(settings.logging.level, settings.logging.format)
    return settings


def _serve(
    settings: Config,
    names: Sequence[ServiceName],
    *,
    burst: bool,
    head_node: bool = False,
    follow: tuple[str, Path] | None = None,
) -> int:
    """Run the services; ``follow``: the stack's node.toml (its SSM parameter) and the
    file it is written to, whose changes restart what they touch."""
    restart = False

    async def main(stop: asyncio.Event) -> None:
        nonlocal restart
        async with Aws(settings.aws, settings.cluster.region) as aws:
            registry = services.build_registry(settings, aws)
            if head_node:
                await readiness.bring_up(settings, aws, registry)
            running = [services.build(name, settings, aws, registry, burst=burst) for name in names]
            replacements: asyncio.Queue[Service] = asyncio.Queue()

            async def apply(new: Config, change: config.Change) -> None:
                nonlocal restart
                if change.daemon:
                    restart = True
                    stop.set()
                    return
                for name in names:
                    if name in change.services:
                        replacements.put_nowait(services.build(name, new, aws, registry))

            if follow is not None:
                parameter, path = follow
                interval = settings.supervisor.config_poll
                running.append(
                    nodeconfig.ConfigWatch(aws, settings.cluster, parameter, path, interval, apply)
                )
            await supervisor.supervise(running, stop, settings.supervisor, replacements)

    preload(NODE_SERVICES)
    supervisor.run_until_stopped(main)
    if restart:
        logs.get().warning("daemon_restarting_for_config", exit_code=EXIT_RESTART)
    return EXIT_RESTART if restart else 0


def _run(args: argparse.Namespace) -> int:
    parameter = os.environ.get(protocol.CONFIG_PARAMETER_ENV)
    path = config.resolve_path(args.config)
    if parameter:
        # The stack's node.toml, as it is now: written before anything reads it.
        asyncio.run(_install_config(parameter, path))
    settings = _configured(args)
    follow = (parameter, path) if parameter else None
    return _serve(
        settings, settings.supervisor.services, burst=False, head_node=True, follow=follow
    )


async def _install_config(parameter: str, path: Path) -> None:
    region = os.environ.get("AWS_REGION")
    if not region:
        raise ConfigError(f"run: ${protocol.CONFIG_PARAMETER_ENV} is set, $AWS_REGION is not")
    async with Aws(AwsSettings(), region) as aws:
        await nodeconfig.install(aws, parameter, path)


def _one_service(args: argparse.Namespace) -> int:
    return _serve(_configured(args), [args.service], burst=args.burst)


def _storage(args: argparse.Namespace) -> int:
    settings = _configured(args)

    async def main() -> list[Step]:
        async with Aws(settings.aws, settings.cluster.region) as aws:
            return await setup.set_up_all(
                settings.storage, aws=aws, destroy=args.destroy, dry_run=args.dry_run
            )

    steps = asyncio.run(main())
    for step in steps:
        print(step)
    if not steps:
        print("storage: nothing to do")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    logs.configure("warning", settings.logging.format, stream=sys.stderr)

    async def main() -> list[status.FleetRow]:
        async with Aws(settings.aws, settings.cluster.region) as aws:
            registry = services.build_registry(settings, aws)
            seen = await reconciler.observe(aws, registry, settings.cluster.compute_group)
        now = datetime.now(UTC)
        join_timeout = timedelta(seconds=settings.reconciler.join_timeout)
        return status.fleet_rows(
            seen, drift.diagnose(seen, now=now, join_timeout=join_timeout), now
        )

    rows = asyncio.run(main())
    health = status.read_health(settings.supervisor.health_file)
    if args.json:
        print(status.as_json(rows, health))
    else:
        console = Console()
        console.print(status.services_table(health, datetime.now(UTC)))
        console.print(status.as_table(rows))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    print(config.printable(settings))
    return 0


def _demo(args: argparse.Namespace) -> int:
    # The playground ships in a checkout, never in the AMI's wheel; moto is an extra.
    try:
        from cfncluster_node.local import demo
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("cfncluster_node.local"):
            raise
        raise DemoUnavailable(
            "demo: the local playground is not installed here (the AMIs ship without it); "
            "run `make demo` from a checkout of cfncluster-node"
        ) from None
    if importlib.util.find_spec("moto") is None:
        raise DemoUnavailable(
            "demo: moto, which plays AWS, is missing; install it with "
            "`pip install 'cfncluster-node[demo]'` (`make demo` does)"
        )
    return demo.main(quick=args.quick)


def _compute(args: argparse.Namespace) -> int:
    settings = config.parse(
        config.read(args.config), source=str(args.config), model=config.ComputeConfig
    )
    logs.configure(settings.logging.level, settings.logging.format)
    node = settings.compute

    async def main() -> None:
        async with Aws(settings.aws, node.region) as aws:
            if args.action == "up":
                await compute.come_up(settings, aws)
            else:
                identity = await announce.identify()
                await announce.send(aws, node.queue_url, protocol.LEAVE_EVENT, identity)

    asyncio.run(main())
    return 0


def _announce(args: argparse.Namespace) -> int:
    logs.configure()
    if not args.queue_url:
        raise ConfigError("announce: no queue; pass --queue-url or set CFNCLUSTER_QUEUE_URL")
    region = args.region or _region_of(args.queue_url)

    async def main() -> None:
        identity = await announce.identify(
            instance_id=args.instance_id,
            hostname=args.hostname,
            instance_type=args.instance_type,
            address=args.address,
            slots=args.slots,
        )
        event = protocol.READY_EVENT if args.what == "ready" else protocol.LEAVE_EVENT
        async with Aws(AwsSettings(), region) as aws:
            await announce.send(aws, args.queue_url, event, identity)

    asyncio.run(main())
    return 0


def _region_of(queue_url: str) -> str:
    # https://sqs.us-east-1.amazonaws.com/123456789012/name
    host = queue_url.split("/")[2]
    parts = host.split(".")
    if len(parts) >= 3 and parts[0] == "sqs":
        return parts[1]
    raise ConfigError(f"announce: cannot tell the region from {queue_url}; pass --region")
