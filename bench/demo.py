"""`make demo`: two throwaway MariaDB servers with the demo schema and the sync daemon between them.

No Docker needed. Everything lives under ``.demo/`` in the repository: the table list
(``.demo/tables.json``), the servers' data directories and, per run, the
staging directory (``.demo/run-<pid>/``); all but the table list are removed on exit, so
concurrent runs do not disturb each other. The source database ``demo_source`` is loaded from
``demo/schema.sql``; ``demo_target`` starts empty.

    python bench/demo.py                      # daemon loop; Ctrl-C stops daemon, then servers
    python bench/demo.py --once               # one sync cycle, then stop (smoke test)
    python bench/demo.py --least-privilege    # connect as the TRD 7.1.1 users of demo/grants.sql

INTERVAL (default 30) and HEALTH_PORT (default 8089; 0 with ``--once``) may be set in the
environment; every other setting the daemon reads can be overridden the same way.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mariadb_server import MariaDBServer, init_template  # noqa: E402

DEMO_DIR = ROOT / ".demo"
SOURCE_DB = "demo_source"
TARGET_DB = "demo_target"
DAEMON = ROOT / "source" / "db_pipeline.py"
STOP_TIMEOUT_SECONDS = 60.0


POLL_SECONDS = 0.2


class DemoStopped(KeyboardInterrupt):
    """Raised by :meth:`StopRequest.check` in the main thread once a SIGINT/SIGTERM arrived."""


class StopRequest:
    """SIGINT/SIGTERM only record the signal here; the main loop checks it between steps.

    The handler neither prints nor raises: a print landing while the main thread writes to the
    same stream fails with "reentrant call", and an exception raised at a random point could
    skip the servers' cleanup. A signal during teardown is recorded and otherwise ignored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (main thread only)."""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raise DemoStopped when a stop signal arrived."""
        if self.signum is not None:
            raise DemoStopped(signal.Signals(self.signum).name)


