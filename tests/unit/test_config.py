"""Settings from the environment and tables.json validation: every error names what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dlt_db_sync.config.settings import known_variables, load_settings
from dlt_db_sync.config.tables import TableSpec, load_tables, parse_tables
from dlt_db_sync.database.engines import _ssl_args, connect_args
from dlt_db_sync.error_handling.errors import ConfigError, TerminalError

BASE_ENV = {"SOURCE_DB_NAME": "src", "TARGET_DB_NAME": "tgt"}


def settings_from(**env: str) -> Any:
    return load_settings({**BASE_ENV, **env}, dotenv_path=None)


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "tables.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_tables(path)
    assert isinstance(info.value, TerminalError)
    return str(info.value)


# ----------------------------------------------------------------------------- environment


def test_defaults_and_overrides() -> None:
    settings = settings_from(POOL_SIZE="3", LOCK_TIMEOUT_BASE_DELAY="0.5", SOURCE_DB_PORT="3307")
    assert settings.pool_size == 3
    assert settings.lock_timeout_base_delay == 0.5
    assert settings.source.port == 3307
    assert settings.target.port == 3306
    assert settings.max_overflow == 30


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POOL_SIZE", "abc"),
        ("POOL_SIZE", "0"),
        ("CHUNK_SIZE", "1e"),
        ("LOCK_TIMEOUT_BASE_DELAY", "fast"),
        ("LOCK_TIMEOUT_RETRIES", "-1"),
        ("TRANSACTION_TIMEOUT", "5min"),
        ("SOURCE_DB_PORT", "99999"),
        ("TARGET_DB_CONNECT_TIMEOUT", "ten"),
        ("TARGET_DB_SSL_VERIFY", "maybe"),
        ("PIPELINE_MODE", "turbo"),
    ],
)
def test_unparseable_variable_is_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(**{variable: value})
    assert f"environment variable {variable}=" in str(info.value)
    assert repr(value) in str(info.value)


def test_database_name_is_required() -> None:
    with pytest.raises(ConfigError, match="TARGET_DB_NAME is required"):
        load_settings({"SOURCE_DB_NAME": "s"}, dotenv_path=None)


def test_max_delay_below_base_delay() -> None:
    with pytest.raises(ConfigError, match="LOCK_TIMEOUT_MAX_DELAY"):
        settings_from(LOCK_TIMEOUT_BASE_DELAY="10", LOCK_TIMEOUT_MAX_DELAY="1")


def test_password_is_not_in_repr() -> None:
    settings = settings_from(SOURCE_DB_PASS="S3cr3t!pw", TARGET_DB_PASS="S3cr3t!pw")
    assert "S3cr3t" not in repr(settings)
    assert "S3cr3t" not in settings.source.describe()


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SOURCE_DB_NAME=from_file\nTARGET_DB_NAME=t\nPOOL_SIZE=7\n")
    settings = load_settings({"POOL_SIZE": "4"}, dotenv_path=dotenv)
    assert settings.source.name == "from_file"
    assert settings.pool_size == 4


def test_every_variable_is_known() -> None:
    names = known_variables()
    for name in (
        "SOURCE_DB_SSL_CA",
        "TARGET_DB_SSL_VERIFY",
        "POOL_TIMEOUT",
        "LOCK_TIMEOUT_JITTER",
        "TRANSACTION_TIMEOUT",
    ):
        assert name in names


def test_connectorx_cannot_be_forced_on_a_tls_source(tmp_path: Path) -> None:
    """connectorx opens its own connections without our TLS settings: never read in plain text."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="EXTRACT_BACKEND=connectorx"):
        settings_from(EXTRACT_BACKEND="connectorx", SOURCE_DB_SSL_CA=str(ca))
    assert settings_from(EXTRACT_BACKEND="auto", SOURCE_DB_SSL_CA=str(ca)).source.uses_tls


def test_missing_certificate_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TARGET_DB_SSL_CA"):
        settings_from(TARGET_DB_SSL_CA=str(tmp_path / "missing-ca.pem"))


# ----------------------------------------------------------------------------- TLS arguments


