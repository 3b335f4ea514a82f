"""The data model of a synced table: its columns (as information_schema describes them), its
definition, and what one schema check changed in the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GEOMETRY_TYPES = frozenset(
    {
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
    }
)
BLOB_TYPES = frozenset({"tinyblob", "blob", "mediumblob", "longblob"})
TEXT_BLOB_TYPES = frozenset({"tinytext", "text", "mediumtext", "longtext"})
# Types whose values travel as raw bytes: binary strings, blobs and geometry (WKB).
BYTES_TYPES = frozenset({"binary", "varbinary"}) | BLOB_TYPES | GEOMETRY_TYPES


@dataclass(frozen=True)
class Column:
    """One column as information_schema.COLUMNS describes it."""

    name: str
    data_type: str
    column_type: str
    nullable: bool
    charset: str | None
    collation: str | None
    generated: bool = False  # VIRTUAL/STORED generated: created in the target, never loaded

    def describe(self) -> str:
        """The type as a message shows it, with the character set and collation when it has them."""
        if self.charset is None:
            return self.column_type
        return f"{self.column_type} CHARACTER SET {self.charset} COLLATE {self.collation}"

    @property
    def is_binary(self) -> bool:
        """Values travel as raw bytes (binary strings, blobs, geometry)."""
        return self.data_type in BYTES_TYPES


@dataclass
class TableDefinition:
    """Columns (in order) and the ``SHOW CREATE TABLE`` text of one table."""

    name: str
    columns: list[Column]
    create_sql: str
    definitions: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def loaded_columns(self) -> list[Column]:
        """The columns whose values are extracted and loaded: all but generated ones, which
        each server computes itself (writing them fails with error 1906)."""
        return [c for c in self.columns if not c.generated]

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name.lower() == name.lower():
                return col
        return None


@dataclass
class SchemaChanges:
    """What :func:`ensure_target_table` did, for logs and tests."""

    created: bool = False
    added: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)
    kept_dropped: list[str] = field(default_factory=list)
    # ``ADD UNIQUE KEY`` clauses to apply once this cycle's rows are in (see add_unique_keys).
    unique_keys_to_add: list[str] = field(default_factory=list)
    # Added columns that hold stored values (not generated): rows outside the window have them too.
    needs_backfill: bool = False

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added or self.widened)
