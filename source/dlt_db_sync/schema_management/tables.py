"""Exact target tables: created from the source's own definition and evolved with it.

The target table is built from ``SHOW CREATE TABLE`` on the source, so column names, order, exact
types (ENUM, SET, UNSIGNED, TINYINT(1), JSON, DECIMAL(p,s), DATETIME(fsp), GEOMETRY ...),
nullability, defaults, character sets, collations, the primary key and secondary indexes are the
source's. Foreign keys, triggers and the AUTO_INCREMENT counter are not copied.

Evolution (TRD 5.2.3): a new source column is added with its exact type before rows using it
load; a widened type widens the target; a dropped column stays in the target (made NULL-able so
loads go on); a narrowing or incompatible change raises :class:`SchemaError` saying what to do.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.error_handling.errors import SchemaError, describe_error, mysql_error_code
from dlt_db_sync.index_management import unique_key_changes
from dlt_db_sync.schema_management.ddl_translation import (
    check_target_engine,
    column_for_target,
    equivalent_columns,
    translate_column_for,
    translate_for,
)
from dlt_db_sync.schema_management.model import Column, SchemaChanges, TableDefinition
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.schema_management")


DUPLICATE_KEY_CODES = frozenset({1062, 1169})  # duplicate entry; duplicate entry for a unique constraint


_INTEGER_RANK = {"tinyint": 1, "smallint": 2, "mediumint": 3, "int": 4, "bigint": 5}


_TEXT_RANK = {"tinytext": 1, "text": 2, "mediumtext": 3, "longtext": 4}


_BLOB_RANK = {"tinyblob": 1, "blob": 2, "mediumblob": 3, "longblob": 4}


def fetch_columns(conn: Connection, table: str) -> list[Column]:
    """Columns of ``table`` in the connection's current database, in ordinal order."""
    rows = conn.exec_driver_sql(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
        "ORDER BY ORDINAL_POSITION",
        (table,),
    ).fetchall()
    return [
        Column(
            name=r[0],
            data_type=str(r[1]).lower(),
            column_type=str(r[2]),  # already lower case except ENUM/SET members, which keep their case
            nullable=r[3] == "YES",
            charset=r[4],
            collation=r[5],
            generated=is_generated_extra(r[6]),
        )
        for r in rows
    ]


def is_generated_extra(extra: object) -> bool:
    """Whether information_schema.COLUMNS.EXTRA marks a generated column.

    Both flavors say ``VIRTUAL GENERATED`` / ``STORED GENERATED``; MySQL 8's ``DEFAULT_GENERATED``
    (an expression default such as ``DEFAULT CURRENT_TIMESTAMP``) is an ordinary column.
    """
    words = str(extra or "").upper().split()
    return "GENERATED" in words and ("VIRTUAL" in words or "STORED" in words or "PERSISTENT" in words)


def table_exists(conn: Connection, table: str) -> bool:
    """Whether ``table`` exists (as a base table) in the connection's current database."""
    return bool(
        conn.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        ).scalar()
    )


_COLUMN_LINE = re.compile(r"^\s*`((?:[^`]|``)+)`\s+(.*?),?$")


_FOREIGN_KEY_LINE = re.compile(r"^\s*(CONSTRAINT\s+`(?:[^`]|``)+`\s+)?FOREIGN KEY\b", re.IGNORECASE)


def column_definitions(create_sql: str) -> dict[str, str]:
    """Column name -> its definition text, from a ``SHOW CREATE TABLE`` statement."""
    definitions: dict[str, str] = {}
    for line in create_sql.splitlines()[1:]:
        match = _COLUMN_LINE.match(line)
        if match:
            definitions[match.group(1).replace("``", "`")] = match.group(2).rstrip(",")
    return definitions


def describe_table(conn: Connection, table: str) -> TableDefinition:
    """Columns and ``SHOW CREATE TABLE`` of ``table``."""
    create_sql = str(conn.exec_driver_sql(f"SHOW CREATE TABLE {q(table)}").one()[1])
    return TableDefinition(table, fetch_columns(conn, table), create_sql, column_definitions(create_sql))


