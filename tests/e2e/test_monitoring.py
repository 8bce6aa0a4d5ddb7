"""Every series the shipped alert rules and dashboard query is exported by the running services,
with the labels they select on: a renamed metric or label breaks this test, not a page at 3 a.m."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.postgres import Database
from tests.harness.services import Service, wait_for
from tests.harness.stacks import api
from tests.harness.stacks import start_admin_stack as start_stack

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SELECTOR = re.compile(r"\b(bridge_[a-z_]+)(\{[^}]*\})?")
EQUALS = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every alert rule and dashboard panel."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]
    dashboard = json.loads((DEPLOY / "grafana" / "pg-nats-bridge.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", target["expr"]


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each bridge metric an expression reads, with its equality label matchers."""
    for match in SELECTOR.finditer(expr):
        yield match.group(1), dict(EQUALS.findall(match.group(2) or ""))


def test_the_rules_and_dashboard_read_only_what_the_services_export(
    pg: Database, nats_url: str, services: Callable[..., Service]
) -> None:
    _, _, front = start_stack(pg, nats_url, services)
    pg.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g")
    with api(front) as http:

        def exported() -> list[tuple[str, dict[str, str]]]:
            text = http.get("/metrics").text
            return [
                (sample.name, sample.labels)
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            ]

        def has_streams() -> list[tuple[str, dict[str, str]]] | None:
            found = exported()
            return found if any(n == "bridge_stream_messages" for n, _ in found) else None

        samples = wait_for(has_streams, 30, "the streams' figures on /metrics")

    checked = 0
    missing = []
    for where, expr in queries():
        for name, labels in selectors(expr):
            checked += 1
            wanted = {name, name.removesuffix("_bucket")}
            if not any(
                sample in wanted and all(have.get(k) == v for k, v in labels.items())
                for sample, have in samples
            ):
                missing.append(f"{where}: {name}{labels or ''}")
    assert checked >= 30, checked  # the parser found the queries' metrics at all
    assert not missing, "not exported by the running services:\n" + "\n".join(missing)
