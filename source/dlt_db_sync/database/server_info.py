"""What each server is: flavor, version and the settings the daemon depends on, read once per engine.

Read when the engines are prepared (and by ``--check``), logged once, shown in health as
``database_connections.<side>.server``. Servers the daemon cannot work with are refused with
one line that says what to do: MySQL before 5.7, MariaDB before 10.4.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.engine import Connection

from dlt_db_sync.database.dialect import MINIMUM_VERSION, Dialect, parse_version
from dlt_db_sync.error_handling.errors import ConfigError
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.server_info")

# Read with SHOW VARIABLES: a variable one flavor lacks is simply absent from the answer.
_OPTIONAL_VARIABLES = ("sql_require_primary_key", "enforce_gtid_consistency", "gtid_mode")


@dataclass(frozen=True)
class ServerInfo:
    """One server as the daemon sees it at start."""

    role: str
    version: str
    version_comment: str
    sql_mode: str
    local_infile: bool
    lower_case_table_names: int
    default_collation: str
    require_primary_key: bool
    gtid_consistency: bool

    @property
    def dialect(self) -> Dialect:
        """The SQL dialect of this server."""
        return Dialect.from_version_text(self.version)

    def describe(self) -> str:
        """One line for logs and ``--check``."""
        return (
            f"{self.dialect.label} ({self.version_comment}); sql_mode={self.sql_mode or '(empty)'}; "
            f"local_infile={'ON' if self.local_infile else 'OFF'}; lower_case_table_names={self.lower_case_table_names}; "
            f"collation={self.default_collation}; sql_require_primary_key={'ON' if self.require_primary_key else 'OFF'}; "
            f"gtid_consistency={'ON' if self.gtid_consistency else 'OFF'}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The health endpoint's ``server`` object."""
        dialect = self.dialect
        return {
            **asdict(self),
            "flavor": dialect.flavor,
            "version": ".".join(map(str, dialect.version)),
            "version_text": self.version,
        }


def _on(value: Any) -> bool:
    return str(value).upper() in {"1", "ON", "YES", "TRUE"}


def read_server_info(conn: Connection, role: str) -> ServerInfo:
    """Read ``conn``'s server once: version, sql_mode, local_infile, collation, target guards."""
    row = conn.exec_driver_sql(
        "SELECT VERSION(), @@version_comment, @@SESSION.sql_mode, @@GLOBAL.local_infile, "
        "@@lower_case_table_names, @@collation_server"
    ).one()
    names = ", ".join(f"'{name}'" for name in _OPTIONAL_VARIABLES)
    optional = {
        str(r[0]).lower(): r[1] for r in conn.exec_driver_sql(f"SHOW VARIABLES WHERE Variable_name IN ({names})")
    }
    gtid = _on(optional.get("enforce_gtid_consistency", "OFF")) or str(optional.get("gtid_mode", "")).upper() == "ON"
    return ServerInfo(
        role=role,
        version=str(row[0]),
        version_comment=str(row[1] or ""),
        sql_mode=str(row[2] or ""),
        local_infile=_on(row[3]),
        lower_case_table_names=int(row[4] or 0),
        default_collation=str(row[5] or ""),
        require_primary_key=_on(optional.get("sql_require_primary_key", "OFF")),
        gtid_consistency=gtid,
    )


def check_supported(info: ServerInfo) -> None:
    """Refuse a server version the daemon does not support.

    Raises:
        ConfigError: naming the side, the version found and the minimum.
    """
    flavor, version = parse_version(info.version)
    minimum = MINIMUM_VERSION[flavor]
    if version < minimum:
        name = "MariaDB" if flavor == "mariadb" else "MySQL"
        raise ConfigError(
            f"the {info.role} server is {name} {info.version}; this daemon supports {name} "
            f"{'.'.join(map(str, minimum[:2]))} or newer: upgrade the server or point {info.role.upper()}_DB_HOST at a supported one"
        )


def log_server(info: ServerInfo) -> None:
    """One INFO line per server, once at start."""
    logger.info("%s: %s", info.role, info.describe(), extra=log_fields("DATABASE", "SERVER"))


def read_servers(engines: Any) -> dict[str, ServerInfo]:
    """Read, refuse if unsupported, and log both servers of ``engines`` (once, at start).

    Raises:
        ConfigError: a server version the daemon does not support.
    """
    servers: dict[str, ServerInfo] = {}
    for role, engine in (("source", engines.source), ("target", engines.target)):
        with engine.connect() as conn:
            info = read_server_info(conn, role)
        check_supported(info)
        log_server(info)
        servers[role] = info
    return servers
