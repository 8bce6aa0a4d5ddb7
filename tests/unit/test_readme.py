from pathlib import Path

from services import settings_doc

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_matches_the_settings_model() -> None:
    text = README.read_text()
    assert settings_doc.replace_in(text) == text, (
        "README's configuration table is stale: "
        "run python -m services.settings_doc --write README.md"
    )
