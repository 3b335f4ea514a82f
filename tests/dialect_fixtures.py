"""Dialects of the supported servers and the ``SHOW CREATE TABLE`` fixtures (tests/unit/fixtures/ddl)."""

from __future__ import annotations

from pathlib import Path

from dlt_db_sync.database.dialect import Dialect

FIXTURES = Path(__file__).parent / "unit" / "fixtures" / "ddl"

MYSQL57 = Dialect("mysql", (5, 7, 44))
MYSQL80_18 = Dialect("mysql", (8, 0, 18))
MYSQL80 = Dialect("mysql", (8, 0, 36))
MYSQL84 = Dialect("mysql", (8, 4, 3))
MARIADB104 = Dialect("mariadb", (10, 4, 34))
MARIADB1011 = Dialect("mariadb", (10, 11, 6))
MARIADB114 = Dialect("mariadb", (11, 4, 4))
MYSQLS = [MYSQL57, MYSQL80, MYSQL84]


def fixture_statements(path: Path) -> list[str]:
    """The statements of a fixture file: ``--`` comment lines dropped, blocks split on blank lines."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("--"))
    return [block.strip() for block in text.split("\n\n") if block.strip()]
