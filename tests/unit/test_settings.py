from pathlib import Path

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


def test_the_password_file_and_tls_settings_make_the_connection_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    secret = tmp_path / "password"
    secret.write_text("from-the-file\n")  # as `echo … > file` and Kubernetes secrets write it
    monkeypatch.setenv("BRIDGE_DATABASE_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("BRIDGE_DATABASE_SSLMODE", "verify-full")
    ca = tmp_path / "ca.pem"
    ca.write_text("a certificate")
    s = load_settings(
        BridgeSettings,
        ["--database-url", "postgresql://u:in-the-url@db/app", "--database-sslrootcert", str(ca)],
    )
    params = conninfo_to_dict(s.database_dsn())
    assert params["password"] == "from-the-file"  # the file wins over the URL
    assert (params["sslmode"], params["sslrootcert"], params["host"]) == (
        "verify-full",
        str(ca),
        "db",
    )
    assert {"from-the-file", "in-the-url"} <= set(s.secrets())


def test_a_file_setting_that_cannot_be_read_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        BridgeSettings(nats_nkey_seed_file=tmp_path / "missing.nk")
    text = str(error.value)
    assert "--nats-nkey-seed-file (BRIDGE_NATS_NKEY_SEED_FILE): cannot read" in text
    with pytest.raises(ValidationError, match="go together"):
        (tmp_path / "client.pem").write_text("a certificate")
        BridgeSettings(database_sslcert=tmp_path / "client.pem")  # a key is needed too
    with pytest.raises(ValidationError, match="sslmode='nope' is not one of"):
        BridgeSettings(database_sslmode="nope")


def test_every_nats_secret_is_known_for_redaction(tmp_path: Path) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SUAEXAMPLESEEDEXAMPLESEEDEXAMPLESEEDEXAMPLESEEDEXAMPLE\n")
    creds = tmp_path / "user.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi.eyJqdGkiOi.c2lnbmF0dXJl\n"
        "------END NATS USER JWT------\n\n************************* IMPORTANT "
        "*************************\n-----BEGIN USER NKEY SEED-----\nSUACREDSSEEDCREDSSEED\n"
        "------END USER NKEY SEED------\n"
    )
    s = BridgeSettings(
        nats_url="nats://tok3n@a:4222,tls://user:pa55@b:4222",
        nats_password="pw-setting",
        nats_token="token-setting",
        nats_nkey_seed_file=seed,
        nats_creds_file=creds,
    )
    found = s.secrets()
    for secret in (
        "tok3n",
        "pa55",
        "pw-setting",
        "token-setting",
        "SUAEXAMPLESEEDEXAMPLESEEDEXAMPLESEEDEXAMPLESEEDEXAMPLE",
        "SUACREDSSEEDCREDSSEED",
        "eyJhbGciOi.eyJqdGkiOi.c2lnbmF0dXJl",
    ):
        assert secret in found
    assert not any("IMPORTANT" in f or f.startswith("---") for f in found if "\n" not in f)
