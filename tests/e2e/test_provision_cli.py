"""`bridge provision` as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.processes import free_port

BRIDGE = [str(Path(sys.executable).parent / "bridge")]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_provision_creates_then_leaves_alone(nats_url: str) -> None:
    first = run("provision", "--nats-url", nats_url, "--stream", "CDC,INIT")
    assert first.returncode == 0, first.stderr
    assert "created: CDC, INIT, KV_schemas" in first.stdout
    second = run("provision", "--nats-url", nats_url)
    assert second.returncode == 0
    assert "created: -" in second.stdout and "CDC, INIT, KV_schemas" in second.stdout


def test_provision_refuses_a_duplicate_window_longer_than_max_age(nats_url: str) -> None:
    result = run("provision", "--nats-url", nats_url, "--duplicate-window-seconds", "120")
    assert result.returncode == 2
    assert "longer than the CDC stream's max age" in result.stderr


def test_provision_without_nats_says_what_to_check() -> None:
    result = run("provision", "--nats-url", f"nats://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "check BRIDGE_NATS_URL" in result.stderr


def test_help_lists_only_working_commands() -> None:
    result = run("--help")
    assert result.returncode == 0 and "provision" in result.stdout
