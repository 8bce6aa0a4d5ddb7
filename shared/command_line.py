"""Command lines built from the settings models: one parser per `bridge COMMAND`.

pydantic-settings builds the arguments from the model (flags, environment variable names,
defaults, validation); this module only gives its parser what a person reads: the program
name, the command's own arguments first, the shared settings in groups, and placeholders that
say what a value is (`URL`, `PATH`, `SECONDS`) instead of Python type names. It does so through
the library's hook for an existing parser (`CliSettingsSource(root_parser=…,
add_argument_method=…)`), so parsing stays the library's.
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource

from shared.settings import BridgeSettings

S = TypeVar("S", bound=BaseSettings)

# The shared settings by group, in the order the help shows them (after the command's own).
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("PostgreSQL", ("database_", "primary_url")),
    ("NATS", ("nats_",)),
    (
        "what is replicated",
        ("table", "row_filter", "slot", "publication", "value_mode"),
    ),
    (
        "JetStream streams and bucket (used when creating them)",
        ("stream", "kv_", "cdc_", "init_", "duplicate_window_seconds", "stream_replicas"),
    ),
    ("NATS subjects and control", ("snapshot_prefix", "control_")),
    ("this process", ("port", "log_level")),
]


def _group_of(name: str) -> str:
    for title, prefixes in GROUPS:
        if any(name == p or (p.endswith("_") and name.startswith(p)) for p in prefixes):
            return title
    return "other settings"


def _bare(annotation: Any) -> Any:
    """The annotation without `None` and `Annotated`: `Path | None` is `Path`."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _bare(rest[0])
    return annotation


# Placeholders the type alone does not give.
NAMED = {
    "table": "TABLE,…",
    "stream": "CDC,INIT",
    "log_level": "LEVEL",
    "snapshot_prefix": "SUBJECT",
    "control_prefix": "SUBJECT",
}


def metavar(name: str, field: FieldInfo) -> str | None:
    """What the value of a setting is, in one word a person reads; None keeps the library's
    (the choices of a literal, which already read well)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("metavar"), str):
        return str(extra["metavar"])
    if name in NAMED:
        return NAMED[name]
    kind = _bare(field.annotation)
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return None
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "{" + ",".join(str(m.value) for m in kind) + "}"
    if name.endswith("_url"):
        return "URL"
    if kind is Path:
        return "PATH"
    if name.endswith("_seconds"):
        return "SECONDS"
    if name.endswith("_bytes"):
        return "BYTES"
    if origin is dict or kind is dict:
        return "JSON"
    if origin is list or kind is list:
        return "NAME,…"
    if kind is SecretStr:
        return "SECRET"
    if kind is int:
        return "N"
    if kind is float:
        return "NUMBER"
    return "NAME" if kind is str else None


def _help(text: str, field: FieldInfo) -> str:
    """The library's help with the default as a person writes it: none when there is none,
    the value of a default factory rather than its name."""
    head, marker, tail = text.partition(" (default")
    if not marker:
        return text
    _, _, env = tail.partition(")")
    default = field.get_default(call_default_factory=True)
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, list):
        default = ",".join(map(str, default))
    if default is None or default == "" or default == {}:
        return head + env
    return f"{head} (default: {default}){env}"


def build_parser(
    model: type[BaseSettings], command: str, summary: str, usage: str | None = None
) -> CliSettingsSource[S]:
    """The settings source of `bridge COMMAND`: the model's fields as arguments, those the
    command's own model declares first, the shared ones under their group's title."""
    parser = argparse.ArgumentParser(
        prog=f"bridge {command}",
        usage=usage or "%(prog)s [options]",
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags win over environment variables, which win over defaults. "
        "Lists are comma-separated (`--table a,b`).",
    )
    own_names = set(model.model_fields) - _inherited(model)
    own_group = parser.add_argument_group(f"bridge {command}")
    groups = {title: parser.add_argument_group(title) for title, _ in GROUPS}
    groups["other settings"] = parser.add_argument_group("other settings")
    fields = model.model_fields

    def add_argument(target: Any, *names: str, **kwargs: Any) -> Any:
        positional = not names[0].startswith("-")
        dest = names[0] if positional else kwargs.get("dest", "")
        field = fields.get(str(dest).replace("-", "_"))
        if field is None:  # an argument the library adds itself
            return target.add_argument(*names, **kwargs)
        name = str(dest).replace("-", "_")
        placeholder = metavar(name, field)
        if placeholder is not None and "metavar" in kwargs:
            if positional and kwargs.get("nargs") in ("+", "*"):
                placeholder = placeholder.removesuffix(",…")
            kwargs["metavar"] = placeholder
        if isinstance(kwargs.get("help"), str):
            kwargs["help"] = _help(kwargs["help"], field)
        if positional:
            return target.add_argument(*names, **kwargs)
        group = own_group if name in own_names else groups[_group_of(name)]
        return group.add_argument(*names, **kwargs)

    return CliSettingsSource(
        model,
        root_parser=parser,
        add_argument_method=add_argument,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _inherited(model: type[BaseSettings]) -> set[str]:
    """Fields every `bridge` command shares (`BridgeSettings`'), unless the model redeclares
    them (the replicator's own default port, say)."""
    shared = set(BridgeSettings.model_fields)
    declared = set(getattr(model, "__annotations__", {}))
    return shared - declared if model is not BridgeSettings else set()


def parse(
    model: type[S], args: Sequence[str], command: str, summary: str = "", usage: str | None = None
) -> S:
    """The settings of `bridge COMMAND` from its arguments, the environment and defaults;
    `-h`/`--help` prints the help and exits 0, a bad argument exits 2 with the usage."""
    source: CliSettingsSource[S] = build_parser(
        model, command, summary or model.__doc__ or "", usage
    )
    return CliApp.run(model, cli_args=list(args), cli_settings_source=source)