def port_in_use(port: int) -> bool:
    """True when something already listens on ``port`` of this machine."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def prepare_databases(source: MariaDBServer, target: MariaDBServer, least_privilege: bool) -> dict[str, str]:
    """Create and load the demo databases; return the daemon's credential variables."""
    source.execute(f"CREATE DATABASE {SOURCE_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    source.execute((ROOT / "demo" / "schema.sql").read_text(encoding="utf-8"), SOURCE_DB)
    target.execute(f"CREATE DATABASE {TARGET_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    if not least_privilege:
        return {"SOURCE_DB_USER": "root", "SOURCE_DB_PASS": "", "TARGET_DB_USER": "root", "TARGET_DB_PASS": ""}
    grants = (ROOT / "demo" / "grants.sql").read_text(encoding="utf-8")
    reader_pass, writer_pass = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    source.execute(
        "SET @source_db = %s, @reader_user = 'dlt_reader', @reader_pass = %s;" + grants.replace("%", "%%"),
        args=(SOURCE_DB, reader_pass),
    )
    target.execute(
        "SET @target_db = %s, @writer_user = 'dlt_writer', @writer_pass = %s;" + grants.replace("%", "%%"),
        args=(TARGET_DB, writer_pass),
    )
    return {
        "SOURCE_DB_USER": "dlt_reader",
        "SOURCE_DB_PASS": reader_pass,
        "TARGET_DB_USER": "dlt_writer",
        "TARGET_DB_PASS": writer_pass,
    }


def daemon_environment(
    source: MariaDBServer, target: MariaDBServer, credentials: dict[str, str], run_dir: Path, once: bool
) -> dict[str, str]:
    """The daemon's environment: the caller's, with the demo databases and paths forced."""
    env = dict(os.environ)
    env.setdefault("INTERVAL", "30")
    env.setdefault("HEALTH_PORT", "0" if once else "8089")
    env.setdefault("HEALTH_HOST", "127.0.0.1")  # a demo need not listen on every interface
    env.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    env.update(credentials)
    env.update(
        {
            "SOURCE_DB_HOST": source.host,
            "SOURCE_DB_PORT": str(source.port),
            "SOURCE_DB_NAME": SOURCE_DB,
            "TARGET_DB_HOST": target.host,
            "TARGET_DB_PORT": str(target.port),
            "TARGET_DB_NAME": TARGET_DB,
            "TABLES_FILE": str(DEMO_DIR / "tables.json"),
            "FILE_STAGING_DIR": str(run_dir / "staging"),
        }
    )
    return env


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon and wait for its graceful exit; kill it after the timeout."""
    if daemon.poll() is not None:
        return
    print("demo: stopping the daemon (SIGTERM)", flush=True)
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"demo: daemon still running after {STOP_TIMEOUT_SECONDS:.0f}s, killing it", flush=True)
        daemon.kill()
        daemon.wait()


def wait_for_daemon(daemon: subprocess.Popen[bytes], stop: StopRequest) -> int:
    """The daemon's exit status; raises DemoStopped once a stop signal arrived (checked every poll)."""
    while True:
        try:
            return daemon.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            stop.check()


def run(once: bool, least_privilege: bool, stop: StopRequest) -> int:
    """Start servers and daemon; return the exit status (0 after Ctrl-C / SIGTERM)."""
    health_port = int(os.environ.get("HEALTH_PORT", "0" if once else "8089"))
    if health_port and port_in_use(health_port):
        print(f"demo: port {health_port} is in use; stop what holds it or run with HEALTH_PORT=<free port>")
        return 2
    run_dir = DEMO_DIR / f"run-{os.getpid()}"  # fresh target each run, so fresh dlt state too
    shutil.rmtree(run_dir, ignore_errors=True)
    (DEMO_DIR / "servers").mkdir(parents=True, exist_ok=True)
    tables_tmp = run_dir.with_suffix(".tables.json")
    shutil.copyfile(ROOT / "demo" / "tables.json", tables_tmp)
    tables_tmp.replace(DEMO_DIR / "tables.json")  # atomic: a concurrent run never reads half a file
    servers: list[MariaDBServer] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        print("demo: starting two MariaDB servers under .demo/ ...", flush=True)
        template = init_template(DEMO_DIR)
        for name in ("source", "target"):
            stop.check()
            servers.append(MariaDBServer(DEMO_DIR / "servers", template, name))
            servers[-1].start()
        stop.check()
        source, target = servers
        credentials = prepare_databases(source, target, least_privilege)
        env = daemon_environment(source, target, credentials, run_dir, once)
        print(
            f"demo: source {SOURCE_DB} on 127.0.0.1:{source.port}, target {TARGET_DB} on 127.0.0.1:{target.port}"
            f" (e.g. mariadb -h127.0.0.1 -P{target.port} -uroot {TARGET_DB})"
        )
        if not once and env["HEALTH_PORT"] != "0":
            url = f"http://localhost:{env['HEALTH_PORT']}"
            print(f"demo: health  curl -s {url}/ | python3 -m json.tool\ndemo: metrics curl -s {url}/metrics")
            print("demo: Ctrl-C stops the daemon and both servers")
        command = [sys.executable, str(DAEMON)] + (["--once"] if once else [])
        print("demo: running " + " ".join(command[1:]), flush=True)
        # Own session: the terminal's Ctrl-C reaches only this script, which then stops the daemon once.
        stop.check()
        daemon = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        status = wait_for_daemon(daemon, stop)
        print(f"demo: daemon exited with status {status}", flush=True)
        return status
    except DemoStopped as stop:
        print(f"\ndemo: {stop} received", flush=True)
        return 0
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        for server in reversed(servers):
            server.destroy()
        shutil.rmtree(run_dir, ignore_errors=True)
        if servers:
            print("demo: servers stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="run one sync cycle, then stop everything")
    parser.add_argument(
        "--least-privilege",
        action="store_true",
        help="create the users of demo/grants.sql and let the daemon use them instead of root",
    )
    args = parser.parse_args(argv)
    stop = StopRequest()
    stop.install()
    return run(args.once, args.least_privilege, stop)


if __name__ == "__main__":
    sys.exit(main())
