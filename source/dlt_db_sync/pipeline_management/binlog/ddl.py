"""DDL in the binlog: which captured tables a statement touches, and what the stream does about it.

``ALTER TABLE`` (and index statements) evolve the target by the schema rules before the next rows;
``TRUNCATE`` asks the mass-delete guard; ``DROP TABLE`` and a ``RENAME`` away stop the table (target
kept, health failing, new snapshot at the next start); ``CREATE TABLE`` or a ``RENAME`` onto a
captured name takes a new snapshot. Statements on other tables cost one regular expression.
"""

from __future__ import annotations

import logging
import re

from dlt_db_sync.database.binlog_reader import DdlRecord
from dlt_db_sync.database.engines import quote_identifier as q
from dlt_db_sync.pipeline_management.binlog.apply import BatchApplier
from dlt_db_sync.pipeline_management.binlog.shared import StreamShared
from dlt_db_sync.pipeline_management.binlog.snapshot import Snapshots
from dlt_db_sync.pipeline_management.binlog.tables import BinlogTables
from dlt_db_sync.pipeline_management.delete_guard import MassDeleteRefused, check_deletes
from dlt_db_sync.schema_management.tables import add_unique_keys, ensure_target_table
from dlt_db_sync.utils.logging_setup import log_fields

logger = logging.getLogger("dlt_sync.binlog")

_NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_QUALIFIED = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_ALTER = re.compile(rf"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.I | re.S)
_ALTER_RENAME = re.compile(rf"\bRENAME\s+(?:TO\s+|AS\s+)?{_QUALIFIED}\s*$", re.I | re.S)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?{_QUALIFIED}", re.I | re.S)
_DROP = re.compile(r"^DROP\s+(?:TEMPORARY\s+)?TABLES?\s+(?:IF\s+EXISTS\s+)?(.+)$", re.I | re.S)
_RENAME = re.compile(r"^RENAME\s+TABLES?\s+(.+)$", re.I | re.S)
_CREATE = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QUALIFIED}", re.I | re.S
)
_INDEX = re.compile(
    rf"^(?:CREATE|DROP)\s+(?:OR\s+REPLACE\s+)?(?:ONLINE\s+)?(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?INDEX\s+.+?\s+ON\s+{_QUALIFIED}",
    re.I | re.S,
)
_COMMENT = re.compile(r"/\*(?!!).*?\*/", re.S)


def _split_name(text: str, default_schema: str) -> tuple[str, str]:
    parts = [p[1:-1].replace("``", "`") if p.startswith("`") else p for p in re.findall(_NAME, text)]
    if len(parts) >= 2:
        return parts[0], parts[-1]
    return default_schema, parts[0]


def parse_ddl(query: str, schema: str) -> list[tuple[str, str, str, str | None]]:
    """``(action, schema, table, other)`` for each table a statement touches.

    Actions: ``alter``, ``truncate``, ``drop``, ``create``, ``rename`` (``other``: the new name).
    Unknown statements give an empty list.
    """
    text = _COMMENT.sub(" ", query).strip()
    for pattern, action in ((_TRUNCATE, "truncate"), (_CREATE, "create"), (_INDEX, "alter")):
        match = pattern.match(text)
        if match:
            return [(action, *_split_name(match.group(1), schema), None)]
    match = _ALTER.match(text)
    if match:
        found_schema, table = _split_name(match.group(1), schema)
        renamed = _ALTER_RENAME.search(text[match.end() :])
        if renamed:
            return [("rename", found_schema, table, _split_name(renamed.group(1), schema)[1])]
        return [("alter", found_schema, table, None)]
    match = _DROP.match(text)
    if match:
        names = re.findall(_QUALIFIED, match.group(1).split("/*")[0])
        words = {"RESTRICT", "CASCADE", "WAIT", "NOWAIT"}
        return [("drop", *_split_name(n, schema), None) for n in names if n.upper() not in words and not n.isdigit()]
    match = _RENAME.match(text)
    if match:
        pairs = re.findall(rf"{_QUALIFIED}\s+TO\s+{_QUALIFIED}", match.group(1), re.I)
        return [("rename", *_split_name(a, schema), _split_name(b, schema)[1]) for a, b in pairs]
    return []


class DdlHandler:
    """Applies the DDL statements of the binlog to the captured tables (between batches)."""

    def __init__(
        self,
        shared: StreamShared,
        tables: BinlogTables,
        applier: BatchApplier,
        snapshots: Snapshots,
    ) -> None:
        self.engines = shared.engines
        self.settings = shared.settings
        self.tables = tables
        self.applier = applier
        self.snapshots = snapshots
        self.status = shared.status
        self.metrics = shared.metrics

    def handle(self, record: DdlRecord) -> None:
        """Act on ``record`` (the open batch is committed); the position moves past it when it touched a table."""
        schema = self.settings.source.name
        actions = [a for a in parse_ddl(record.query, record.schema) if a[1].lower() == schema.lower()]
        handled = False
        for action, _schema, table, other in actions:
            name = table.lower()
            if action == "rename" and other is not None:
                if name in self.tables.active:
                    self.tables.stop(name, f"renamed to {other!r} in the source")
                    handled = True
                if other.lower() in self.tables.specs:
                    self._resnapshot(other.lower(), f"{table!r} was renamed to it")
                    handled = True
                continue
            if name not in self.tables.specs:
                continue
            handled = True
            if action == "create":
                self._resnapshot(name, "created again in the source")
            elif name not in self.tables.active:
                continue
            elif action == "alter":
                self._evolve(name)
            elif action == "truncate":
                self._truncate(name)
            elif action == "drop":
                self.tables.stop(name, "dropped in the source")
        if handled:
            self.applier.store_position(record.position, 0)
            self.applier.position = record.position

    def _evolve(self, name: str) -> None:
        spec = self.tables.specs[name]
        with self.engines.source.connect() as source, self.engines.target.connect() as target:
            definition, changes = ensure_target_table(source, target, spec.table)
            target.commit()
            if changes.unique_keys_to_add:
                add_unique_keys(target, spec.table, changes.unique_keys_to_add)
        self.tables.definitions[name] = definition
        self.applier.forget_layouts(loader=True)
        logger.info(
            "%s: schema change in the binlog applied to the target (added %s, widened %s)",
            spec.table,
            changes.added or "-",
            changes.widened or "-",
            extra=log_fields("BINLOG", "DDL"),
        )

    def _truncate(self, name: str) -> None:
        spec = self.tables.specs[name]
        with self.engines.target.connect() as target:
            rows = int(target.exec_driver_sql(f"SELECT COUNT(*) FROM {q(spec.table)}").scalar() or 0)
            try:
                check_deletes(
                    spec, self.settings, target_rows=rows, deleting=rows, source_rows=0, what="TRUNCATE from the binlog"
                )
            except MassDeleteRefused as exc:
                self.status.delete_refused(spec.table, str(exc))
                if self.metrics is not None:
                    self.metrics.delete_refused(spec.table)
                self.tables.stop(name, str(exc))
                return
            target.exec_driver_sql(f"TRUNCATE TABLE {q(spec.table)}")
        logger.info("%s: TRUNCATE applied (%d rows)", spec.table, rows, extra=log_fields("BINLOG", "DDL"))

    def _resnapshot(self, name: str, reason: str) -> None:
        spec = self.tables.specs[name]
        logger.warning("%s: %s; taking a new snapshot", spec.table, reason, extra=log_fields("BINLOG", "DDL"))
        self.tables.active.discard(name)
        self.tables.stopped.discard(name)
        self.snapshots.snapshot(spec)