def target_create_sql(create_sql: str, name: str) -> str:
    """Turn the source's ``SHOW CREATE TABLE`` into the target's: no foreign keys, no counter.

    The definitions (columns, keys, checks) are the indented lines up to the line that closes
    them (``) ENGINE=...``); everything from there on -- table options and a partitioning
    clause of any length -- is kept as the source prints it, minus ``AUTO_INCREMENT=n``.
    """
    lines = create_sql.splitlines()
    close = next((i for i in range(1, len(lines)) if lines[i].startswith(")")), len(lines) - 1)
    body = [line for line in lines[1:close] if not _FOREIGN_KEY_LINE.match(line)]
    if body:
        body[-1] = body[-1].rstrip().rstrip(",")
    options = re.sub(r"\s+AUTO_INCREMENT=\d+", "", lines[close])
    return "\n".join([f"CREATE TABLE {q(name)} (", *body, options, *lines[close + 1 :]])


def create_table_like_source(
    target: Connection, source_def: TableDefinition, name: str | None = None, *, source: Connection | None = None
) -> None:
    """Create ``name`` (default: the source table's name) in the target from the source definition.

    With the ``source`` connection, the definition is translated to the target's flavor/version.
    """
    sql = target_create_sql(source_def.create_sql, name or source_def.name)
    if source is not None:
        sql = translate_for(source, target, sql, source_def.name)
    target.exec_driver_sql(sql)


def _parse_type(column_type: str) -> tuple[str, list[str], bool]:
    """('decimal', ['10', '2'], unsigned) from 'decimal(10,2) unsigned'."""
    match = re.match(r"^([a-z]+)(?:\((.*)\))?(.*)$", column_type.strip())
    if not match:
        return column_type, [], False
    base, args, rest = match.group(1), match.group(2), match.group(3)
    if base in {"enum", "set"}:
        values = re.findall(r"'((?:[^']|'')*)'", args or "")
        return base, values, False
    parts = [p.strip() for p in args.split(",")] if args else []
    return base, parts, "unsigned" in rest


def normalized_type(column_type: str) -> str:
    """``column_type`` without the integer/YEAR display width, which does not change what a column holds.

    MySQL 8 reports ``int`` where MariaDB reports ``int(11)``; comparing them raw would alter the
    target on every cycle.
    """
    return re.sub(r"^(tinyint|smallint|mediumint|int|bigint|year)\(\d+\)", r"\1", column_type.strip())


def same_type(old: Column, new: Column) -> bool:
    """Whether the two columns hold and compare values alike (type, character set and collation).

    The collation matters beyond sorting: a unique key on a case-insensitive column treats
    'a' and 'A' as one value, so a target that kept the old collation would merge rows the
    source keeps apart.
    """
    same = (
        normalized_type(old.column_type) == normalized_type(new.column_type)
        and old.charset == new.charset
        and old.collation == new.collation
    )
    return same or equivalent_columns(old, new)  # the same column as the other flavor spells it


def _has_non_null_default(definition: str) -> bool:
    """Whether a column definition has a default other than NULL (or an ON UPDATE clause)."""
    match = re.search(r"\bDEFAULT\s+(\S+)", definition, re.IGNORECASE)
    return bool(match and match.group(1).upper() != "NULL") or bool(
        re.search(r"\bON UPDATE\b", definition, re.IGNORECASE)
    )


