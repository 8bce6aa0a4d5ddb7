"""The libraries whose private parts the bridge uses are the releases it was tested with:
installed, pinned in pyproject.toml and locked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from shared.pinned import PINNED, drift

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_releases_are_the_tested_ones() -> None:
    assert drift() == [], "\n".join(drift())


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pyproject_pins_each_exactly(name: str) -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"{name}=={PINNED[name]}" in dependencies, (
        f"pyproject.toml must pin {name}=={PINNED[name]} (shared/pinned.py)"
    )


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_the_lock_files_hold_the_pins_with_hashes(lock: str) -> None:
    text = (ROOT / lock).read_text()
    for name, version in PINNED.items():
        assert re.search(rf"^{re.escape(name)}=={re.escape(version)} \\$", text, re.M), (
            f"{lock} does not lock {name}=={version}: run `make lock`"
        )
    pins = re.findall(r"^[A-Za-z0-9_.-]+==\S+", text, re.M)
    assert pins and text.count("--hash=sha256:") >= len(pins)


def test_drift_names_the_library_and_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PINNED, "pykka", "0.0.1")
    (line,) = drift()
    assert "pykka 4." in line and "pykka 0.0.1" in line
