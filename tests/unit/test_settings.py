import pytest
from pydantic import ValidationError

from shared.codec import ValueMode
from shared.settings import BridgeSettings, load_settings


@pytest.fixture(autouse=True)
def _no_bridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("BRIDGE_"):
            monkeypatch.delenv(key)


def test_the_seed_command_line_works() -> None:
    s = load_settings(
        BridgeSettings,
        ["--port", "9090", "--table", "tab_1,tab_2", "--stream", "CDC,INIT", "--slot", "bridge"],
    )
    assert (s.port, s.table, s.slot) == (9090, ["tab_1", "tab_2"], "bridge")
    assert (s.cdc_stream, s.init_stream) == ("CDC", "INIT")


def test_defaults() -> None:
    s = load_settings(BridgeSettings)
    assert (s.slot, s.publication, s.stream, s.value_mode) == (
        "bridge_slot",
        "bridge_pub",
        ["CDC", "INIT"],
        ValueMode.TYPED,
    )
    assert s.effective_duplicate_window_seconds == s.cdc_max_age_seconds == 60


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TABLE", "a, b ,sales.c")
    monkeypatch.setenv("BRIDGE_DATABASE_URL", "postgresql://u:hunter2@db/app")
    monkeypatch.setenv("BRIDGE_VALUE_MODE", "text")
    s = load_settings(BridgeSettings)
    assert s.table == ["a", "b", "sales.c"]
    assert s.value_mode is ValueMode.TEXT
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.database_url.get_secret_value().endswith("@db/app")


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SLOT", "from_env")
    assert load_settings(BridgeSettings, ["--slot", "from_flag"]).slot == "from_flag"
    assert load_settings(BridgeSettings).slot == "from_env"


def test_duplicate_window_longer_than_max_age_is_refused() -> None:
    with pytest.raises(ValidationError, match="longer than the CDC stream's max age"):
        BridgeSettings(duplicate_window_seconds=120, cdc_max_age_seconds=60)


def test_stream_needs_two_names() -> None:
    with pytest.raises(ValidationError, match="two stream names"):
        BridgeSettings(stream="CDC")  # type: ignore[arg-type]


def test_a_quoted_table_name_may_hold_a_comma() -> None:
    s = BridgeSettings(table='orders,"a,b",sales."x,y"')  # type: ignore[arg-type]
    assert s.table == ["orders", '"a,b"', 'sales."x,y"']
