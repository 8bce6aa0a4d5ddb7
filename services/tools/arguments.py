"""Arguments of the tools: their own, then the shared settings (flags and BRIDGE_*)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from shared.settings import BridgeSettings, load_settings


def split_settings(
    args: Sequence[str], parser: argparse.ArgumentParser, own_flags: set[str]
) -> tuple[argparse.Namespace, BridgeSettings]:
    """The command's own arguments, then the shared settings from the rest. Every settings
    flag takes a value (`--nats-url URL` or `--nats-url=URL`), so values are never mistaken
    for the command's positional table."""
    own: list[str] = []
    rest: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg.startswith("--") and arg.split("=", 1)[0] not in own_flags:
            rest.append(arg)
            if "=" not in arg and i + 1 < len(items):
                rest.append(items[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return parser.parse_args(own), load_settings(BridgeSettings, rest)
