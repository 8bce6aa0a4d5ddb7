"""`bridge`: the one console script. Each subcommand parses its settings and runs one thing."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from shared.nats_connection import NatsRefused, NatsUnavailable, connect
from shared.provisioning import ProvisioningError, provision
from shared.settings import BridgeSettings, load_settings


def _provision(args: Sequence[str]) -> int:
    settings = load_settings(BridgeSettings, args)

    async def run() -> int:
        nc = await connect(settings, "bridge-provision")
        try:
            report = await provision(nc.jetstream(), settings)
        finally:
            await nc.close()
        print(f"created: {', '.join(report.created) or '-'}")
        print(f"already there (left unchanged): {', '.join(report.existing) or '-'}")
        return 0

    return asyncio.run(run())


def _replicator(args: Sequence[str]) -> int:
    from services.replicator.settings import ReplicatorSettings
    from services.replicator.supervisor import Replicator

    settings = load_settings(ReplicatorSettings, args)
    logging.getLogger().setLevel(settings.log_level.upper())
    return Replicator(settings).run()


def _snapshotter(args: Sequence[str]) -> int:
    from services.snapshotter.app import run
    from services.snapshotter.settings import SnapshotterSettings

    settings = load_settings(SnapshotterSettings, args)
    logging.getLogger().setLevel(settings.log_level.upper())
    return run(settings)


def _admin(args: Sequence[str]) -> int:
    from services.admin.app import run
    from services.admin.settings import AdminSettings

    settings = load_settings(AdminSettings, args)
    logging.getLogger().setLevel(settings.log_level.upper())
    return run(settings)


def _dev_or_run(embedded: bool) -> Callable[[Sequence[str]], int]:
    def command(args: Sequence[str]) -> int:
        from services.dev.runner import run
        from services.dev.settings import DevSettings

        settings = load_settings(DevSettings, args)
        configured = "BRIDGE_DATABASE_URL" in os.environ or any(
            a.startswith("--database-url") for a in args
        )
        return run(settings, embedded=embedded and not configured)

    return command


def _tool(name: str) -> Callable[[Sequence[str]], int]:
    def command(args: Sequence[str]) -> int:
        from services.tools import console

        result: int = getattr(console, name)(args)
        return result

    return command


def _module_command(module: str, name: str) -> Callable[[Sequence[str]], int]:
    def command(args: Sequence[str]) -> int:
        import importlib

        result: int = getattr(importlib.import_module(module), name)(args)
        return result

    return command


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "replicator": (
        _replicator,
        "stream changes of the configured tables from PostgreSQL to the CDC stream",
    ),
    "snapshotter": (
        _snapshotter,
        "publish table schemas and answer snapshot requests on the INIT stream",
    ),
    "admin": (
        _admin,
        "serve the admin HTTP API: health, status, metrics, stream management, shutdown",
    ),
    "dev": (
        _dev_or_run(embedded=True),
        "everything in one command, with embedded PostgreSQL and nats-server unless "
        "BRIDGE_DATABASE_URL is set",
    ),
    "run": (_dev_or_run(embedded=False), "the three services against the configured servers"),
    "tail": (_tool("tail"), "print CDC events as they arrive: bridge tail [table] [--from-start]"),
    "snapshot": (_tool("snapshot"), "trigger a snapshot with progress: bridge snapshot TABLE"),
    "replica": (
        _module_command("services.tools.replica", "replica"),
        "keep a live SQLite copy of tables: bridge replica TABLE… --sqlite PATH",
    ),
    "verify": (
        _module_command("services.tools.verify", "verify"),
        "compare a copy with PostgreSQL under load: bridge verify TABLE… --sqlite PATH "
        "(exit 1 on any difference)",
    ),
    "status": (_tool("status"), "the admin's status as a table: bridge status [--admin-url URL]"),
    "provision": (
        _provision,
        "create the CDC and INIT streams and the schemas KV bucket where missing",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="PostgreSQL → NATS JetStream change-data-capture bridge.",
        epilog="Run `bridge COMMAND --help` for a command's settings.",
    )
    parser.add_argument(
        "command",
        choices=sorted(COMMANDS),
        help="; ".join(f"{name}: {help_}" for name, (_, help_) in sorted(COMMANDS.items())),
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command = parser.parse_args(argv[:1]).command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run, _ = COMMANDS[command]
    try:
        return run(argv[1:])
    except ValidationError as exc:
        # Each error without its input: a URL given as input may hold a password.
        for error in exc.errors(include_input=False, include_url=False):
            message = error["msg"].removeprefix("Value error, ")
            where = ".".join(map(str, error["loc"])).removeprefix("settings")
            if where:
                print(f"bridge {command}: invalid setting {where}: {message}", file=sys.stderr)
            else:  # a check across settings: its message names them
                print(f"bridge {command}: invalid settings: {message}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"bridge {command}: invalid settings: {exc}", file=sys.stderr)
        return 2
    except (NatsUnavailable, ProvisioningError) as exc:
        print(f"bridge {command}: {exc}", file=sys.stderr)
        return 1
    except NatsRefused as exc:
        print(f"bridge {command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
