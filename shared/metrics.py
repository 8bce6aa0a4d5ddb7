"""Metric helpers every service uses."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge

from shared import build
from shared.compiled import HOT_PATH


def uptime_gauge(registry: CollectorRegistry, service: str) -> Gauge:
    """`bridge_uptime_seconds`, counted from this call."""
    started = time.time()
    gauge = Gauge(
        "bridge_uptime_seconds", f"Seconds since the {service} started", registry=registry
    )
    gauge.set_function(lambda: time.time() - started)
    return gauge


def build_info(registry: CollectorRegistry) -> Gauge:
    """`bridge_build_info{version, hot_path}` 1: which release, and whether the compiled hot
    path runs in this process (shared/compiled)."""
    gauge = Gauge(
        "bridge_build_info",
        "Always 1; the labels say the bridge's version and its hot path (compiled or pure-python)",
        ["version", "hot_path"],
        registry=registry,
    )
    gauge.labels(build.version(), HOT_PATH).set(1)
    return gauge
