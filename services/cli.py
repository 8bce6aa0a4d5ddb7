"""`bridge`: the one console script. Each subcommand parses its settings and runs one thing."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from shared import build
from shared.command_line import parse
from shared.nats_connection import NatsRefused, NatsUnavailable, connect
from shared.provisioning import ProvisioningError, provision
from shared.settings import BridgeSettings


@dataclass(frozen=True)
class Command:
    """One `bridge` command: its settings model and the function run with the parsed
    settings, both named as `module:attribute` so that `bridge --help` imports neither."""

    summary: str
    settings: str
    run: str
    usage: str | None = None

    def load(self, which: str) -> Any:
        module, _, name = getattr(self, which).partition(":")
        return getattr(importlib.import_module(module), name)


def provision_streams(settings: BridgeSettings) -> int:
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


def print_ddl_trigger_sql(settings: Any) -> int:
    """The event trigger the replicator installs when its role is a superuser, for a
    superuser to run by hand (services/replicator/ddl_capture.py)."""
    from services.replicator.ddl_capture import install_sql

    print(install_sql(settings.publication))
    return 0


def run_replicator(settings: Any) -> int:
    from services.replicator.supervisor import Replicator

    logging.getLogger().setLevel(settings.log_level.upper())
    result: int = Replicator(settings).run()
    return result


def run_service(module: str) -> Callable[[Any], int]:
    def run(settings: Any) -> int:
        logging.getLogger().setLevel(settings.log_level.upper())
        result: int = importlib.import_module(module).run(settings)
        return result

    return run


run_snapshotter = run_service("services.snapshotter.app")
run_admin = run_service("services.admin.app")


def run_stack(embedded: bool) -> Callable[[Any], int]:
    def run(settings: Any) -> int:
        from services.dev.runner import run

        # A database URL given (flag or BRIDGE_DATABASE_URL) means the operator's servers.
        configured = "database_url" in settings.model_fields_set
        result: int = run(settings, embedded=embedded and not configured)
        return result

    return run


run_dev, run_configured = run_stack(embedded=True), run_stack(embedded=False)

SETTINGS = "shared.settings:BridgeSettings"
TOOLS = "services.tools.arguments"
COMMANDS: dict[str, Command] = {
    "dev": Command(
        "the three services with an embedded PostgreSQL and nats-server (your servers "
        "when BRIDGE_DATABASE_URL is set)",
        "services.dev.settings:DevSettings",
        "services.cli:run_dev",
    ),
    "run": Command(
        "the three services, supervised, against the configured servers",
        "services.dev.settings:DevSettings",
        "services.cli:run_configured",
    ),
    "replicator": Command(
        "stream changes of the configured tables from PostgreSQL to the CDC stream",
        "services.replicator.settings:ReplicatorSettings",
        "services.cli:run_replicator",
    ),
    "snapshotter": Command(
        "publish table schemas and answer snapshot requests on the INIT stream",
        "services.snapshotter.settings:SnapshotterSettings",
        "services.cli:run_snapshotter",
    ),
    "admin": Command(
        "serve the admin HTTP API: health, status, metrics, stream management",
        "services.admin.settings:AdminSettings",
        "services.cli:run_admin",
    ),
    "provision": Command(
        "create the CDC and INIT streams and the schemas KV bucket where missing",
        SETTINGS,
        "services.cli:provision_streams",
    ),
    "ddl-trigger-sql": Command(
        "print the SQL (for a superuser) that announces schema changes at the DDL",
        SETTINGS,
        "services.cli:print_ddl_trigger_sql",
    ),
    "tail": Command(
        "print CDC events as they arrive",
        f"{TOOLS}:TailArguments",
        "services.tools.console:tail",
        "%(prog)s [TABLE] [--from-start] [--count N] [options]",
    ),
    "snapshot": Command(
        "snapshot a table onto the INIT stream, with progress",
        f"{TOOLS}:SnapshotArguments",
        "services.tools.console:snapshot",
        "%(prog)s TABLE [--chunk-size N] [options]",
    ),
    "replica": Command(
        "keep a live SQLite copy of tables (snapshot, then every change once)",
        f"{TOOLS}:ReplicaArguments",
        "services.tools.replica:replica",
        "%(prog)s (TABLE [TABLE …] | --all-tables) --sqlite PATH [options]",
    ),
    "verify": Command(
        "compare a copy with PostgreSQL under load; exit 1 on any difference",
        f"{TOOLS}:VerifyArguments",
        "services.tools.verify:verify",
        "%(prog)s TABLE [TABLE …] --sqlite PATH [options]",
    ),
    "status": Command(
        "the admin's health and status as a table",
        f"{TOOLS}:StatusArguments",
        "services.tools.console:status",
        "%(prog)s [--admin-url URL]",
    ),
}


def overview() -> str:
    """`bridge --help`: the commands as a table."""
    width = max(map(len, COMMANDS))
    rows = [
        textwrap.fill(
            command.summary,
            width=100,
            initial_indent=f"  {name:<{width}}  ",
            subsequent_indent=" " * (width + 4),
        )
        for name, command in COMMANDS.items()
    ]
    return "\n".join(
        [
            "usage: bridge COMMAND [options]",
            "",
            "PostgreSQL → NATS JetStream change-data-capture bridge.",
            "",
            "commands:",
            *rows,
            "",
            "`bridge COMMAND --help` shows a command's arguments and settings, each with its",
            "environment variable. `bridge --version` prints the version.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"bridge {build.describe()}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(overview(), file=sys.stderr)
        print(f"\nbridge: unknown command {command!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    spec = COMMANDS[command]
    try:
        settings = parse(spec.load("settings"), argv[1:], command, spec.summary, spec.usage)
        result: int = spec.load("run")(settings)
        return result
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
