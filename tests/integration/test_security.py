"""Security: TLS to both databases against a server that requires it, credentials never shown
in logs, errors, health or metrics, and the least-privilege grants of docs/SECURITY.md.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from fault_helpers import assert_identical, run_daemon, start_daemon

from conftest import ServerFactory, SyncEnv
from dlt_db_sync.config.settings import load_settings
from dlt_db_sync.database.engines import create_engines
from mariadb_server import MariaDBServer

pytestmark = pytest.mark.integration

PASSWORD = "S3cr3t!pw"
# Every form the password could leak in: raw, URL-quoted (connectorx URL), repr-escaped.
PASSWORD_FORMS = (PASSWORD, "S3cr3t%21pw", "S3cr3t")


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1, a client certificate and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(directory: Path, name: str, subject: str, ca: str, extensions: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}-key.pem",
        "-subj",
        subject,
        "-out",
        f"{name}.csr",
        cwd=directory,
    )
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=directory,
    )


def make_pki(directory: Path) -> Pki:
    """Generate the certificates with the ``openssl`` CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-sha256",
            "-keyout",
            f"{ca}-key.pem",
            "-subj",
            f"/CN=dlt-sync test {ca}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            f"{ca}.pem",
            cwd=directory,
        )
    _issue(
        directory,
        "server",
        "/CN=127.0.0.1",
        "ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    _issue(
        directory,
        "client",
        "/CN=dlt-sync-client",
        "ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    return Pki(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
        directory / "client.pem",
        directory / "client-key.pem",
        directory / "rogue-ca.pem",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(server_factory: ServerFactory, pki: Pki) -> Iterator[MariaDBServer]:
    """A MariaDB that refuses every connection without TLS."""
    server = server_factory.start(
        "tls",
        [
            f"--ssl-ca={pki.ca}",
            f"--ssl-cert={pki.server_cert}",
            f"--ssl-key={pki.server_key}",
            "--require-secure-transport=ON",
        ],
    )
    yield server
    server.destroy()


def tls_env(sync_env: SyncEnv, server: MariaDBServer, pki: Pki, **overrides: Any) -> dict[str, str]:
    """Source and target databases both on the TLS server, user ``certuser`` with a client certificate."""
    env = sync_env.environ(
        SOURCE_DB_PORT=server.port,
        TARGET_DB_PORT=server.port,
        SOURCE_DB_USER="certuser",
        TARGET_DB_USER="certuser",
        SOURCE_DB_PASS=PASSWORD,
        TARGET_DB_PASS=PASSWORD,
    )
    for role in ("SOURCE", "TARGET"):
        env.update(
            {
                f"{role}_DB_SSL_CA": str(pki.ca),
                f"{role}_DB_SSL_CERT": str(pki.client_cert),
                f"{role}_DB_SSL_KEY": str(pki.client_key),
            }
        )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def tls_dbs(sync_env: SyncEnv, tls_server: MariaDBServer) -> Iterator[SyncEnv]:
    """``sync_env``'s database names created on the TLS server, and a user that must present our client certificate."""
    tls_server.execute(
        f"CREATE DATABASE `{sync_env.source_db}`; CREATE DATABASE `{sync_env.target_db}`;"
        f"CREATE USER IF NOT EXISTS 'certuser'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SUBJECT '/CN=dlt-sync-client';"
        f"GRANT ALL ON `{sync_env.source_db}`.* TO 'certuser'@'%';"
        f"GRANT ALL ON `{sync_env.target_db}`.* TO 'certuser'@'%'"
    )
    tls_server.execute(
        "CREATE TABLE actor (actor_id INT PRIMARY KEY, name VARCHAR(40), last_update DATETIME NOT NULL, KEY (last_update));"
        "INSERT INTO actor SELECT seq, CONCAT('actor ', seq), '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_500",
        sync_env.source_db,
    )
    sync_env.write_tables([{"table": "actor", "primary_key": "actor_id", "modifier": "last_update"}])
    yield sync_env
    tls_server.execute(f"DROP DATABASE `{sync_env.source_db}`; DROP DATABASE `{sync_env.target_db}`")


def assert_no_password(*texts: str) -> None:
    for text in texts:
        for form in PASSWORD_FORMS:
            assert form not in text, (
                f"credential {form!r} leaked: ...{text[max(text.find(form) - 200, 0) : text.find(form) + 50]}"
            )


# ----------------------------------------------------------------------------- TLS


def test_server_refuses_plain_connections(tls_server: MariaDBServer) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        tls_server.connect(ssl_disabled=True)
    assert "insecure transport" in str(info.value).lower() or info.value.args[0] in (1045, 3159, 4037)


def test_daemon_syncs_over_verified_tls(tls_dbs: SyncEnv, tls_server: MariaDBServer, pki: Pki) -> None:
    env = tls_env(tls_dbs, tls_server, pki)
    result = run_daemon(env, "--once", cwd=tls_dbs.workdir)
    assert result.returncode == 0, result.stdout
    assert "mode direct/pyarrow" in result.stdout  # connectorx is never used on a TLS source
    assert assert_identical(tls_server, tls_dbs.source_db, tls_server, tls_dbs.target_db, "actor") == 500
    assert_no_password(result.stdout)


def test_engines_negotiate_tls_with_our_certificates(tls_dbs: SyncEnv, tls_server: MariaDBServer, pki: Pki) -> None:
    """The daemon's own connections: TLS cipher in use, and the client certificate presented (REQUIRE SUBJECT)."""
    settings = load_settings(tls_env(tls_dbs, tls_server, pki), dotenv_path=None)
    engines = create_engines(settings)
    try:
        for engine in (engines.source, engines.target):
            with engine.connect() as conn:
                cipher = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").fetchone()[1]
                version = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_version'").fetchone()[1]
                assert cipher, "the daemon's connection is not encrypted"
                assert version.startswith("TLS")
                assert conn.exec_driver_sql("SELECT CURRENT_USER()").scalar() == "certuser@%"
    finally:
        engines.dispose()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"TARGET_DB_SSL_CA": "rogue"}, "certificate verify failed"),  # a server our CA did not sign
        ({"TARGET_DB_HOST": "localhost"}, "hostname"),  # the certificate is for 127.0.0.1 only
        ({"TARGET_DB_SSL_CERT": "", "TARGET_DB_SSL_KEY": ""}, "access denied"),  # no client certificate
    ],
    ids=["untrusted-ca", "wrong-hostname", "no-client-cert"],
)
def test_tls_verification_is_enforced(
    tls_dbs: SyncEnv, tls_server: MariaDBServer, pki: Pki, overrides: dict[str, str], reason: str
) -> None:
    if overrides.get("TARGET_DB_SSL_CA") == "rogue":
        overrides = {"TARGET_DB_SSL_CA": str(pki.rogue_ca)}
    result = run_daemon(tls_env(tls_dbs, tls_server, pki, **overrides), "--once", cwd=tls_dbs.workdir)
    assert result.returncode == 1, result.stdout
    assert "cannot connect to the target database" in result.stdout
    assert reason in result.stdout.lower() or reason in result.stdout, result.stdout
    assert_no_password(result.stdout)


