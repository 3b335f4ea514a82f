"""``SHOW CREATE TABLE`` text of one server rewritten so the other server can execute it.

Source and target may be different flavors (MySQL <-> MariaDB) or versions (MySQL 8 -> 5.7,
MariaDB 11.4 -> 10.6). What one side prints and the other does not know is mapped to the
nearest equivalent, each time with a WARNING naming the table and the column:

* collations: ``utf8mb4_0900_*`` (MySQL 8; MariaDB only from 11.4.5), ``utf8mb4_uca1400_*``
  (MariaDB 10.10+), ``*_nopad_*`` (MariaDB), ``utf8mb3_*`` names (MySQL 8.0.30+, MariaDB 10.6+);
* types: MariaDB ``INET6`` / ``UUID`` / ``INET4`` become their text form on servers without them;
  MariaDB's JSON (``LONGTEXT ... CHECK (json_valid(c))``) becomes MySQL's ``JSON``; MySQL 8's
  ``geomcollection`` becomes ``geometrycollection``; integer display widths go where MySQL
  8.0.19+ deprecates them;
* defaults: ``current_timestamp()`` -> ``CURRENT_TIMESTAMP`` for MySQL; expression defaults and
  literal defaults of TEXT/BLOB columns that the other flavor cannot take are dropped (every
  synced row brings its own value, so the target never needs them);
* column attributes: ``INVISIBLE`` (MariaDB, MySQL 8.0.23+), ``SRID`` (MySQL 8) vs
  ``REF_SYSTEM_ID`` (MariaDB), ``PERSISTENT`` -> ``STORED``; index attributes ``INVISIBLE`` /
  ``IGNORED``, functional index parts (MySQL 8.0.13+);
* table options one flavor only knows; a non-InnoDB engine becomes InnoDB (the loader needs
  transactions).

Same flavor and version in, the text comes out unchanged.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Connection

from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.error_handling.errors import SchemaError
from dlt_db_sync.schema_management.model import BLOB_TYPES, GEOMETRY_TYPES, TEXT_BLOB_TYPES
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.ddl_translation")

_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'")
_MASK = re.compile("\x00(\\d+)\x00")
_TYPE = re.compile(r"^([a-z][a-z0-9]*)(\((?:[^()]|\([^()]*\))*\))?", re.IGNORECASE)
_CURRENT_TIMESTAMP = re.compile(r"\bcurrent_timestamp\(\s*(\d*)\s*\)", re.IGNORECASE)
_DEFAULT = re.compile(
    r"\sDEFAULT\s+(\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)|[\w.+-]+\((?:[^()]|\([^()]*\))*\)|\x00\d+\x00|[^\s,]+)",
    re.IGNORECASE,
)
_JSON_CHECK = re.compile(r"\s*CHECK\s*\(json_valid\(`(?:[^`]|``)+`\)\)", re.IGNORECASE)
_CHARSET = re.compile(r"\b(CHARACTER SET|CHARSET)(\s*=?\s*)(\w+)", re.IGNORECASE)
_COLLATE = re.compile(r"\b(COLLATE)(\s*=?\s*)(\w+)", re.IGNORECASE)
# Types that cannot have a literal DEFAULT in MySQL (MariaDB allows it).
_BLOB_LIKE = TEXT_BLOB_TYPES | BLOB_TYPES | GEOMETRY_TYPES | {"json"}
_INTEGERS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
# MariaDB data types MySQL does not have, with their text form (what the daemon transports).
_MARIADB_TYPES = {
    "inet6": ("varchar(39)", (10, 5, 0)),
    "uuid": ("char(36)", (10, 7, 0)),
    "inet4": ("varchar(15)", (11, 3, 0)),
}
_ASCII = " CHARACTER SET ascii COLLATE ascii_general_ci"
_TABLE_OPTIONS_MARIADB_ONLY = re.compile(
    r"\s+(PAGE_CHECKSUM|TRANSACTIONAL|PAGE_COMPRESSED|PAGE_COMPRESSION_LEVEL|ENCRYPTED|ENCRYPTION_KEY_ID|IETF_QUOTES|SEQUENCE)"
    r"\s*=\s*('[^']*'|\S+)|\s+WITH SYSTEM VERSIONING",
    re.IGNORECASE,
)
_TABLE_OPTIONS_MYSQL_ONLY = re.compile(
    r"\s+(COMPRESSION|ENCRYPTION|SECONDARY_ENGINE|AUTOEXTEND_SIZE|ENGINE_ATTRIBUTE|SECONDARY_ENGINE_ATTRIBUTE)\s*=\s*('[^']*'|\S+)"
    r"|\s+/\*!\d{5}\s+(TABLESPACE|STORAGE)\b[^*]*\*/",
    re.IGNORECASE,
)


@dataclass
class Translation:
    """The translated statement and the warnings it produced."""

    sql: str
    warnings: list[str] = field(default_factory=list)


def _mask(text: str) -> tuple[str, list[str]]:
    """Replace every quoted literal by a placeholder, so rewrites never touch string contents."""
    literals: list[str] = []

    def keep(match: re.Match[str]) -> str:
        literals.append(match.group(0))
        return f"\x00{len(literals) - 1}\x00"

    return _QUOTED.sub(keep, text), literals


def _unmask(text: str, literals: list[str]) -> str:
    return _MASK.sub(lambda m: literals[int(m.group(1))], text)


# --------------------------------------------------------------------------- collations
def _collation_exists(name: str, target: Dialect) -> bool:
    lowered = name.lower()
    if "_uca1400_" in lowered:
        return target.mariadb_at_least(10, 10)
    if "_0900_" in lowered:
        return target.mysql_at_least(8, 0, 1) or target.mariadb_at_least(11, 4, 5)
    if "_nopad_" in lowered:
        return target.is_mariadb
    if lowered.startswith("utf8mb3_"):
        return target.mysql_at_least(8, 0, 30) or target.mariadb_at_least(10, 6, 1)
    return True


def _nearest_collation(name: str, target: Dialect) -> str:
    """The closest collation ``target`` has to ``name`` (``name`` itself when it exists)."""
    lowered = name.lower()
    if _collation_exists(lowered, target):
        return lowered
    charset = lowered.split("_", 1)[0]
    if charset == "utf8mb3" and not _collation_exists(lowered, target):
        return _nearest_collation("utf8_" + lowered.split("_", 1)[1], target)
    if "_nopad_" in lowered:
        return _nearest_collation(lowered.replace("_nopad_", "_"), target)
    # MySQL's 0900 collations are NO PAD ('a' and 'a ' differ, also in unique keys): on MariaDB
    # their NO PAD counterparts keep such keys apart.
    nopad = "_0900_" in lowered and target.is_mariadb
    if lowered.endswith("_bin"):
        return f"{charset}_nopad_bin" if nopad else f"{charset}_bin"
    sensitive = lowered.endswith("_cs")
    accent = "as" if "_as_" in lowered or sensitive else "ai"
    if "_uca1400_" in lowered and target.mysql_at_least(8, 0, 1) and charset == "utf8mb4":
        return f"utf8mb4_0900_{accent}_{'cs' if sensitive else 'ci'}"
    if nopad and target.mariadb_at_least(10, 10) and charset == "utf8mb4":
        return f"utf8mb4_uca1400_nopad_{accent}_{'cs' if sensitive else 'ci'}"
    if nopad:
        return f"{charset}_nopad_bin" if sensitive else f"{charset}_unicode_520_nopad_ci"
    return f"{charset}_bin" if sensitive else f"{charset}_unicode_520_ci"


def _charset_name(name: str, target: Dialect) -> str:
    if name.lower() == "utf8mb3" and not (target.mysql_at_least(8, 0, 30) or target.mariadb_at_least(10, 6, 1)):
        return "utf8"
    return name


def _translate_charsets(text: str, target: Dialect, warn: Callable[[str], None]) -> str:
    def collation(match: re.Match[str]) -> str:
        name = match.group(3)
        nearest = _nearest_collation(name, target)
        if nearest == name.lower():
            return match.group(0)
        if nearest != "utf8_" + name.lower().split("_", 1)[-1]:  # utf8mb3_x -> utf8_x is the same collation
            warn(
                f"collation {name} does not exist on {target.label}; using the nearest, {nearest} (sorting and comparison may differ)"
            )
        return f"{match.group(1)}{match.group(2)}{nearest}"

    text = _COLLATE.sub(collation, text)
    return _CHARSET.sub(lambda m: f"{m.group(1)}{m.group(2)}{_charset_name(m.group(3), target)}", text)


# --------------------------------------------------------------------------- columns
def _is_expression_default(value: str) -> bool:
    if value.startswith("("):
        return True
    return bool(re.match(r"[a-z_]\w*\(", value, re.IGNORECASE)) and not _CURRENT_TIMESTAMP.fullmatch(value)


def translate_column(definition: str, source: Dialect, target: Dialect, warn: Callable[[str], None]) -> str:
    """One column definition (after its name) rewritten for ``target``."""
    text, literals = _mask(definition)
    match = _TYPE.match(text)
    base = match.group(1).lower() if match else ""
    rest = text[match.end() :] if match else text
    type_sql = match.group(0) if match else ""
    cross = source.flavor != target.flavor

    if base in _MARIADB_TYPES and not target.mariadb_at_least(*_MARIADB_TYPES[base][1]):
        type_sql = _MARIADB_TYPES[base][0] + _ASCII
        warn(f"type {base.upper()} does not exist on {target.label}; stored as its text form {type_sql.split(' ')[0]}")
    elif base == "longtext" and _JSON_CHECK.search(rest) and target.is_mysql:
        type_sql = "json"
        rest = _JSON_CHECK.sub("", rest)
        rest = _CHARSET.sub("", _COLLATE.sub("", rest))
        rest = re.sub(r"\s{2,}", " ", rest)
    elif base == "geomcollection" and not target.mysql_at_least(8, 0, 11):
        type_sql = "geometrycollection"
    elif base in _INTEGERS | {"year"} and target.mysql_at_least(8, 0, 19) and match and match.group(2):
        if not (base == "tinyint" and match.group(2) == "(1)") and "zerofill" not in rest.lower():
            type_sql = base  # MySQL 8.0.19+ deprecates display widths (warning 1681); they change nothing

    rest = _translate_charsets(rest, target, warn)

    if target.is_mysql:
        rest = _CURRENT_TIMESTAMP.sub(
            lambda m: f"CURRENT_TIMESTAMP({m.group(1)})" if m.group(1) else "CURRENT_TIMESTAMP", rest
        )
        rest = re.sub(r"\bPERSISTENT\b", "STORED", rest)
    default = _DEFAULT.search(rest)
    if default:
        value = default.group(1)
        is_literal = (
            value.upper() != "NULL" and not _CURRENT_TIMESTAMP.fullmatch(value) and value.upper() != "CURRENT_TIMESTAMP"
        )
        expression = _is_expression_default(value)
        # Across flavors the functions differ; MySQL < 8.0.13 has no expression defaults at all,
        # and MySQL refuses a literal default on TEXT/BLOB/JSON/GEOMETRY (error 1101).
        unsupported = target.is_mysql and not target.at_least(8, 0, 13) and expression
        if (cross and (expression or (base in _BLOB_LIKE and is_literal and target.is_mysql))) or unsupported:
            rest = rest[: default.start()] + rest[default.end() :]
            warn(
                f"default {_unmask(value, literals)} cannot be carried to {target.label}; dropped (synced rows bring their own values)"
            )

    if re.search(r"/\*!80023 INVISIBLE \*/", rest):
        replacement = " INVISIBLE" if target.is_mariadb or target.at_least(8, 0, 23) else ""
        rest = re.sub(r"\s*/\*!80023 INVISIBLE \*/", replacement, rest)
    elif re.search(r"\sINVISIBLE\b", rest) and not (target.is_mariadb or target.at_least(8, 0, 23)):
        rest = re.sub(r"\s+INVISIBLE\b", "", rest)
        warn(f"invisible columns do not exist on {target.label}; the column is visible there")

    srid = re.search(r"\s*/\*!80003 SRID (\d+) \*/|\s+REF_SYSTEM_ID=(\d+)", rest)
    if srid and not (srid.group(1) and target.mysql_at_least(8, 0, 3)):  # MySQL's own spelling stays
        number = srid.group(1) or srid.group(2)
        replacement = ""
        if target.is_mariadb:
            type_sql += f" REF_SYSTEM_ID={number}"  # MariaDB takes it only right after the type
        elif target.at_least(8, 0, 3):
            replacement = f" SRID {number}"
        else:
            warn(f"SRID {number} cannot be declared on {target.label}; the column accepts any SRID there")
        rest = rest[: srid.start()] + replacement + rest[srid.end() :]
    return _unmask(type_sql + rest, literals)


# --------------------------------------------------------------------------- keys and options
def translate_key(line: str, target: Dialect, warn: Callable[[str], None]) -> str | None:
    """An index or constraint line for ``target``, or None when the target cannot have it."""
    text = line
    if target.is_mariadb:
        if _INDEX_LINE.match(text) and re.search(r"\(\(|,\s*\(", text):
            warn(f"functional index parts do not exist on {target.label}; index left out: {line.strip()}")
            return None
        text = re.sub(r"\s*/\*!80000 INVISIBLE \*/", " IGNORED" if target.at_least(10, 6) else "", text)
    elif not target.at_least(8):
        text = re.sub(r"\s*/\*!80000 INVISIBLE \*/", "", text)  # a MySQL 8 comment 5.7 would skip anyway
    if target.is_mysql and re.search(r"\sIGNORED\b", text):
        text = re.sub(r"\s+IGNORED\b", " /*!80000 INVISIBLE */" if target.at_least(8) else "", text)
    if target.is_mysql and re.search(r"CHECK\s*\(json_valid\(", text, re.IGNORECASE):
        return None  # the column became MySQL's JSON, which validates by itself
    return text


def translate_table_options(line: str, source: Dialect, target: Dialect, warn: Callable[[str], None]) -> str:
    """The closing ``) ENGINE=... DEFAULT CHARSET=...`` line for ``target``."""
    text, literals = _mask(line)
    engine = re.search(r"\bENGINE=(\w+)", text)
    if engine and engine.group(1).lower() != "innodb":
        warn(f"engine {engine.group(1)} replaced by InnoDB (the loader needs transactions)")
        text = text[: engine.start()] + "ENGINE=InnoDB" + text[engine.end() :]
        text = re.sub(r"\s+ROW_FORMAT=PAGE\b", "", text, flags=re.IGNORECASE)
    pattern = _TABLE_OPTIONS_MARIADB_ONLY if target.is_mysql else _TABLE_OPTIONS_MYSQL_ONLY
    for option in pattern.finditer(text):
        warn(f"table option {_unmask(option.group(0).strip(), literals)} does not exist on {target.label}; left out")
    text = pattern.sub("", text)
    text = _translate_charsets(text, target, warn)
    return _unmask(text, literals)


# --------------------------------------------------------------------------- statements
_INDEX_LINE = re.compile(r"^\s*(UNIQUE |FULLTEXT |SPATIAL )?KEY\b")
_COLUMN_LINE = re.compile(r"^(\s*)`((?:[^`]|``)+)`(\s+)(.*?)(,?)$")


def translate_create_table(create_sql: str, source: Dialect, target: Dialect, table: str) -> Translation:
    """``create_sql`` (from ``source``) rewritten for ``target``; warnings name table and column."""
    result = Translation(create_sql)
    if source == target:
        return result
    lines = create_sql.splitlines()
    out = [lines[0]]
    body_done = False
    for line in lines[1:]:
        if body_done or line.startswith(")"):
            body_done = True
            out.append(
                translate_table_options(line, source, target, lambda m: result.warnings.append(f"table {table}: {m}"))
            )
            continue
        column = _COLUMN_LINE.match(line)
        if column:
            name = column.group(2).replace("``", "`")
            definition = translate_column(
                column.group(4),
                source,
                target,
                functools.partial(_append_warning, result.warnings, f"table {table} column {name}"),
            )
            out.append(f"{column.group(1)}`{column.group(2)}`{column.group(3)}{definition}{column.group(5)}")
            continue
        key = translate_key(line, target, lambda m: result.warnings.append(f"table {table}: {m}"))
        if key is not None:
            out.append(key)
    # A line left out may have been the last of the body: no dangling comma before ")".
    for i in range(1, len(out)):
        if out[i].startswith(")") and out[i - 1].rstrip().endswith(","):
            out[i - 1] = out[i - 1].rstrip().rstrip(",")
            break
    result.sql = "\n".join(out)
    return result


def translate_for(source_bind: object, target_bind: object, create_sql: str, table: str) -> str:
    """``create_sql`` from the source connection's server for the target's; warnings logged."""
    translation = translate_create_table(create_sql, Dialect.of(source_bind), Dialect.of(target_bind), table)
    for message in translation.warnings:
        logger.warning("%s", message, extra=log_fields("SCHEMA_SYNC", "DIALECT"))
    return translation.sql


def column_for_target(source_bind: object, target_bind: object, col: Any) -> Any:
    """A source ``schema_management.Column`` with the collation the target gets for it (for comparisons)."""
    if col.collation is None:
        return col
    nearest = _nearest_collation(col.collation, Dialect.of(target_bind))
    return col if nearest == col.collation.lower() else replace(col, collation=nearest)


def translate_column_for(source_bind: object, target_bind: object, definition: str, table: str, column: str) -> str:
    """One column definition from the source's server for the target's; warnings logged."""
    return translate_column(
        definition,
        Dialect.of(source_bind),
        Dialect.of(target_bind),
        lambda m: logger.warning(
            "table %s column %s: %s", table, column, m, extra=log_fields("SCHEMA_SYNC", "DIALECT")
        ),
    )


# --------------------------------------------------------------------------- comparisons
_TEXT_FORMS = {
    "inet6": "varchar(39)",
    "uuid": "char(36)",
    "inet4": "varchar(15)",
    "json": "longtext",
    "geomcollection": "geometrycollection",
}
_SAME_CHARSET = {"utf8mb3": "utf8"}


def portable_type(column_type: str) -> str:
    """A column type as the other flavor stores it after :func:`translate_column` (for comparisons)."""
    text = column_type.strip()
    return _TEXT_FORMS.get(text.lower(), text)  # ENUM/SET members keep their case: it is data


def _alias(name: str | None) -> str | None:
    """utf8 and utf8mb3 (and their collations) are one character set under two names."""
    if name is None:
        return None
    lowered = name.lower()
    return (
        "utf8_" + lowered[len("utf8mb3_") :] if lowered.startswith("utf8mb3_") else _SAME_CHARSET.get(lowered, lowered)
    )


def equivalent_columns(old: Any, new: Any) -> bool:
    """Whether a target column (``old``) is what :func:`translate_column` makes of the source column ``new``.

    A mapped type (JSON, INET6, UUID, ...) carries the mapping's character set; otherwise type,
    character set and collation must be the same up to the utf8/utf8mb3 naming.
    """
    old_type, new_type = normalized(old.column_type), normalized(new.column_type)
    if portable_type(old_type) != portable_type(new_type):
        return False
    if portable_type(new_type) != new_type or portable_type(old_type) != old_type:
        return True
    return _alias(old.charset) == _alias(new.charset) and _alias(old.collation) == _alias(new.collation)


def normalized(column_type: str) -> str:
    """``column_type`` without the integer/YEAR display width (MySQL 8.0.19+ prints none)."""
    return re.sub(r"^(tinyint|smallint|mediumint|int|bigint|year)\(\d+\)", r"\1", column_type.strip())


def check_target_engine(target: Connection, table: str) -> None:
    """Refuse an existing target table that is not InnoDB (loads rely on transactions).

    Raises:
        SchemaError: naming the table, its engine and the fix.
    """
    engine = target.exec_driver_sql(
        "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,)
    ).scalar()
    if engine is not None and str(engine).lower() != "innodb":
        raise SchemaError(
            f"target table {table!r} uses the {engine} engine; the daemon needs InnoDB (transactions): "
            f"ALTER TABLE {table} ENGINE=InnoDB on the target, or drop it to have it recreated"
        )


def _append_warning(warnings: list[str], where: str, message: str) -> None:
    """Collect a translation warning about ``where`` (a table or one of its columns)."""
    warnings.append(f"{where}: {message}")
