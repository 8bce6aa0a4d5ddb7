"""Metric helpers every service uses."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge


def uptime_gauge(registry: CollectorRegistry, service: str) -> Gauge:
    """`bridge_uptime_seconds`, counted from this call."""
    started = time.time()
    gauge = Gauge(
        "bridge_uptime_seconds", f"Seconds since the {service} started", registry=registry
    )
    gauge.set_function(lambda: time.time() - started)
    return gauge
