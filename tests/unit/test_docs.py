"""The documentation holds what the code says: the settings tables are generated from the
settings models, and the README stays the newcomer's page."""

from pathlib import Path

import yaml

from services import settings_doc

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_the_settings_tables_match_the_settings_models() -> None:
    text = CONFIGURATION.read_text()
    assert settings_doc.replace_in(text) == text, (
        "docs/configuration.md's settings tables are stale: "
        "run python -m services.settings_doc --write docs/configuration.md"
    )


def test_the_readme_is_a_page_a_newcomer_reads_in_one_sitting() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference into docs/"


def test_every_docs_page_is_in_the_site_navigation() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return []

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == listed, f"not in nav: {on_disk - listed}; missing: {listed - on_disk}"