def test_verification_can_be_turned_off(tls_dbs: SyncEnv, tls_server: MariaDBServer, pki: Pki) -> None:
    """TARGET_DB_SSL_VERIFY=false still encrypts, but accepts any certificate and host name."""
    env = tls_env(
        tls_dbs,
        tls_server,
        pki,
        TARGET_DB_SSL_CA=str(pki.rogue_ca),
        TARGET_DB_HOST="localhost",
        TARGET_DB_SSL_VERIFY="false",
    )
    result = run_daemon(env, "--once", cwd=tls_dbs.workdir)
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------------------- least privilege


@dataclass
class Users:
    reader: str
    writer: str


@pytest.fixture
def least_privilege(sync_env: SyncEnv) -> Iterator[Users]:
    """The grants of docs/SECURITY.md: SELECT on the source; the listed privileges on the target db."""
    suffix = uuid.uuid4().hex[:6]
    users = Users(f"dlt_reader_{suffix}", f"dlt_writer_{suffix}")
    sync_env.source.execute(
        f"CREATE USER '{users.reader}'@'%' IDENTIFIED BY '{PASSWORD}';"
        f"GRANT SELECT ON `{sync_env.source_db}`.* TO '{users.reader}'@'%'"
    )
    sync_env.target.execute(
        f"CREATE USER '{users.writer}'@'%' IDENTIFIED BY '{PASSWORD}';"
        f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP, CREATE TEMPORARY TABLES "
        f"ON `{sync_env.target_db}`.* TO '{users.writer}'@'%'"
    )
    yield users
    sync_env.source.execute(f"DROP USER '{users.reader}'@'%'")
    sync_env.target.execute(f"DROP USER '{users.writer}'@'%'")