def is_widening(old: Column, new: Column) -> bool:
    """Whether changing a target column from ``old`` to ``new`` loses no stored value."""
    # utf8mb4 holds every character of every other character set; anything else must stay the same.
    charset_ok = old.charset == new.charset or new.charset == "utf8mb4"
    if normalized_type(old.column_type) == normalized_type(new.column_type):
        return charset_ok  # also a collation change within a character set: the bytes stay
    o_base, o_args, o_uns = _parse_type(old.column_type)
    n_base, n_args, n_uns = _parse_type(new.column_type)
    if o_base in _INTEGER_RANK and n_base in _INTEGER_RANK:
        if o_uns == n_uns:
            return _INTEGER_RANK[n_base] >= _INTEGER_RANK[o_base]
        return (not n_uns) and _INTEGER_RANK[n_base] > _INTEGER_RANK[o_base]
    if o_base == "decimal" and n_base == "decimal" and o_uns == n_uns:
        op, os_ = (int(o_args[0]), int(o_args[1]) if len(o_args) > 1 else 0) if o_args else (10, 0)
        np_, ns = (int(n_args[0]), int(n_args[1]) if len(n_args) > 1 else 0) if n_args else (10, 0)
        return ns >= os_ and (np_ - ns) >= (op - os_)
    if (o_base, n_base) == ("float", "double"):
        return True
    if o_base in {"varchar", "char"} and n_base in {"varchar", "char"} and charset_ok:
        return int(n_args[0]) >= int(o_args[0]) and not (o_base == "varchar" and n_base == "char")
    if o_base in {"varchar", "char"} | set(_TEXT_RANK) and n_base in _TEXT_RANK and charset_ok:
        return o_base not in _TEXT_RANK or _TEXT_RANK[n_base] >= _TEXT_RANK[o_base]
    if o_base in {"varbinary", "binary"} and n_base == "varbinary":
        return int(n_args[0]) >= int(o_args[0])
    if o_base in {"varbinary", "binary"} | set(_BLOB_RANK) and n_base in _BLOB_RANK:
        return o_base not in _BLOB_RANK or _BLOB_RANK[n_base] >= _BLOB_RANK[o_base]
    if o_base == n_base and o_base in {"datetime", "timestamp", "time"}:
        return int((n_args or ["0"])[0]) >= int((o_args or ["0"])[0])
    if o_base == n_base and o_base in {"enum", "set"} and charset_ok:
        # The server maps stored values by name when the member list changes, so every existing
        # member kept (anywhere in the list) loses nothing; a removed one would.
        return set(o_args) <= set(n_args)
    if o_base == n_base == "bit":
        return int(n_args[0]) >= int(o_args[0])
    return False


def ensure_target_table(source: Connection, target: Connection, table: str) -> tuple[TableDefinition, SchemaChanges]:
    """Create or evolve the target table so every source column can be loaded exactly.

    Returns the source definition (used to build the extraction) and what changed.

    Raises:
        SchemaError: the source table is missing, has no key, or changed incompatibly.
    """
    if not table_exists(source, table):
        raise SchemaError(f"table {table!r} does not exist in the source database")
    source_def = describe_table(source, table)
    changes = SchemaChanges()
    if not table_exists(target, table):
        create_table_like_source(target, source_def, source=source)
        logger.info(
            "created target table %s from the source definition", table, extra=log_fields("SCHEMA_SYNC", "CREATE")
        )
        dependent = time_zone_dependent_generated_columns(source_def)
        if dependent:
            logger.warning(
                "%s: generated column(s) %s are computed from a TIMESTAMP column, whose "
                "value in an expression depends on the writing session's time zone; the target computes them in "
                "UTC, so they may differ from the source's",
                table, ", ".join(dependent),extra=log_fields("SCHEMA_SYNC", "GENERATED")
            )  # fmt: skip
        changes.created = True
        return source_def, changes
    check_target_engine(target, table)
    target_cols = {c.name.lower(): c for c in fetch_columns(target, table)}
    alters: list[str] = []
    previous: str | None = None
    target_def: TableDefinition | None = None
    for col in source_def.columns:
        existing = target_cols.get(col.name.lower())
        definition = source_def.definitions[col.name]
        if existing is None:
            position = f"AFTER {q(previous)}" if previous else "FIRST"
            alters.append(
                f"ADD COLUMN {q(col.name)} {translate_column_for(source, target, definition, table, col.name)} {position}"
            )
            changes.added.append(col.name)
            changes.needs_backfill = changes.needs_backfill or not col.generated
        elif not same_type(existing, column_for_target(source, target, col)):
            if not is_widening(existing, col):
                raise SchemaError(
                    f"table {table!r} column {col.name!r} changed in the source from {existing.describe()} "
                    f"to {col.describe()}, which could lose target data; alter the target column by hand "
                    f"(ALTER TABLE {table} MODIFY {col.name} ...) or drop the target table to reload it"
                )
            alters.append(
                f"MODIFY COLUMN {q(col.name)} {translate_column_for(source, target, definition, table, col.name)}"
            )
            changes.widened.append(f"{col.name}: {existing.column_type} -> {col.column_type}")
        elif existing.nullable is False and col.nullable:
            alters.append(
                f"MODIFY COLUMN {q(col.name)} {translate_column_for(source, target, definition, table, col.name)}"
            )
            changes.widened.append(f"{col.name}: NOT NULL -> NULL")
        elif col.generated or existing.generated:
            # A generated column's values follow its expression: a changed expression (or a column
            # that became or stopped being generated) takes the source's definition as it is.
            target_def = target_def or describe_table(target, table)
            if target_def.definitions.get(existing.name) != definition:
                alters.append(f"MODIFY COLUMN {q(col.name)} {definition}")
                changes.widened.append(f"{col.name}: generated as in the source")
        previous = col.name
    source_names = {c.name.lower() for c in source_def.columns}
    null_defaults: list[str] = []
    for name, existing in target_cols.items():
        if name in source_names:
            continue
        changes.kept_dropped.append(existing.name)
        target_def = target_def or describe_table(target, table)
        definition = target_def.definitions[existing.name]
        if not existing.nullable:
            # Keep the data but let rows without this column load: make it NULL-able.
            relaxed = re.sub(r"\bNOT NULL\b", "NULL", definition, count=1)
            alters.append(f"MODIFY COLUMN {q(existing.name)} {relaxed}")
        if _has_non_null_default(definition):
            # Rows loaded from now on did not come with a value: NULL, not a made-up default.
            null_defaults.append(f"ALTER COLUMN {q(existing.name)} SET DEFAULT NULL")
    if changes.kept_dropped:
        logger.warning(
            "%s: column(s) %s no longer exist in the source (dropped or renamed); "
            "kept in the target (data is never dropped), rows loaded from now on get NULL there",
            table,
            ", ".join(changes.kept_dropped),
            extra=log_fields("SCHEMA_SYNC", "DROPPED_COLUMN"),
        )
    if alters:
        target.exec_driver_sql(f"ALTER TABLE {q(table)} " + ", ".join(alters))
        logger.info(
            "%s: added %s, widened %s", table, changes.added, changes.widened, extra=log_fields("SCHEMA_SYNC", "ALTER")
        )
    if null_defaults:
        # A separate statement: MariaDB refuses MODIFY and ALTER COLUMN of one column in one ALTER.
        target.exec_driver_sql(f"ALTER TABLE {q(table)} " + ", ".join(null_defaults))
    drops, changes.unique_keys_to_add = unique_key_changes(source, target, table)
    if drops:
        # Before any row loads: a stale unique key would make the upsert overwrite another row.
        target.exec_driver_sql(f"ALTER TABLE {q(table)} " + ", ".join(f"DROP INDEX {q(name)}" for name in drops))
        logger.info(
            "%s: dropped unique key(s) %s the source no longer has",
            table,
            drops,
            extra=log_fields("SCHEMA_SYNC", "UNIQUE_KEYS"),
        )
    return source_def, changes


