"""Binlog decoding helpers (issue 16): the packed formats MySQL and MariaDB write, decoded exactly."""

from __future__ import annotations

from typing import Any

from dlt_db_sync.data_processing.binlog_rows import _decimal_text, _sql_literal_body, _time2_text, to_utf8mb4
from dlt_db_sync.database.binlog_reader import BinlogPosition, granted_global_privileges


def test_decimal_positive_negative_and_tiny() -> None:
    # DECIMAL(5,2): 3 integer digits in 2 bytes, 2 fraction digits in 1 byte, sign in the top bit.
    assert _decimal_text(bytes([0x80, 0x7B, 0x2D]), 5, 2) == "123.45"
    assert _decimal_text(bytes(b ^ 0xFF for b in [0x80, 0x7B, 0x2D]), 5, 2) == "-123.45"
    assert _decimal_text(bytes([0x80, 0x00, 0x00]), 5, 2) == "0.00"
    # DECIMAL(20,0): 2 digits in 1 byte + two full 9-digit groups.
    data = bytes([0x80 | 18]) + (446744073).to_bytes(4, "big") + (709551615).to_bytes(4, "big")
    assert _decimal_text(data, 20, 0) == "18446744073709551615"


def _time2(hours: int, minutes: int, seconds: int, fraction: int, fsp: int, negative: bool) -> bytes:
    """MySQL's my_time_packed_to_binary for fsp 3/4 (fraction in 1/10000 s)."""
    packed = ((hours << 12 | minutes << 6 | seconds) << 24) + fraction * 100
    packed = -packed if negative else packed
    intpart, frac = packed >> 24, packed - ((packed >> 24) << 24)
    if negative and frac:
        frac -= 1 << 24  # C's remainder keeps the dividend's sign
    return (0x800000 + intpart).to_bytes(3, "big") + ((frac // 100) & 0xFFFF).to_bytes(2, "big")


def test_time2_negative_fractions_keep_their_sign() -> None:
    assert _time2_text(_time2(0, 0, 0, 5000, 3, True), 0, 3) == ("-00:00:00.500", 5)
    assert _time2_text(_time2(12, 34, 56, 7890, 3, False), 0, 3) == ("12:34:56.789", 5)
    assert _time2_text(_time2(838, 59, 59, 0, 3, True), 0, 3) == ("-838:59:59.000", 5)
    assert _time2_text((0x800000 - (838 << 12 | 59 << 6 | 59)).to_bytes(3, "big"), 0, 0) == ("-838:59:59", 3)


def test_character_sets_become_utf8mb4() -> None:
    assert to_utf8mb4("café ÿ".encode("cp1252"), "latin1") == "café ÿ".encode()
    assert to_utf8mb4(b"\x81", "latin1") == "\x81".encode()  # MySQL's latin1 maps the bytes cp1252 leaves undefined
    assert to_utf8mb4(b"\xf0\x9f\x98\x80", "utf8mb4") == b"\xf0\x9f\x98\x80"


def test_enum_members_unescaped() -> None:
    assert _sql_literal_body("it''s") == "it's"
    assert _sql_literal_body("a\\\\b") == "a\\b"


def test_positions_parse_and_order() -> None:
    position = BinlogPosition.parse("binlog.000010:4")
    assert position == BinlogPosition("binlog.000010", 4)
    assert BinlogPosition.parse("2026-01-01 00:00:00") is None  # a cursor watermark
    assert BinlogPosition("binlog.000009", 99999).sort_key() < BinlogPosition("binlog.000010", 4).sort_key()


class _Grants:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def exec_driver_sql(self, _sql: str) -> Any:
        return self

    def fetchall(self) -> list[tuple[str]]:
        return [(line,) for line in self.lines]


def test_global_grants_are_read_from_show_grants() -> None:
    held = granted_global_privileges(
        _Grants(
            [
                "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `r`@`%`",
                "GRANT SELECT, INSERT ON `db`.* TO `r`@`%`",
            ]
        )
    )
    assert held == {"REPLICATION SLAVE", "BINLOG MONITOR"}
    assert granted_global_privileges(_Grants(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"])) == {"ALL"}