def make_tables(env: SyncEnv) -> None:
    env.src(
        "CREATE TABLE actor (actor_id INT PRIMARY KEY, name VARCHAR(40), last_update DATETIME NOT NULL, KEY (last_update));"
        "INSERT INTO actor SELECT seq, CONCAT('actor ', seq), '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_300;"
        "CREATE TABLE category (category_id INT PRIMARY KEY, name VARCHAR(40));"
        "INSERT INTO category SELECT seq, CONCAT('cat ', seq) FROM seq_1_to_20"
    )
    env.write_tables(
        [
            {"table": "actor", "primary_key": "actor_id", "modifier": "last_update"},  # incremental upserts
            {"table": "category", "primary_key": "category_id"},  # full refresh: shadow table + RENAME
            {"table": "ghost", "primary_key": "id"},  # fails: the error path must not leak either
        ]
    )


def least_privilege_env(env: SyncEnv, users: Users, **overrides: Any) -> dict[str, str]:
    return env.environ(
        SOURCE_DB_USER=users.reader,
        SOURCE_DB_PASS=PASSWORD,
        TARGET_DB_USER=users.writer,
        TARGET_DB_PASS=PASSWORD,
        LOG_LEVEL="DEBUG",
        **overrides,
    )


@pytest.mark.parametrize("backend", ["connectorx", "pyarrow"])
def test_least_privilege_users_sync_and_nothing_leaks(sync_env: SyncEnv, least_privilege: Users, backend: str) -> None:
    make_tables(sync_env)
    env = least_privilege_env(sync_env, least_privilege, EXTRACT_BACKEND=backend)
    first = run_daemon(env, "--once", cwd=sync_env.workdir)
    assert first.returncode == 1, first.stdout  # only because of 'ghost'
    assert "2 table(s) synced, 1 failed" in first.stdout, first.stdout
    sync_env.src(
        "UPDATE actor SET name = 'changed', last_update = last_update + INTERVAL 1 DAY WHERE actor_id <= 10;"
        "UPDATE category SET name = 'changed' WHERE category_id = 3"
    )
    second = run_daemon(env, "--once", cwd=sync_env.workdir)  # upserts into existing rows, swaps the full-refresh table
    assert "2 table(s) synced, 1 failed" in second.stdout, second.stdout
    for table in ("actor", "category"):
        assert_identical(sync_env.source, sync_env.source_db, sync_env.target, sync_env.target_db, table)
    assert_no_password(first.stdout, second.stdout)


def test_daemon_without_process_privilege_serves_health_without_secrets(
    sync_env: SyncEnv, least_privilege: Users
) -> None:
    """Daemon mode (watchdog on, no PROCESS grant): cycles run; health and metrics carry no credentials."""
    make_tables(sync_env)
    env = least_privilege_env(
        sync_env, least_privilege, HEALTH_PORT=0, HEALTH_HOST="127.0.0.1", INTERVAL=3600, WATCHDOG_INTERVAL=0.5
    )
    daemon = start_daemon(env, cwd=sync_env.workdir)
    lines: list[str] = []
    try:
        assert daemon.stdout is not None
        port = None
        for line in daemon.stdout:
            lines.append(line)
            match = re.search(r"listening on http://[\d.]+:(\d+)/", line)
            if match:
                port = int(match.group(1))
            if "SYNC_ENGINE - CYCLE - cycle 1" in line:
                break
        assert port is not None, "".join(lines)
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        daemon.send_signal(signal.SIGTERM)
        rest, _ = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    out = "".join(lines) + rest
    assert daemon.returncode == 0, out
    assert "2 table(s) synced, 1 failed" in out, out
    json.loads(health)
    assert_no_password(out, health, metrics)
