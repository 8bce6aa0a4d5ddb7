"""Every `bridge` command's help: both spellings work, under the command's own name, its own
arguments first, placeholders a person reads, every setting's environment variable named."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from services.cli import COMMANDS, main
from shared import compiled

PYTHON_TYPE_NAMES = re.compile(
    r"\b(SecretStr|Path|list\[|dict\[|str\b|int\b|float\b|null\b|NoneType)"
)


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0, argv
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("spelling", ["--help", "-h"])
def test_every_command_has_readable_help(
    capsys: pytest.CaptureFixture[str], command: str, spelling: str
) -> None:
    text = help_of(capsys, command, spelling)
    assert text.startswith(f"usage: bridge {command} "), text[:200]
    assert COMMANDS[command].summary.split()[0] in text
    usage_and_flags = "\n".join(
        line.split("  ")[0]
        for line in text.splitlines()
        if line.lstrip().startswith(("-", "usage"))
    )
    assert not PYTHON_TYPE_NAMES.search(usage_and_flags), usage_and_flags
    flags = re.findall(r"^  (--[a-z-]+)", text, re.MULTILINE)
    assert flags, text
    for flag in flags:
        # the environment variable follows each setting's help (wrapped lines joined)
        block = text.split(f"\n  {flag}", 1)[1].split("\n  -", 1)[0].split("\n\n", 1)[0]
        assert "[env: BRIDGE_" in " ".join(block.split()), flag


@pytest.mark.parametrize("command", ["tail", "snapshot", "replica", "verify", "replicator"])
def test_a_commands_own_arguments_come_before_the_shared_settings(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = help_of(capsys, command, "--help")
    own = text.index(f"\nbridge {command}:\n")
    assert own < text.index("\nPostgreSQL:\n") < text.index("\nNATS:\n")
    assert "--database-url URL" in text and "--nats-url URL" in text


def test_placeholders_say_what_a_value_is(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, "replicator", "--help")
    for shown in (
        "--database-password-file PATH",
        "--table TABLE,…",
        "--ack-timeout-seconds SECONDS",
        "--max-in-flight-bytes BYTES",
        "--row-filter JSON",
        "--value-mode {typed,text}",
        "--oversized-policy {dead-letter,stop}",
    ):
        assert shown in text, shown
    replica = help_of(capsys, "replica", "-h")
    assert replica.startswith(
        "usage: bridge replica (TABLE [TABLE …] | --all-tables) --sqlite PATH"
    )
    assert "--sqlite PATH" in replica


def test_the_overview_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^  {name} +\S", text, re.MULTILINE), name
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_version_says_which_hot_path_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(
        rf"bridge \d+\.\d+\.\d+\S* \({compiled.HOT_PATH} hot path\)\n", capsys.readouterr().out
    )


def test_bridge_pure_python_runs_the_pure_path_in_a_fresh_process() -> None:
    """The switch CI's pure-Python run of the decoder tests relies on."""
    env = {**os.environ, compiled.PURE_PYTHON_VARIABLE: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "--version"], env=env, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert done.stdout.endswith("(pure-python hot path)\n")


def test_a_missing_argument_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["verify"])
    assert exited.value.code == 2
    assert "the following arguments are required: TABLE, --sqlite" in capsys.readouterr().err


def test_tool_arguments_parse_beside_settings() -> None:
    from services.tools.arguments import ReplicaArguments, TailArguments
    from shared.command_line import parse

    tail = parse(TailArguments, ["t", "--nats-url", "nats://x:1", "--count", "3"], "tail")
    assert (tail.tail_table, tail.count, tail.nats_url, tail.from_start) == (
        "t",
        3,
        "nats://x:1",
        False,
    )
    replica = parse(
        ReplicaArguments, ["a", "b", "--sqlite", "/tmp/c.db", "--table", "x,y"], "replica"
    )
    assert replica.copy_tables == ["a", "b"] and replica.table == ["x", "y"]
    assert str(replica.sqlite) == "/tmp/c.db"
