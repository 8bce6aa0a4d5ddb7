"""The README's configuration table, generated from the settings models so it cannot drift.

`python -m shared.settings_doc` prints it; `--write README.md` replaces the table between the
`<!-- settings:start -->` and `<!-- settings:end -->` markers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from shared.settings import BridgeSettings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
MODELS: list[type[BaseSettings]] = [BridgeSettings]


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
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    seen: set[str] = set()
    for model in MODELS:
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, field in model.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            flag = "--" + name.replace("_", "-")
            env = prefix + name.upper()
            lines.append(
                f"| `{flag}` | `{env}` | {_default(model, name)} | {field.description or ''} |"
            )
    return "\n".join(lines)


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
