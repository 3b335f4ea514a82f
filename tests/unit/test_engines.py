"""database/engines.py without a database: URLs, connect arguments, pool sizing, the handshake
timeout, credential-free connectivity errors and the parameter-free SQL hook."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest
import sqlalchemy as sa

from dlt_db_sync.config.settings import Settings, load_settings
from dlt_db_sync.database.engines import (
    BoundedHandshakeConnection,
    Engines,
    check_connectivity,
    connect_args,
    connectorx_url,
    create_engine,
    keep_parameter_free_sql_literal,
    minimum_pool,
    session_init_sql,
    sqlalchemy_url,
)
from dlt_db_sync.error_handling.errors import DatabaseError, ShutdownRequested

PASSWORD = "p@ss:w/rd%40#?"  # every character a URL gives a meaning to
BASE_ENV = {"SOURCE_DB_NAME": "src", "TARGET_DB_NAME": "tgt"}


def settings_from(**env: str) -> Settings:
    return load_settings({**BASE_ENV, **env}, dotenv_path=None)


# ----------------------------------------------------------------------------- URLs
def test_sqlalchemy_url_keeps_the_password_exact_but_never_prints_it() -> None:
    db = settings_from(SOURCE_DB_USER="reader", SOURCE_DB_PASS=PASSWORD, SOURCE_DB_HOST="db1").source
    url = sqlalchemy_url(db)
    assert url.password == PASSWORD and url.username == "reader" and url.database == "src"
    assert PASSWORD not in str(url) and PASSWORD not in repr(url)
    assert (url.host, url.port, url.drivername) == ("db1", 3306, "mysql+pymysql")


def test_sqlalchemy_url_without_password_has_none() -> None:
    assert sqlalchemy_url(settings_from().source).password is None


def test_connectorx_url_escapes_every_part_and_lifts_the_packet_limit() -> None:
    db = settings_from(SOURCE_DB_USER="us@r", SOURCE_DB_PASS=PASSWORD, SOURCE_DB_NAME="my/db").source
    parts = urlsplit(connectorx_url(db))
    assert (unquote(parts.username or ""), unquote(parts.password or "")) == ("us@r", PASSWORD)
    assert (parts.hostname, parts.port, unquote(parts.path)) == ("127.0.0.1", 3306, "/my/db")
    assert parts.query == "max_allowed_packet=1073741824"
    assert urlsplit(connectorx_url(settings_from().source)).password is None  # no empty ":" password


# ----------------------------------------------------------------------------- session and pool
def test_session_settings_per_role() -> None:
    settings = settings_from(TARGET_SQL_MODE="STRICT_ALL_TABLES','x")
    source_sql, target_sql = session_init_sql(settings.source, settings), session_init_sql(settings.target, settings)
    for sql in (source_sql, target_sql):
        assert sql.startswith("SET time_zone='+00:00'; SET NAMES utf8mb4")
    assert "net_write_timeout=600" in source_sql and "sql_mode" not in source_sql
    # A quote in the configured mode cannot end the string literal early.
    assert "SET SESSION sql_mode='STRICT_ALL_TABLES,x'" in target_sql
    assert f"innodb_lock_wait_timeout={int(settings.lock_wait_timeout)}" in target_sql
    assert connect_args(settings.target, settings)["local_infile"] is True
    assert connect_args(settings.source, settings)["local_infile"] is False
    assert connect_args(settings.source, settings)["client_flag"] & pymysql.constants.CLIENT.MULTI_STATEMENTS


def test_minimum_pool_counts_the_lease_connection_on_the_target_only() -> None:
    plain = settings_from()
    assert (minimum_pool(plain.source, plain), minimum_pool(plain.target, plain)) == (2, 2)
    leased = settings_from(LEASE_ENABLED="true")
    assert (minimum_pool(leased.source, leased), minimum_pool(leased.target, leased)) == (2, 3)


def test_a_pool_below_one_table_sync_gets_overflow_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_from(POOL_SIZE="1", MAX_OVERFLOW="0")
    with caplog.at_level(logging.WARNING, logger="dlt_sync.database"):
        engine = create_engine(settings.source, settings)  # lazy: nothing connects
    try:
        assert engine.pool.size() == 1 and getattr(engine.pool, "_max_overflow") == 1  # noqa: B009
        assert "allowing 1 overflow connection(s)" in caplog.text
    finally:
        engine.dispose()


def test_handshake_uses_the_connect_timeout_then_the_read_timeout_again(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def fake_connect(self: Any, sock: Any = None) -> None:
        seen.append(self._read_timeout)
        if len(seen) == 2:
            raise pymysql.err.OperationalError(2013, "lost connection during handshake")

    monkeypatch.setattr(pymysql.connections.Connection, "connect", fake_connect)
    conn = BoundedHandshakeConnection(host="db", connect_timeout=3, read_timeout=600, defer_connect=True)
    conn.connect()
    assert seen == [3] and conn._read_timeout == 600
    with pytest.raises(pymysql.err.OperationalError):
        conn.connect()
    assert conn._read_timeout == 600  # restored after a failed handshake too


# ----------------------------------------------------------------------------- connectivity errors
class _Refusing:
    """An engine whose connect fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def connect(self) -> Any:
        raise self.error


