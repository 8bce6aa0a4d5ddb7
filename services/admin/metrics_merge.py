"""One Prometheus scrape target for the whole bridge: every service's series, labelled
`service="…"`, merged under one HELP/TYPE block per metric name."""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def merge(scrapes: Iterable[tuple[str, str]]) -> str:
    """`scrapes`: (service, exposition text). Returns one exposition text."""
    families: dict[str, tuple[str, str, list[tuple[str, Sample]]]] = {}
    for service, text in scrapes:
        for family in text_string_to_metric_families(text):
            kind = family.type
            entry = families.setdefault(family.name, (kind, family.documentation, []))
            entry[2].extend((service, sample) for sample in family.samples)
    lines: list[str] = []
    for name, (kind, doc, samples) in families.items():
        lines.append(f"# HELP {name} {_escape(doc)}")
        lines.append(f"# TYPE {name} {kind}")
        for service, sample in samples:
            labels = {"service": service, **sample.labels}
            rendered = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{sample.name}{{{rendered}}} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def by_label(text: str, label: str) -> dict[str, dict[str, float]]:
    """Labelled sample values: label value → sample name → value (a running snapshot's
    progress series, by table)."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if label in sample.labels:
                out.setdefault(sample.labels[label], {})[sample.name] = sample.value
    return out


def values(text: str) -> dict[str, float]:
    """Unlabelled sample values by sample name (the replicator's own gauges and counters)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out
