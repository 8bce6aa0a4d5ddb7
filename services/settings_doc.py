"""The settings tables of docs/configuration.md, generated from the settings models so they
cannot drift.

`python -m services.settings_doc` prints them; `--write docs/configuration.md` replaces the
tables between the
`<!-- settings:start -->` and `<!-- settings:end -->` markers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from services.admin.settings import AdminSettings
from services.dev.settings import DevSettings
from services.replicator.settings import ReplicatorSettings
from services.snapshotter.settings import SnapshotterSettings
from shared.settings import BridgeSettings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
# (heading, model); each later model lists only what it adds or changes.
MODELS: list[tuple[str, type[BaseSettings]]] = [
    ("Every service", BridgeSettings),
    ("`bridge replicator`", ReplicatorSettings),
    ("`bridge snapshotter`", SnapshotterSettings),
    ("`bridge admin`", AdminSettings),
    ("`bridge dev` / `bridge run`", DevSettings),
]


def _default(model: type[BaseSettings], name: str) -> str:
    field = model.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, list):
        value = ",".join(value)
    if value is None or value == "":
        return "—"
    return f"`{getattr(value, 'value', value)}`"


def render() -> str:
    out: list[str] = []
    base = {name: _default(BridgeSettings, name) for name in BridgeSettings.model_fields}
    for heading, model in MODELS:
        shown = dict(base) if model is not BridgeSettings else {}
        lines = [
            f"{heading}:",
            "",
            "| flag | environment | default | meaning |",
            "|---|---|---|---|",
        ]
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, field in model.model_fields.items():
            default = _default(model, name)
            if shown.get(name) == default:
                continue
            shown[name] = default
            flag = "--" + name.replace("_", "-")
            env = prefix + name.upper()
            lines.append(f"| `{flag}` | `{env}` | {default} | {field.description or ''} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def replace_in(text: str) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"the markers {START} and {END} are missing")
    return f"{head}{START}\n{render()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(replace_in(path.read_text()))
        return 0
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