def _engines(settings: Settings, source: Any, target: Any) -> Engines:
    return Engines(source=source, target=target, settings=settings)


def test_connectivity_error_names_the_database_without_its_password() -> None:
    settings = settings_from(SOURCE_DB_USER="reader", SOURCE_DB_PASS=PASSWORD, TARGET_DB_PASS="t0psecret")
    # An error text that echoes the credentials, inside a URL and bare.
    echo = RuntimeError(f"proxy refused mysql://reader:{PASSWORD}@db:3306/src (password {PASSWORD})")
    with pytest.raises(DatabaseError) as caught:
        check_connectivity(_engines(settings, _Refusing(echo), _Refusing(echo)))
    message = str(caught.value)
    assert message.startswith("cannot connect to the source database reader@127.0.0.1:3306/src: ")
    assert PASSWORD not in message and "***" in message
    assert caught.value.__cause__ is echo


def test_connectivity_error_of_a_refused_port_is_classified() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_from(
        SOURCE_DB_PORT=str(port), SOURCE_DB_PASS=PASSWORD, SOURCE_DB_CONNECT_TIMEOUT="2", TARGET_DB_PORT=str(port)
    )
    engine = create_engine(settings.source, settings)
    try:
        with pytest.raises(DatabaseError) as caught:
            check_connectivity(_engines(settings, engine, engine))
    finally:
        engine.dispose()
    assert caught.value.code == 2003 and caught.value.transient
    assert f"127.0.0.1:{port}/src" in str(caught.value) and PASSWORD not in str(caught.value)


def test_write_slot_gives_up_when_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    engines = _engines(settings_from(MAX_CONCURRENT_TRANSACTIONS="1"), None, None)
    stop = threading.Event()
    with engines.write_slot(stop):
        stop.set()
        monkeypatch.setattr(engines.write_slots, "acquire", lambda timeout: False)  # no 0.5 s wait
        with pytest.raises(ShutdownRequested):
            with engines.write_slot(stop):
                pass
    monkeypatch.undo()
    assert engines.write_slots.acquire(blocking=False)  # the held slot was released


# ----------------------------------------------------------------------------- parameter-free SQL
def test_parameter_free_driver_sql_reaches_the_driver_without_parameters(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    keep_parameter_free_sql_literal(engine)
    seen: list[tuple[str, Any]] = []

    @sa.event.listens_for(engine, "before_cursor_execute", retval=True)
    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> tuple[str, Any]:
        seen.append((statement, parameters))
        return statement, parameters if parameters is not None else ()  # sqlite wants a sequence

    with engine.connect() as conn:
        conn.exec_driver_sql('CREATE TABLE "pct%s" (v TEXT)')  # pymysql would apply `% {}` to this
        conn.exec_driver_sql('INSERT INTO "pct%s" VALUES (?)', ("a%b",))
        conn.execute(sa.text('SELECT v FROM "pct%s" WHERE v = :v'), {"v": "a%b"})
    engine.dispose()
    assert seen[0] == ('CREATE TABLE "pct%s" (v TEXT)', None)
    assert seen[1] == ('INSERT INTO "pct%s" VALUES (?)', ("a%b",))  # parameters kept
    assert seen[2][1] == ("a%b",)  # compiled SQL keeps its parameters too
