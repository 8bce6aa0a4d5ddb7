"""What the read endpoints answer, as plain functions of the shared state: `/health`,
`/status` and `/metrics`. `/status` reads the services' figures through their metric objects
(services/replicator/metrics.py, services/snapshotter/metrics.py), so a renamed metric is a
change in one place, not a string here."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, Histogram, generate_latest

from services.admin.metrics_merge import by_label, merge, values
from services.admin.state import SERVICES, AdminState
from services.replicator import metrics as replicator
from services.snapshotter import metrics as snapshotter
from shared.lsn import Lsn


def sample(metric: Counter | Gauge | Histogram, part: str = "") -> str:
    """The name of the metric's sample in an exposition: a counter's `_total`, a histogram's
    `_count`/`_sum` (`part`), a gauge's own name."""
    (family,) = metric.describe()
    if isinstance(metric, Counter):
        return f"{family.name}_total"
    return f"{family.name}{part}"


async def health(state: AdminState) -> tuple[int, dict[str, Any]]:
    """200 when PostgreSQL, NATS, the replicator and the snapshotter answer; 503 naming what
    does not."""
    pg, pages = await asyncio.gather(
        state.postgres.get(),
        asyncio.gather(*(state.page(name, "/health") for name in SERVICES)),
    )
    checks = {
        "postgres": pg,
        "nats": "ok" if state.nc is not None and state.nc.is_connected else "unreachable",
        **{name: _describe(page) for name, page in zip(SERVICES, pages, strict=True)},
    }
    down = [name for name, detail in checks.items() if detail != "ok"]
    if not down:
        return 200, {"status": "ok", "checks": checks}
    return 503, {"status": "unavailable", "down": down, "checks": checks}


async def status(state: AdminState, streams: dict[str, Any]) -> dict[str, Any]:
    """The replicator's figures (the seed's fields), the snapshotter's, the streams'."""
    rep_page, snap_page = await asyncio.gather(
        state.page("replicator", "/metrics"), state.page("snapshotter", "/metrics")
    )
    rep, snap = _values(rep_page), _values(snap_page)

    def r(metric: Counter | Gauge | Histogram, part: str = "") -> float:
        return rep.get(sample(metric, part), 0.0)

    def s(metric: Counter | Gauge | Histogram, part: str = "") -> float:
        return snap.get(sample(metric, part), 0.0)

    lag = int(r(replicator.wal_lag))
    connected = r(replicator.connected) == 1
    return {
        "status": "ok" if rep_page is not None and connected else "degraded",
        "uptime_seconds": round(r(replicator.uptime), 1),
        "wal_messages_received": int(r(replicator.wal_messages)),
        "cdc_events_published": int(r(replicator.events_published)),
        "current_lsn": str(Lsn(int(r(replicator.last_ack_lsn)))),
        "is_connected": connected,
        "reconnect_count": int(r(replicator.reconnects)),
        "last_processing_time_us": round(r(replicator.processing_us), 2),
        "slot_active": r(replicator.slot_active) == 1,
        "wal_lag_bytes": lag,
        "wal_lag_mb": round(lag / 1048576, 3),
        # Configured tables the replicator left out (its /health names them and why).
        "replicator": {
            "up": rep_page is not None,
            "tables_refused": int(r(replicator.tables_refused)),
            "hot_path": _hot_path(rep_page),
        },
        "snapshotter": {
            "up": snap_page is not None,
            "hot_path": _hot_path(snap_page),
            "snapshots_in_progress": int(s(snapshotter.in_progress)),
            "rows_published": int(s(snapshotter.rows)),
            "chunks_published": int(s(snapshotter.chunks)),
            "snapshots_completed": int(s(snapshotter.duration, "_count")),
            "running": _running_snapshots(snap_page),
        },
        "streams": streams,
        "timestamp": time.time(),
    }


async def metrics(state: AdminState, streams: dict[str, Any]) -> str:
    """Every service's series labelled by service, whether each answered, and the bridge's
    streams against their limits."""
    for stream, figures in streams.items():
        if isinstance(figures, dict) and "messages" in figures:
            for key, gauge in state.stream_figures.items():
                gauge.labels(stream).set(figures[key])
    scrapes = []
    for name in SERVICES:
        resp = await state.page(name, "/metrics")
        up = resp is not None and resp.status_code == 200
        state.service_up.labels(name).set(1 if up else 0)
        if up:
            assert resp is not None
            scrapes.append((name, resp.text))
    scrapes.append(("admin", generate_latest(state.registry).decode()))
    return merge(scrapes)


def _describe(resp: httpx.Response | None) -> str:
    if resp is None:
        return "unreachable"
    return "ok" if resp.status_code == 200 else f"unhealthy (HTTP {resp.status_code})"


def _hot_path(resp: httpx.Response | None) -> str | None:
    """`compiled` or `pure-python`, as the service's `bridge_build_info` says (None: it did
    not answer)."""
    if resp is None or resp.status_code != 200:
        return None
    try:
        return next(iter(by_label(resp.text, "hot_path")), None)
    except ValueError:
        return None


def _running_snapshots(resp: httpx.Response | None) -> list[dict[str, Any]]:
    """Each running snapshot's progress from the snapshotter's series (progress.py)."""
    if resp is None or resp.status_code != 200:
        return []
    try:
        tables = by_label(resp.text, "table")
    except ValueError:
        return []
    out = []
    for table, figures in sorted(tables.items()):
        if sample(snapshotter.progress_rows) not in figures:
            continue  # another labelled series of this table

        def figure(metric: Gauge, figures: dict[str, float] = figures) -> float | None:
            return figures.get(sample(metric))

        estimated, left = (
            figure(snapshotter.progress_estimated),
            figure(snapshotter.progress_seconds_left),
        )
        out.append(
            {
                "table": table,
                "rows_done": int(figure(snapshotter.progress_rows) or 0),
                "rows_estimated": None if estimated is None else int(estimated),
                "rows_per_second": round(figure(snapshotter.progress_rate) or 0),
                "seconds_left": None if left is None else round(left, 1),
            }
        )
    return out


def _values(resp: httpx.Response | None) -> dict[str, float]:
    if resp is None or resp.status_code != 200:
        return {}
    try:
        return values(resp.text)
    except ValueError:
        return {}