def test_ssl_args_for_pymysql(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    verified = settings_from(
        TARGET_DB_SSL_CA=str(tmp_path / "ca.pem"),
        TARGET_DB_SSL_CERT=str(tmp_path / "cert.pem"),
        TARGET_DB_SSL_KEY=str(tmp_path / "key.pem"),
    ).target
    assert _ssl_args(verified) == {
        "ca": str(tmp_path / "ca.pem"),
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
        "check_hostname": True,
        "verify_mode": True,
    }
    unverified = settings_from(TARGET_DB_SSL_CA=str(tmp_path / "ca.pem"), TARGET_DB_SSL_VERIFY="false").target
    assert _ssl_args(unverified) == {"ca": str(tmp_path / "ca.pem"), "check_hostname": False, "verify_mode": False}
    plain = settings_from().target
    assert _ssl_args(plain) is None
    assert "ssl" not in connect_args(plain, settings_from())


def test_connect_and_read_timeouts_are_bounded() -> None:
    settings = settings_from(SOURCE_DB_CONNECT_TIMEOUT="3")
    args = connect_args(settings.source, settings)
    assert args["connect_timeout"] == 3
    assert args["read_timeout"] > 0 and args["write_timeout"] > 0


# ----------------------------------------------------------------------------- tables.json


def test_valid_tables(tmp_path: Path) -> None:
    specs = load_tables(
        write(
            tmp_path,
            [
                {"table": "actor", "primary_key": "actor_id", "modifier": "last_update"},
                {"table": "film_actor", "primary_key": ["actor_id", "film_id"]},
            ],
        )
    )
    assert specs[0] == TableSpec("actor", ("actor_id",), "last_update")
    assert specs[0].strategy == "incremental"
    assert specs[1].primary_key == ("actor_id", "film_id")
    assert specs[1].strategy == "full_refresh"


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[\n  {"table": "actor", "primary_key": "actor_id"},\n  {"table": "film",, }\n]\n')
    message = config_error(path)
    assert str(path) in message
    assert "line 3 column 20" in message


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.json")
    assert "nope.json" in message and "cannot read" in message


def test_missing_primary_key(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, [{"table": "actor", "primary_key": "actor_id"}, {"table": "film"}]))
    assert "entry 1 (table 'film')" in message
    assert "'primary_key' is required" in message


def test_empty_primary_key_list(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, [{"table": "film", "primary_key": []}]))
    assert "entry 0 (table 'film')" in message
    assert "primary_key" in message and "non-empty list" in message


@pytest.mark.parametrize("field", ["table", "primary_key", "modifier"])
def test_injected_identifier_is_rejected(tmp_path: Path, field: str) -> None:
    entry: dict[str, Any] = {"table": "actor", "primary_key": "actor_id", "modifier": "last_update"}
    entry[field] = "actor; DROP TABLE film"
    message = config_error(write(tmp_path, [entry]))
    assert str(tmp_path / "tables.json") in message
    assert "'actor; DROP TABLE film'" in message
    assert "not a valid identifier" in message or "primary_key" in message


def test_identifier_in_a_key_list_is_rejected(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, [{"table": "t", "primary_key": ["id", "x`y"]}]))
    assert "entry 0 (table 't')" in message and "primary_key" in message


def test_duplicate_tables(tmp_path: Path) -> None:
    message = config_error(
        write(
            tmp_path,
            [
                {"table": "actor", "primary_key": "a"},
                {"table": "film", "primary_key": "f"},
                {"table": "Actor", "primary_key": "a"},
            ],
        )
    )
    assert "entry 2 (table 'Actor')" in message and "duplicates entry 0" in message


def test_unknown_key_and_wrong_types(tmp_path: Path) -> None:
    assert "unknown key 'primay_key'" in config_error(
        write(tmp_path, [{"table": "t", "primary_key": "id", "primay_key": "x"}])
    )
    assert "batch_size" in config_error(write(tmp_path, [{"table": "t", "primary_key": "id", "batch_size": "10"}]))
    assert "sync_strategy" in config_error(
        write(tmp_path, [{"table": "t", "primary_key": "id", "sync_strategy": "fast"}])
    )


def test_incremental_needs_a_modifier(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, [{"table": "t", "primary_key": "id", "sync_strategy": "incremental"}]))
    assert "'modifier' is required" in message


def test_empty_list_and_wrong_top_level(tmp_path: Path) -> None:
    assert "no tables configured" in config_error(write(tmp_path, []))
    assert "is not of type 'array'" in config_error(write(tmp_path, {"table": "t"}))


def test_parse_tables_reports_the_given_path() -> None:
    with pytest.raises(ConfigError, match=r"^conf/tables\.json: entry 0"):
        parse_tables([{"table": "t"}], Path("conf/tables.json"))
