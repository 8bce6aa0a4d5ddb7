"""The admin API in front of a running bridge: real services, real servers."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from shared import compiled
from tests.harness.postgres import Database
from tests.harness.services import Service, stream_count, wait_for
from tests.harness.stacks import PASSWORD, TOKEN, api
from tests.harness.stacks import start_admin_stack as start_stack


def test_read_endpoints(pg: Database, nats_url: str, services: Callable[..., Service]) -> None:
    _, _, front = start_stack(pg, nats_url, services)
    pg.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g")
    wait_for(lambda: stream_count(nats_url) >= 10, 30, "10 events")
    with api(front) as http:
        health = http.get("/health")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "checks": dict.fromkeys(["postgres", "nats", "replicator", "snapshotter"], "ok"),
        }
        status = wait_for(
            lambda: (r := http.get("/status").json())["cdc_events_published"] >= 10 and r,
            10,
            "status to show the events",
        )
        for field in (
            "status",
            "uptime_seconds",
            "wal_messages_received",
            "cdc_events_published",
            "current_lsn",
            "is_connected",
            "reconnect_count",
            "last_processing_time_us",
            "slot_active",
            "wal_lag_bytes",
            "wal_lag_mb",
        ):
            assert field in status, field
        assert status["status"] == "ok" and status["is_connected"] is True
        assert "/" in status["current_lsn"] and status["current_lsn"] != "0/0"
        assert status["snapshotter"]["up"] is True
        # Which hot path each service runs (bridge_build_info): the install's.
        assert status["replicator"]["hot_path"] == compiled.HOT_PATH
        assert status["snapshotter"]["hot_path"] == compiled.HOT_PATH
        assert status["streams"]["CDC"]["messages"] >= 10
        info = http.get("/streams/info", params={"stream": "CDC"})
        assert info.status_code == 200 and info.json()["config"]["subjects"] == ["cdc.>"]
        assert http.get("/streams/info", params={"stream": "NOPE"}).status_code == 404
        bad = http.get("/streams/info", params={"stream": "bad name."})
        assert bad.status_code == 400 and "stream" in bad.json()["error"]
        assert http.get("/openapi.json").json()["info"]["title"] == "pg-nats-bridge admin"
        asyncapi = http.get("/asyncapi.json").json()
        assert asyncapi["asyncapi"] == "3.0.0" and "change" in asyncapi["channels"]
        everything = health.text + http.get("/status").text
        assert PASSWORD not in everything and TOKEN not in everything


def test_mutating_endpoints_need_a_configured_token(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    _, _, front = start_stack(pg, nats_url, services)
    with api(front) as http:
        for path in (
            "/streams/create?stream=X&subjects=x.>",
            "/streams/delete?stream=X",
            "/streams/purge?stream=X",
            "/shutdown",
        ):
            reply = http.post(path, headers={"Authorization": "Bearer anything"})
            assert reply.status_code == 403, path
            assert "set BRIDGE_ADMIN_TOKEN" in reply.json()["error"]


def test_stream_management_with_and_without_the_token(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    _, _, front = start_stack(pg, nats_url, services, admin_token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    with api(front) as http:
        create = {"stream": "ORDERS", "subjects": "orders.*,audit.>"}
        assert http.post("/streams/create", params=create).status_code == 401
        wrong = http.post(
            "/streams/create", params=create, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert (
            http.post(
                "/streams/create", params=create, headers={"Authorization": TOKEN}
            ).status_code
            == 401
        )
        made = http.post("/streams/create", params=create, headers=good)
        assert made.status_code == 201 and made.json()["config"]["subjects"] == [
            "orders.*",
            "audit.>",
        ]
        assert http.post("/streams/create", params=create, headers=good).status_code == 409
        for params, reason in (
            ({"stream": "A B", "subjects": "x"}, "stream"),
            ({"stream": "X", "subjects": "a..b"}, "token 2 is empty"),
            ({"stream": "X", "subjects": "a.>.b"}, "'>' must be the last token"),
        ):
            reply = http.post("/streams/create", params=params, headers=good)
            assert reply.status_code == 400 and reason in reply.json()["error"], reply.text
        assert http.post("/streams/purge", params={"stream": "ORDERS"}, headers=good).json() == {
            "purged": "ORDERS"
        }
        assert (
            http.post("/streams/delete", params={"stream": "ORDERS"}, headers=good).status_code
            == 200
        )
        assert (
            http.post("/streams/delete", params={"stream": "ORDERS"}, headers=good).status_code
            == 404
        )
        for action in ("delete", "purge"):
            for stream in ("CDC", "INIT", "KV_schemas"):
                refused = http.post(f"/streams/{action}", params={"stream": stream}, headers=good)
                assert refused.status_code == 409 and "force=true" in refused.json()["error"]
        assert http.get("/streams/info", params={"stream": "CDC"}).status_code == 200
        forced = http.post(
            "/streams/purge", params={"stream": "INIT", "force": "true"}, headers=good
        )
        assert forced.status_code == 200
    assert TOKEN not in front.output() and PASSWORD not in front.output()


def test_health_turns_503_when_the_replicator_dies_and_200_after_restart(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    replicator, _, front = start_stack(pg, nats_url, services)
    replicator.kill()
    with api(front) as http:
        # Probes are shared by all callers and at most a second old (services/admin/probes.py)
        down = wait_for(lambda: (r := http.get("/health")).status_code == 503 and r, 5, "503")
        assert down.json()["down"] == ["replicator"]
        assert down.json()["checks"]["replicator"] == "unreachable"
        assert http.get("/status").json()["status"] == "degraded"
        replicator.start().wait_healthy()
        wait_for(lambda: http.get("/health").status_code == 200, 5, "200 again")


def test_metrics_hold_every_service(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    _, snapshotter, front = start_stack(pg, nats_url, services)
    with api(front) as http:
        text = http.get("/metrics").text
        assert 'bridge_cdc_events_published_total{service="replicator"}' in text
        assert 'bridge_snapshots_in_progress{service="snapshotter"}' in text
        assert 'bridge_uptime_seconds{service="admin"}' in text
        assert 'bridge_service_up{service="admin",target="snapshotter"} 1.0' in text
        assert text.count("# TYPE bridge_uptime_seconds gauge") == 1
        snapshotter.kill()
        down = 'bridge_service_up{service="admin",target="snapshotter"} 0.0'
        degraded = wait_for(lambda: down in (r := http.get("/metrics")).text and r, 5, down)
        assert degraded.status_code == 200
        assert 'service="snapshotter"' not in degraded.text.replace('target="snapshotter"', "")


def test_shutdown_stops_replicator_and_snapshotter_with_exit_0(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    replicator, snapshotter, front = start_stack(pg, nats_url, services, admin_token=TOKEN)
    with api(front) as http:
        reply = http.post("/shutdown", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 202
    assert reply.json() == {"replicator": "shutting down", "snapshotter": "shutting down"}
    assert replicator.wait(30) == 0
    assert snapshotter.wait(30) == 0
    with api(front) as http:  # nobody left to answer: not a success
        reply = http.post("/shutdown", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 503 and "no service is shutting down" in reply.json()["error"]


def test_a_shutdown_every_service_refuses_is_not_a_success(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    replicator, snapshotter, front = start_stack(
        pg, nats_url, services, admin_token=TOKEN, control_token="not-the-services-token"
    )
    with api(front) as http:
        reply = http.post("/shutdown", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 403, reply.text
    assert "replicator: refused: " in reply.json()["error"], reply.text
    assert replicator.health() == 200 and snapshotter.health() == 200


def _png_has_color(path: Path, rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    """Decode an 8-bit RGB(A) PNG (what Chromium writes) and look for a pixel near `rgb`."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous = bytearray(stride)
    for row in range(height):
        line = raw[row * (stride + 1) : (row + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for i in range(stride):
            a = cur[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                cur[i] = (cur[i] + a) & 255
            elif kind == 2:
                cur[i] = (cur[i] + b) & 255
            elif kind == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, channels):
            if all(abs(cur[x + k] - rgb[k]) <= tolerance for k in range(3)):
                return True
        previous = cur
    return False


def test_status_page_shows_live_charts_in_chromium(
    pg: Database, nats_url: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make install-browser` (Debian's chromium)")
    _, _, front = start_stack(pg, nats_url, services)
    pg.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 2000) g")
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
        "--virtual-time-budget=7000",
    ]
    url = f"http://127.0.0.1:{front.port}/"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    samples = re.search(r'data-samples="(\d+)"', dom.stdout)
    assert samples and int(samples.group(1)) >= 2, dom.stdout[-3000:]  # refreshed, not just loaded
    for chart in ("rateChart", "lagChart"):
        canvas = re.search(rf'<canvas id="{chart}"[^>]*data-points="(\d+)"', dom.stdout)
        assert canvas and int(canvas.group(1)) >= 2, chart
    assert '<span class="ok">replicator: up</span>' in dom.stdout
    shot = tmp_path / "status.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    assert _png_has_color(shot, (0x2E, 0x9E, 0x5B)), "no green health badge in the screenshot"
    assert _png_has_color(shot, (0xE4, 0x57, 0x2E)), "no events/s chart line in the screenshot"
    assert _png_has_color(shot, (0x2F, 0x6F, 0xDB)), "no lag chart line in the screenshot"


def test_schemathesis_finds_no_server_errors(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    _, _, front = start_stack(pg, nats_url, services, admin_token=TOKEN)
    st = Path(__import__("sys").executable).parent / "st"
    result = subprocess.run(
        [
            str(st),
            "run",
            f"http://127.0.0.1:{front.port}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--exclude-path",
            "/shutdown",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--phases",
            "examples,coverage,fuzzing",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert front.health() == 200
