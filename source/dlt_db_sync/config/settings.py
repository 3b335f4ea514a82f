"""Configuration: one frozen ``Settings`` built from the environment (and ``.env``).

Nothing here runs at import time; ``load_settings`` is called once by the entry point and the
result is passed explicitly to every component. The table list is :mod:`dlt_db_sync.config.tables`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlt_db_sync.error_handling.errors import ConfigError

# The one version of the daemon: pyproject.toml reads it (tool.setuptools.dynamic), `--version`
# prints it and the health JSON reports it.
VERSION = "0.1.0"

PipelineMode = Literal["direct", "file_staging"]
SanitizePolicy = Literal["error", "null"]  # what to do with values the target cannot store
ExtractBackend = Literal["auto", "connectorx", "pyarrow"]
BinlogFallback = Literal["none", "incremental"]
BinlogResnapshot = Literal["manual", "auto"]


@dataclass(frozen=True)
class DatabaseSettings:
    """Connection settings of one database (source or target)."""

    role: str
    host: str
    port: int
    name: str
    user: str
    password: str = field(repr=False)
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify: bool = True
    connect_timeout: int = 10
    read_timeout: int = 600
    write_timeout: int = 600

    @property
    def uses_tls(self) -> bool:
        return bool(self.ssl_ca or self.ssl_cert or self.ssl_key)

    def describe(self) -> str:
        """A credential-free description for logs: ``user@host:port/db``."""
        return f"{self.user}@{self.host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class Settings:
    """Every tunable of the daemon; built once by :func:`load_settings`."""

    source: DatabaseSettings
    target: DatabaseSettings
    interval: float = 300.0
    batch_size: int = 8
    batch_delay: float = 2.0
    pool_size: int = 20
    max_overflow: int = 30
    pool_timeout: float = 60.0
    pool_recycle: int = 3600
    lock_timeout_retries: int = 5
    lock_timeout_base_delay: float = 10.0
    lock_timeout_max_delay: float = 300.0
    lock_timeout_jitter: float = 0.1
    transaction_timeout: int = 300
    lock_wait_timeout: int = 50
    max_concurrent_transactions: int = 3
    pipeline_mode: PipelineMode = "direct"
    file_staging_dir: Path = Path("staging")
    file_staging_retention_hours: float = 24.0
    file_staging_compression: str = "snappy"
    tables_file: Path = Path("tables.json")
    health_port: int = 8089
    health_host: str = "0.0.0.0"
    lookback_seconds: float = 300.0
    lookback_versions: int = 1000
    chunk_size: int = 50000
    extract_backend: ExtractBackend = "auto"
    sanitize_policy: SanitizePolicy = "error"
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_file: Path | None = None
    log_file_max_mb: int = 10
    log_file_backups: int = 5
    # TRD 6.1.2 / 9.1.2 spellings, resolved by load_settings into pipeline_mode and log_level.
    file_staging_enabled: bool | None = None
    debug_mode: bool = False
    fetch_limit: int = 1
    lag_threshold_seconds: float = 3600.0
    long_query_seconds: float = 1800.0
    kill_long_queries: bool = False
    watchdog_interval: float = 30.0
    target_sql_mode: str = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO"
    lease_enabled: bool = False
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    max_delete_ratio: float = 0.5
    max_clock_skew_seconds: float = 300.0
    verify_rows_per_second: float = 5000.0
    # Binlog change capture (tables with "sync_strategy": "binlog").
    binlog_fallback: BinlogFallback = "none"  # "incremental": sync by cursor when the source lacks the prerequisites
    binlog_resnapshot: BinlogResnapshot = "manual"  # "auto": re-snapshot when the stored position was purged
    binlog_server_id: int = 1_234_567  # the reader's replica server_id; unique among the source's replicas
    binlog_batch_seconds: float = 0.1  # longest wait before committed source transactions are applied
    binlog_batch_rows: int = 10_000  # rows per target write (and the in-memory bound of one transaction)


# Environment variable -> (Settings field, parser). Shared by load_settings, the docs test
# and the .env.example check so the three never drift apart.
def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    parse.allowed = allowed  # type: ignore[attr-defined]  # read by the .env.example check
    return parse


def _positive_int(text: str) -> int:
    value = int(text.strip())
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text.strip())
    if value < 0 or value != value:
        raise ValueError(f"must be a non-negative number, got {text!r}")
    return value


def _ratio(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise ValueError(f"must be between 0 and 1, got {text!r}")
    return value


def _fetch_limit(text: str) -> int:
    # TRD 6.1.2: "FETCH_LIMIT=1 # Batch size (1 = no batching)". A real per-cycle row cap would
    # have to stop between rows sharing one modifier value without losing any of them; rows per
    # query are already set by CHUNK_SIZE and a table's batch_size, so only 1 (no cap) is accepted.
    value = int(text.strip())
    if value != 1:
        raise ValueError(
            "only 1 (no cap) is supported; set rows per extract/load chunk with CHUNK_SIZE "
            "or a table's batch_size in tables.json"
        )
    return value


def _server_id(text: str) -> int:
    value = int(text.strip())
    if not 1 <= value <= 4294967295:
        raise ValueError(f"must be between 1 and 4294967295 (a replica server_id), got {value}")
    return value


def _port(text: str) -> int:
    value = int(text.strip())
    if not 0 <= value <= 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


SETTING_VARIABLES: dict[str, tuple[str, Any]] = {
    "INTERVAL": ("interval", _non_negative_float),
    "BATCH_SIZE": ("batch_size", _positive_int),
    "BATCH_DELAY": ("batch_delay", _non_negative_float),
    "POOL_SIZE": ("pool_size", _positive_int),
    "MAX_OVERFLOW": ("max_overflow", lambda t: int(_non_negative_float(t))),
    "POOL_TIMEOUT": ("pool_timeout", _non_negative_float),
    "POOL_RECYCLE": ("pool_recycle", _positive_int),
    "LOCK_TIMEOUT_RETRIES": ("lock_timeout_retries", lambda t: int(_non_negative_float(t))),
    "LOCK_TIMEOUT_BASE_DELAY": ("lock_timeout_base_delay", _non_negative_float),
    "LOCK_TIMEOUT_MAX_DELAY": ("lock_timeout_max_delay", _non_negative_float),
    "LOCK_TIMEOUT_JITTER": ("lock_timeout_jitter", _non_negative_float),
    "TRANSACTION_TIMEOUT": ("transaction_timeout", _positive_int),
    "LOCK_WAIT_TIMEOUT": ("lock_wait_timeout", _positive_int),
    "MAX_CONCURRENT_TRANSACTIONS": ("max_concurrent_transactions", _positive_int),
    "PIPELINE_MODE": ("pipeline_mode", _choice("direct", "file_staging")),
    "FILE_STAGING_DIR": ("file_staging_dir", Path),
    "FILE_STAGING_RETENTION_HOURS": ("file_staging_retention_hours", _non_negative_float),
    "FILE_STAGING_COMPRESSION": (
        "file_staging_compression",
        _choice("snappy", "gzip", "brotli", "zstd", "none"),
    ),
    "TABLES_FILE": ("tables_file", Path),
    "HEALTH_PORT": ("health_port", _port),
    "HEALTH_HOST": ("health_host", str),
    "LOOKBACK_SECONDS": ("lookback_seconds", _non_negative_float),
    "LOOKBACK_VERSIONS": ("lookback_versions", lambda t: int(_non_negative_float(t))),
    "CHUNK_SIZE": ("chunk_size", _positive_int),
    "EXTRACT_BACKEND": ("extract_backend", _choice("auto", "connectorx", "pyarrow")),
    "SANITIZE_POLICY": ("sanitize_policy", _choice("error", "null")),
    "LOG_LEVEL": ("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    "LOG_FORMAT": ("log_format", _choice("text", "json")),
    "LOG_FILE": ("log_file", Path),
    "LOG_FILE_MAX_MB": ("log_file_max_mb", _positive_int),
    "LOG_FILE_BACKUPS": ("log_file_backups", lambda t: int(_non_negative_float(t))),
    "FILE_STAGING_ENABLED": ("file_staging_enabled", _parse_bool),
    "DEBUG_MODE": ("debug_mode", _parse_bool),
    "FETCH_LIMIT": ("fetch_limit", _fetch_limit),
    "LAG_THRESHOLD_SECONDS": ("lag_threshold_seconds", _non_negative_float),
    "LONG_QUERY_SECONDS": ("long_query_seconds", _non_negative_float),
    "KILL_LONG_QUERIES": ("kill_long_queries", _parse_bool),
    "WATCHDOG_INTERVAL": ("watchdog_interval", _non_negative_float),
    "TARGET_SQL_MODE": ("target_sql_mode", str),
    "LEASE_ENABLED": ("lease_enabled", _parse_bool),
    "PROGRESS": ("progress", _choice("auto", "bar", "log", "off")),
    "MAX_DELETE_RATIO": ("max_delete_ratio", _ratio),
    "MAX_CLOCK_SKEW_SECONDS": ("max_clock_skew_seconds", _non_negative_float),
    "VERIFY_ROWS_PER_SECOND": ("verify_rows_per_second", _non_negative_float),
    "BINLOG_FALLBACK": ("binlog_fallback", _choice("none", "incremental")),
    "BINLOG_RESNAPSHOT": ("binlog_resnapshot", _choice("manual", "auto")),
    "BINLOG_SERVER_ID": ("binlog_server_id", _server_id),
    "BINLOG_BATCH_SECONDS": ("binlog_batch_seconds", _non_negative_float),
    "BINLOG_BATCH_ROWS": ("binlog_batch_rows", _positive_int),
}


DATABASE_VARIABLES: dict[str, tuple[str, Any]] = {
    "HOST": ("host", str),
    "PORT": ("port", _port),
    "NAME": ("name", str),
    "USER": ("user", str),
    "PASS": ("password", str),
    "SSL_CA": ("ssl_ca", str),
    "SSL_CERT": ("ssl_cert", str),
    "SSL_KEY": ("ssl_key", str),
    "SSL_VERIFY": ("ssl_verify", _parse_bool),
    "CONNECT_TIMEOUT": ("connect_timeout", _positive_int),
    "READ_TIMEOUT": ("read_timeout", _positive_int),
    "WRITE_TIMEOUT": ("write_timeout", _positive_int),
}


DATABASE_DEFAULTS = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


REQUIRED_DATABASE_KEYS = ("NAME",)


# Variables starting with these belong to this daemon: an unknown one is most likely a typo.
OWN_PREFIXES = (
    "SOURCE_DB_",
    "TARGET_DB_",
    "FILE_STAGING_",
    "LOCK_TIMEOUT_",
    "POOL_",
    "HEALTH_",
    "LOG_",
    "LEASE_",
    "WATCHDOG_",
    "EXTRACT_",
    "SANITIZE_",
    "PIPELINE_",
    "PIPELINES_",
    "TABLES_",
    "CHUNK_",
    "BATCH_",
    "BINLOG_",
)


# Variables earlier versions read, with what replaced them.
RETIRED_VARIABLES = {
    "PIPELINES_DIR": "the daemon keeps no dlt pipeline state (its sync state lives in the target's _dlt_sync_state table)",
}


def known_variables() -> list[str]:
    """Every environment variable the daemon reads (for docs and .env.example checks)."""
    names = [f"{role}_DB_{suffix}" for role in ("SOURCE", "TARGET") for suffix in DATABASE_VARIABLES]
    return names + list(SETTING_VARIABLES)


def unknown_variable_warnings(
    environ: Mapping[str, str] | None = None, dotenv_path: Path | None = Path(".env")
) -> list[str]:
    """One warning per variable with one of our prefixes that the daemon does not read (a typo?)."""
    env = _merged_environment(os.environ if environ is None else environ, dotenv_path)
    known = set(known_variables())
    warnings: list[str] = []
    for name in sorted(env):
        if name in RETIRED_VARIABLES:
            warnings.append(f"environment variable {name} is no longer read: {RETIRED_VARIABLES[name]}")
        elif name not in known and name.startswith(OWN_PREFIXES):
            warnings.append(f"environment variable {name} is not a setting of this daemon and is ignored (a typo?)")
    return warnings


def _merged_environment(environ: Mapping[str, str], dotenv_path: Path | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    if dotenv_path is not None and dotenv_path.is_file():
        from dotenv import dotenv_values  # only when a .env exists: keeps --help and --version fast

        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(environ)  # real environment variables win over .env
    return merged


def _parse(variable: str, raw: str, parser: Any) -> Any:
    try:
        return parser(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"environment variable {variable}={raw!r} is invalid: {exc}") from exc


def _database_settings(role: str, env: Mapping[str, str]) -> DatabaseSettings:
    values: dict[str, Any] = dict(DATABASE_DEFAULTS)
    for suffix, (attr, parser) in DATABASE_VARIABLES.items():
        variable = f"{role}_DB_{suffix}"
        raw = env.get(variable)
        if raw is None or (raw == "" and suffix not in {"PASS"}):
            continue
        # Never echo a password back, even when it fails to parse.
        values[attr] = _parse(variable, raw, parser)
    for suffix in REQUIRED_DATABASE_KEYS:
        attr = DATABASE_VARIABLES[suffix][0]
        if not values.get(attr):
            raise ConfigError(f"environment variable {role}_DB_{suffix} is required (database name)")
    return DatabaseSettings(role=role.lower(), **values)


def load_settings(environ: Mapping[str, str] | None = None, dotenv_path: Path | None = Path(".env")) -> Settings:
    """Build the frozen settings from ``environ`` (default ``os.environ``) and ``.env``.

    Raises:
        ConfigError: naming the variable whose value cannot be used.
    """
    env = _merged_environment(os.environ if environ is None else environ, dotenv_path)
    kwargs: dict[str, Any] = {}
    for variable, (attr, parser) in SETTING_VARIABLES.items():
        raw = env.get(variable)
        if raw is None or raw.strip() == "":
            continue
        kwargs[attr] = _parse(variable, raw, parser)
    _resolve_trd_aliases(kwargs)
    settings = Settings(source=_database_settings("SOURCE", env), target=_database_settings("TARGET", env), **kwargs)
    if settings.lock_timeout_max_delay < settings.lock_timeout_base_delay:
        raise ConfigError("environment variable LOCK_TIMEOUT_MAX_DELAY must not be below LOCK_TIMEOUT_BASE_DELAY")
    _check_tls(settings)
    return settings


def _resolve_trd_aliases(kwargs: dict[str, Any]) -> None:
    """FILE_STAGING_ENABLED decides PIPELINE_MODE and DEBUG_MODE=true means LOG_LEVEL=DEBUG."""
    enabled = kwargs.get("file_staging_enabled")
    if enabled is not None:
        wanted = "file_staging" if enabled else "direct"
        mode = kwargs.get("pipeline_mode")
        if mode is not None and mode != wanted:
            raise ConfigError(
                f"environment variables FILE_STAGING_ENABLED={'true' if enabled else 'false'} and "
                f"PIPELINE_MODE={mode} contradict each other; set only one of them"
            )
        kwargs["pipeline_mode"] = wanted
    if kwargs.get("debug_mode"):
        kwargs["log_level"] = "DEBUG"


def _check_tls(settings: Settings) -> None:
    """Certificate files must be readable, and a TLS source must never be read in plain text."""
    for db in (settings.source, settings.target):
        for suffix, value in (("SSL_CA", db.ssl_ca), ("SSL_CERT", db.ssl_cert), ("SSL_KEY", db.ssl_key)):
            if value and not os.access(value, os.R_OK):
                raise ConfigError(f"environment variable {db.role.upper()}_DB_{suffix}={value!r}: file is not readable")
    if settings.source.uses_tls and settings.extract_backend == "connectorx":
        # connectorx opens its own connections and is given no TLS settings.
        raise ConfigError(
            "environment variable EXTRACT_BACKEND=connectorx cannot be used with SOURCE_DB_SSL_*: "
            "connectorx would connect without TLS; use EXTRACT_BACKEND=auto or pyarrow"
        )