def time_zone_dependent_generated_columns(source_def: TableDefinition) -> list[str]:
    """Generated columns whose expression reads a TIMESTAMP column.

    A TIMESTAMP is converted to the session's time zone when an expression reads it, so such a
    column's stored or computed value depends on who wrote the row; the target's sessions run in
    UTC and cannot reproduce the source sessions' zones.
    """
    timestamps = [c.name for c in source_def.columns if c.data_type == "timestamp"]
    if not timestamps:
        return []
    found: list[str] = []
    for col in source_def.columns:
        definition = source_def.definitions.get(col.name, "")
        if col.generated and any(q(name) in definition for name in timestamps):
            found.append(col.name)
    return found


def add_unique_keys(target: Connection, table: str, clauses: list[str]) -> bool:
    """Add the unique keys the source gained (after the cycle's rows loaded); True when added.

    A duplicate (1062) means the target still holds values the source no longer has -- typically
    rows deleted in the source that ``deletes: ignore`` keeps. That is logged, not fatal: the keys
    are tried again at the next full schema check, and upserts stay exact without them.
    """
    if not clauses:
        return True
    try:
        target.exec_driver_sql(f"ALTER TABLE {q(table)} " + ", ".join(clauses))
    except DBAPIError as exc:
        if mysql_error_code(exc) not in DUPLICATE_KEY_CODES:
            raise
        logger.warning(
            "%s: cannot add the source's unique key(s) yet (%s): the target holds "
            "duplicate values the source no longer has (rows deleted there are kept with deletes: ignore); "
            "retried at the next schema check",
            table, describe_error(exc),extra=log_fields("SCHEMA_SYNC", "UNIQUE_KEYS")
        )  # fmt: skip
        return False
    logger.info("%s: added %s", table, ", ".join(clauses), extra=log_fields("SCHEMA_SYNC", "UNIQUE_KEYS"))
    return True
