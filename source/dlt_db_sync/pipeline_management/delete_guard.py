"""The mass-delete guard: no deleting path removes a large share of a target table by accident.

Every path that removes target rows (delete reconciliation, ``--verify --repair``, a full
refresh's repair by chunks or shadow swap, the continuous verification sweep) asks
:func:`check_deletes` before it writes. It refuses, with :class:`MassDeleteRefused`, when

* the source reads 0 rows while the target holds some (an emptied source, a restore in
  progress, a wrong ``SOURCE_DB_NAME``), unless the table has ``"allow_empty_source": true``;
* or the rows to remove exceed ``max_delete_ratio`` of the target's rows (tables.json, per
  table; default ``MAX_DELETE_RATIO``, 0.5; ``1.0`` turns the ratio check off).

A refusal is raised before anything is written, so the target stays exactly as it was.
"""

from __future__ import annotations

from dlt_db_sync.config.settings import Settings
from dlt_db_sync.config.tables import TableSpec
from dlt_db_sync.error_handling.errors import TerminalError


class MassDeleteRefused(TerminalError):
    """A deleting path would remove more of a target table than its guard allows (never retried)."""

    def __init__(self, message: str, table: str) -> None:
        super().__init__(message)
        self.table = table


def delete_ratio(spec: TableSpec, settings: Settings) -> float:
    """The table's ``max_delete_ratio`` from tables.json, else the global ``MAX_DELETE_RATIO``."""
    return settings.max_delete_ratio if spec.max_delete_ratio is None else spec.max_delete_ratio


def check_deletes(
    spec: TableSpec, settings: Settings, *, target_rows: int, deleting: int, source_rows: int, what: str
) -> None:
    """Raise :class:`MassDeleteRefused` unless ``what`` may remove ``deleting`` of ``target_rows`` rows.

    ``source_rows`` is what the source holds over the same range (0 means the source reads empty).
    """
    if deleting <= 0 or target_rows <= 0:
        return
    table = spec.table
    if source_rows <= 0:
        if spec.allow_empty_source:
            return
        raise MassDeleteRefused(
            f"table {table!r}: {what} refused: the source reads 0 rows and the target holds {target_rows}; "
            f'the target is left as it was (set "allow_empty_source": true for this table in tables.json '
            "to let an empty source empty it)",
            table,
        )
    ratio = delete_ratio(spec, settings)
    if ratio >= 1.0 or deleting <= ratio * target_rows:
        return
    setting = "its max_delete_ratio" if spec.max_delete_ratio is not None else "MAX_DELETE_RATIO"
    raise MassDeleteRefused(
        f"table {table!r}: {what} refused: it would remove {deleting} of the target's {target_rows} rows "
        f"(source {source_rows} rows), more than {setting} {ratio:g} allows; the target is left as it was "
        f'(raise "max_delete_ratio" for this table in tables.json, up to 1.0, or MAX_DELETE_RATIO, to allow it)',
        table,
    )
