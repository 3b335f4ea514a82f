"""The sanitization policy: what happens to a value the target cannot store.

By default (``error``) nothing is altered: a value the target refuses fails the table with a
:class:`DataError` naming the table, the column, how many values and what to do. With ``null``
(per table ``"sanitize": "null"`` in tables.json, or ``SANITIZE_POLICY=null``) those values, and
only those, become NULL in NULL-able columns; a NOT NULL column keeps failing.

Which values cannot be stored depends on the target session's ``sql_mode``, read from the server:
with ``NO_ZERO_DATE`` the zero date/datetime/timestamp, with ``NO_ZERO_IN_DATE`` a date with a zero
month or day. Everything happens in SQL on the loader's staging table: one aggregate query counts
the offending values per column before the ``INSERT ... SELECT``, whose value expressions wrap the
column in ``IF(<offending>, NULL, <value>)``. Nothing is decided per row in Python.

:class:`LoadPlan` also carries the one exact-transport detour that needs the staging table: the
invalid ENUM value ``''`` (index 0), which a strict target refuses to write, is loaded as a
placeholder and then set with a statement-scoped non-strict ``UPDATE`` of exactly that column
(``dialect.Dialect.with_sql_mode`` writes it for the target's flavor).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dlt_db_sync.config.settings import SanitizePolicy
from dlt_db_sync.data_processing.codec import (
    enum_error_value_placeholder,
    extract_expression,
    has_enum_error_value,
    load_expression,
)
from dlt_db_sync.database.dialect import Dialect
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.error_handling.errors import DataError
from dlt_db_sync.schema_management.model import Column
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.sanitization")

# The staged value is binary (LONGBLOB); MySQL 8 refuses REGEXP between a binary subject and a
# text pattern (error 3995), so the subject (an ASCII date text) is converted first, on every server.
# A DATE/DATETIME text that is the zero value, e.g. '0000-00-00' or '0000-00-00 00:00:00.000'.
_ZERO_DATE = "CONVERT({raw} USING utf8mb4) REGEXP '^0000-00-00( 00:00:00([.]0+)?)?$'"
# A DATE/DATETIME text with a zero month or day ('2020-00-10', '2020-01-00', '0000-00-00 10:00:00').
_ZERO_IN_DATE = "CONVERT({raw} USING utf8mb4) REGEXP '^[0-9]{{4}}-(00-|[0-9]{{2}}-00)'"


def sql_mode_flags(sql_mode: str) -> frozenset[str]:
    """The flags of a ``@@sql_mode`` value, upper-cased."""
    return frozenset(f.strip().upper() for f in sql_mode.split(",") if f.strip())


@dataclass(frozen=True)
class Check:
    """Values of one column the target cannot store: a SQL predicate on the staged raw value."""

    column: Column
    index: int
    predicate: str  # contains ``{raw}``
    reason: str

    def on(self, raw: str) -> str:
        """The predicate applied to the staged value ``raw``."""
        return "(" + self.predicate.format(raw=raw) + ")"


def unstorable_check(col: Column, index: int, flags: frozenset[str]) -> Check | None:
    """The check for ``col`` under a target ``sql_mode`` with ``flags``, or None when every value fits."""
    zero_date, zero_in_date = "NO_ZERO_DATE" in flags, "NO_ZERO_IN_DATE" in flags
    if col.data_type == "timestamp" and zero_date:
        # TIMESTAMP travels as its epoch; the zero timestamp is epoch 0.
        return Check(
            col,
            index,
            "CAST({raw} AS DECIMAL(20,6)) = 0",
            "zero timestamp, forbidden by the target sql_mode NO_ZERO_DATE",
        )
    if col.data_type not in {"date", "datetime"} or not (zero_date or zero_in_date):
        return None
    if zero_date and zero_in_date:
        return Check(
            col,
            index,
            f"{_ZERO_DATE} OR {_ZERO_IN_DATE}",
            "zero date or zero month/day, forbidden by the target sql_mode NO_ZERO_DATE,NO_ZERO_IN_DATE",
        )
    if zero_date:
        return Check(col, index, _ZERO_DATE, "zero date, forbidden by the target sql_mode NO_ZERO_DATE")
    return Check(
        col,
        index,
        f"{_ZERO_IN_DATE} AND NOT ({_ZERO_DATE})",
        "zero month or day, forbidden by the target sql_mode NO_ZERO_IN_DATE",
    )


@dataclass
class SanitizeCounter:
    """Values set to NULL per column over one load, with the reason, logged once per cycle."""

    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, counts: Mapping[str, int], reasons: Mapping[str, str]) -> None:
        """Add the (committed) counts of one chunk."""
        for name, n in counts.items():
            if n:
                self.counts[name] = self.counts.get(name, 0) + n
                self.reasons[name] = reasons[name]

    def log(self, table: str) -> None:
        """One WARNING per altered column of ``table``."""
        for name, n in self.counts.items():
            logger.warning(
                "%s.%s: %d value(s) set to NULL (%s)",
                table,
                name,
                n,
                self.reasons[name],
                extra=log_fields("DATA_PROCESSING", "SANITIZE"),
            )


class LoadPlan:
    """How the staged values of one table's columns become target values under a policy."""

    def __init__(self, table: str, columns: Sequence[Column], policy: SanitizePolicy, sql_mode: str) -> None:
        self.table = table
        self.columns = list(columns)
        self.policy = policy
        self.sql_mode = sql_mode
        flags = sql_mode_flags(sql_mode)
        self.checks = [c for c in (unstorable_check(col, i, flags) for i, col in enumerate(self.columns)) if c]
        self.enum_columns = [i for i, col in enumerate(self.columns) if has_enum_error_value(col)]
        self._non_strict_mode = ",".join(f for f in sql_mode.split(",") if f and not f.upper().startswith("STRICT_"))

    def needs_stage(self, chunk: pa.Table) -> bool:
        """Whether ``chunk`` must go through the staging table (a direct ``LOAD DATA`` cannot apply the plan)."""
        if self.checks:
            return True
        for i in self.enum_columns:
            array = chunk.column(i)
            if array.null_count < len(array) and pc.any(pc.equal(pc.binary_length(array), 0)).as_py():
                return True
        return False

    def count_sql(self, stage: str) -> str | None:
        """One aggregate query counting the unstorable values per checked column, or None."""
        if not self.checks:
            return None
        sums = ", ".join(f"SUM({c.on(f'c{c.index}')})" for c in self.checks)
        return f"SELECT {sums} FROM {q(stage)}"

    def counts(self, row: Sequence[Any] | None) -> dict[str, int]:
        """Column name -> offending values, from the row of :meth:`count_sql`."""
        values = list(row or [None] * len(self.checks))
        return {c.column.name: int(v or 0) for c, v in zip(self.checks, values, strict=True)}

    def reasons(self) -> dict[str, str]:
        """Column name -> why its values cannot be stored."""
        return {c.column.name: c.reason for c in self.checks}

    def refuse(self, counts: Mapping[str, int]) -> None:
        """Raise :class:`DataError` when the policy does not allow storing the counted values.

        Raises:
            DataError: naming the table, each column, the count, the reason and what to do.
        """
        blocked = [
            f"column {c.column.name!r}: {counts[c.column.name]} value(s), {c.reason}"
            for c in self.checks
            if counts.get(c.column.name) and not (self.policy == "null" and c.column.nullable)
        ]
        if not blocked:
            return
        if self.policy == "null":
            advice = (
                "these columns are NOT NULL, so the null policy cannot apply; allow the values in TARGET_SQL_MODE "
                "or make the columns NULL-able in the source"
            )
        else:
            advice = (
                'set "sanitize": "null" for this table in tables.json (or SANITIZE_POLICY=null) to store NULL '
                "instead, or allow the values in TARGET_SQL_MODE"
            )
        raise DataError(f"table {self.table!r}: the target cannot store {'; '.join(blocked)}. To go on, {advice}")

    def value_expressions(self, raws: Sequence[str]) -> list[str]:
        """The SELECT list turning staged values ``raws`` into target values under the policy."""
        expressions = [load_expression(col, raw) for col, raw in zip(self.columns, raws, strict=True)]
        for i in self.enum_columns:
            placeholder = enum_error_value_placeholder(self.columns[i])
            expressions[i] = f"IF({raws[i]} = '', {placeholder}, {expressions[i]})"
        if self.policy == "null":
            for check in self.checks:
                if check.column.nullable:
                    i = check.index
                    expressions[i] = f"IF({check.on(raws[i])}, NULL, {expressions[i]})"
        return expressions

    def fixup_statements(self, target: str, stage: str, key: Sequence[str], dialect: Dialect) -> list[str]:
        """Statements run after the ``INSERT ... SELECT`` to write the invalid ENUM value ``''`` exactly.

        A strict target refuses ``''`` for an ENUM without that member, so it was loaded as a
        placeholder; a non-strict ``UPDATE`` of only that column (joined to the staged rows on the
        key) writes the error value, which is the one alteration non-strict mode makes there.
        """
        if not self.enum_columns:
            return []
        index = {col.name.lower(): i for i, col in enumerate(self.columns)}
        join = " AND ".join(
            f"t.{q(name)} = {load_expression(self.columns[index[name.lower()]], f's.c{index[name.lower()]}')}"
            for name in key
        )
        statements: list[str] = []
        for i in self.enum_columns:
            update = f"UPDATE {q(target)} AS t JOIN {q(stage)} AS s ON {join} SET t.{q(self.columns[i].name)} = '' WHERE s.c{i} = ''"
            statements += dialect.with_sql_mode(self._non_strict_mode, update, self.sql_mode)
        return statements


def stored_values(columns: Sequence[Column], policy: SanitizePolicy, sql_mode: str) -> dict[str, str]:
    """Column name -> an SQL expression, over the source row, of the value the target stores.

    Only the columns the ``null`` policy may alter appear: there a value the target cannot store
    becomes NULL. Comparisons of source and target (the incremental window check) hash these
    expressions on the source side, so a deliberate alteration does not look like a change.
    """
    if policy != "null":
        return {}
    flags = sql_mode_flags(sql_mode)
    values: dict[str, str] = {}
    for index, col in enumerate(columns):
        check = unstorable_check(col, index, flags)
        if check is not None and col.nullable:
            # The predicates read the transported text; '%' doubled for statements with parameters.
            raw = extract_expression(col).replace("%", "%%")
            values[col.name] = f"IF({check.on(raw)}, NULL, {q(col.name).replace('%', '%%')})"
    return values
