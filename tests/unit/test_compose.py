"""The deployment files' shape, checked without a Docker engine (tests/e2e/test_compose.py
runs them for real where one answers)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.admin.settings import AdminSettings
from services.cli import COMMANDS
from services.dev.settings import DevSettings
from services.replicator.settings import ReplicatorSettings
from services.snapshotter.settings import SnapshotterSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    f"BRIDGE_{name.upper()}"
    for model in (ReplicatorSettings, SnapshotterSettings, AdminSettings, DevSettings)
    for name in model.model_fields
}


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_parses_and_has_the_stack() -> None:
    services = compose()["services"]
    assert {"postgres", "nats", "provision", "replicator", "snapshotter", "admin"} <= set(services)
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["postgres"]["image"].startswith("postgres:18")
    assert "-js" in services["nats"]["command"]
    assert services["admin"]["ports"] == ["${ADMIN_HOST_PORT:-8080}:8080"]
    for name in ("postgres", "nats"):
        assert services[name]["healthcheck"]["test"]
    for name in ("provision", "replicator", "snapshotter", "admin"):
        assert services[name]["env_file"][0]["path"] == ".env", f"{name} must read .env"
    for name in ("replicator", "snapshotter", "admin"):
        assert services[name]["restart"] == "unless-stopped"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_bridge_variable_is_a_real_setting() -> None:
    names = {
        name
        for file in ("compose.yaml", "compose.cluster.yaml")
        for name in re.findall(r"\b(BRIDGE_[A-Z_]+)\b", (ROOT / file).read_text())
    }
    names |= {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.startswith("BRIDGE_")
    }
    assert names, "no BRIDGE_ variables found"
    assert names <= SETTINGS, f"not settings: {sorted(names - SETTINGS)}"


def test_commands_are_real_subcommands_and_dockerfiles_exist() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command")
        if command and command[0] == "bridge":
            assert command[1] in COMMANDS, (name, command)
        build = service.get("build")
        if build:
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile", "one image for all"
            dockerfile = ROOT / build["context"] / "Dockerfile"
            text = dockerfile.read_text()
            assert re.search(r"^FROM python:3\.\d+-slim", text, re.M), dockerfile
            assert re.search(r"^USER (?!root)\S+", text, re.M), f"{dockerfile} runs as root"
            assert text.index("COPY pyproject.toml") < text.index("COPY services"), (
                "dependencies must be installed in their own layer before the code is copied"
            )
            cmd = re.search(r'^CMD \["bridge", "(\w+)"\]', text, re.M)
            assert cmd and cmd.group(1) in COMMANDS, dockerfile


def test_env_example_table_matches_the_demo_init() -> None:
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    table = re.search(r"^BRIDGE_TABLE=(\w+)", (ROOT / ".env.example").read_text(), re.M)
    assert table and f"CREATE TABLE IF NOT EXISTS {table.group(1)} " in init


def test_the_cluster_file_gives_every_bridge_service_all_three_servers_and_r3() -> None:
    cluster = yaml.safe_load((ROOT / "compose.cluster.yaml").read_text())["services"]
    base = compose()["services"]
    for node in ("nats", "nats-2", "nats-3"):
        command = " ".join(cluster[node]["command"])
        assert "--cluster_name bridge" in command and "-js" in command, node
        assert all(f"nats-route://{n}:6222" in command for n in ("nats", "nats-2", "nats-3"))
    for name in ("provision", "replicator", "snapshotter", "admin"):
        assert name in base
        env = cluster[name]["environment"]
        assert env["BRIDGE_NATS_URL"].count("nats://") == 3, name
        assert env["BRIDGE_STREAM_REPLICAS"] == "3", name
        assert set(cluster[name]["depends_on"]) == {"nats", "nats-2", "nats-3"}, name
