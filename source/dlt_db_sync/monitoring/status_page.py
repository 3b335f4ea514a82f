"""The human-readable status page (``GET /status``, or ``GET /`` from a browser).

One self-contained HTML document: inline CSS and SVG, no script, no external asset, refreshed by a
``<meta http-equiv="refresh">``. It is rendered from the health JSON body (already passed through
:func:`utils.mask_all`) plus the numeric per-table history; every text is masked again and
HTML-escaped here, so an error message can never inject markup or leak a password.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from dlt_db_sync.utils.formatting import as_utc
from dlt_db_sync.utils.logging_setup import mask_secrets

REFRESH_SECONDS = 10
SPARK_WIDTH, SPARK_HEIGHT = 120, 24
STATUS_COLOURS = {"healthy": "#1a7f37", "degraded": "#b35900", "unhealthy": "#c62828"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5rem;color:#1f2328;
background:#f6f8fa}
h1{font-size:1.4rem;margin:0 0 .5rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;color:#fff;font-weight:600;
text-transform:uppercase;font-size:.9rem;vertical-align:middle}
.meta{color:#57606a;font-size:.85rem}
table{border-collapse:collapse;background:#fff;font-size:.85rem;width:100%}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:middle}
th{background:#eaeef2}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.late{background:#ffebe9;color:#c62828;font-weight:600}
tr.failing td.failures{background:#ffebe9;color:#c62828;font-weight:600}
tr.elsewhere{color:#8c959f}td.error{max-width:28rem;word-break:break-word;font-family:ui-monospace,monospace;
font-size:.8rem}
table.facts{width:auto;min-width:40%}ul.reasons{margin:.3rem 0;padding-left:1.2rem}
svg.spark{display:block}svg.spark polyline{fill:none;stroke:#0969da;stroke-width:1.5}
svg.spark circle.failed{fill:#c62828}
.none{color:#8c959f}
"""


class Sample(Protocol):
    """One finished table sync (``monitoring.SyncSample``)."""

    @property
    def seconds(self) -> float: ...

    @property
    def rows(self) -> int: ...

    @property
    def ok(self) -> bool: ...


# --------------------------------------------------------------------------- content negotiation
def _accept_quality(accept: str, media_type: str) -> float:
    """The q-value ``accept`` gives ``media_type``: the most specific matching range wins."""
    kind = media_type.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)  # (specificity, q)
    for item in accept.split(","):
        parts = [part.strip() for part in item.split(";")]
        media_range = parts[0].lower()
        quality = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a malformed q-value matches nothing rather than everything
        if media_range == media_type:
            specificity = 2
        elif media_range == f"{kind}/*":
            specificity = 1
        elif media_range == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


def prefers_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks HTML strictly above JSON (a browser; not curl's ``*/*``)."""
    if not accept:
        return False
    html_q = _accept_quality(accept, "text/html")
    return html_q > 0 and html_q > _accept_quality(accept, "application/json")


# --------------------------------------------------------------------------- formatting helpers
def _text(value: Any) -> str:
    """``value`` masked and HTML-escaped; an em dash for None or empty."""
    if value is None or value == "":
        return '<span class="none">&mdash;</span>'
    return html.escape(mask_secrets(str(value)), quote=True)


def format_seconds(seconds: float | None) -> str:
    """``4.2 s``, ``3 m 05 s``, ``2 h 07 m``, ``3 d 4 h`` (None: an em dash)."""
    if seconds is None:
        return "\u2014"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} m"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _moment(value: Any, now: datetime) -> str:
    """An ISO time with how long ago it was, escaped."""
    moment = as_utc(value)
    if moment is None:
        return _text(value)
    ago = format_seconds(max((now - moment).total_seconds(), 0.0))
    return f'<time datetime="{_text(value)}" title="{_text(value)}">{html.escape(ago)} ago</time>'


def sparkline(values: Sequence[float], failed: Sequence[bool], label: str) -> str:
    """An inline SVG line of ``values`` (oldest first); failed samples get a red dot."""
    if not values:
        return '<span class="none">no data</span>'
    top = max(values) or 1.0
    step = SPARK_WIDTH / max(len(values) - 1, 1)
    points = [
        (round(i * step, 1), round(SPARK_HEIGHT - 2 - (value / top) * (SPARK_HEIGHT - 4), 1))
        for i, value in enumerate(values)
    ]
    line = " ".join(f"{x},{y}" for x, y in points)
    dots = "".join(
        f'<circle class="failed" cx="{x}" cy="{y}" r="2"/>' for (x, y), bad in zip(points, failed, strict=True) if bad
    )
    title = html.escape(f"{label}: last {values[-1]:g}, max {top:g} over {len(values)} syncs")
    return (
        f'<svg class="spark" width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}" '
        f'role="img" aria-label="{title}"><title>{title}</title><polyline points="{line}"/>{dots}</svg>'
    )


# --------------------------------------------------------------------------- page sections
def _header(body: Mapping[str, Any]) -> str:
    status = str(body.get("status", "unknown"))
    colour = STATUS_COLOURS.get(status, "#57606a")
    reasons = body.get("reasons") or []
    why = (
        '<ul class="reasons">' + "".join(f"<li>{_text(reason)}</li>" for reason in reasons) + "</ul>"
        if reasons
        else '<p class="reasons">All databases reachable, every table in sync.</p>'
    )
    return (
        f'<h1>DLT database sync <span id="status" class="badge status-{_text(status)}" '
        f'style="background:{colour}">{_text(status)}</span></h1>'
        f'<p class="meta">version {_text(body.get("version"))} &middot; up {format_seconds(body.get("uptime_seconds"))}'
        f" &middot; as of {_text(body.get('timestamp'))} &middot; refreshes every {REFRESH_SECONDS} s &middot; "
        f'<a href="/health">JSON</a> &middot; <a href="/metrics">metrics</a></p>{why}'
    )


def _server(connection: Mapping[str, Any]) -> Any:
    """Flavor and version of a database when the health body carries its ``server`` object."""
    server = connection.get("server")
    if isinstance(server, Mapping):
        return " ".join(str(server[key]) for key in ("flavor", "version") if server.get(key)) or None
    return server


def _databases(body: Mapping[str, Any]) -> str:
    rows = []
    for role, connection in (body.get("database_connections") or {}).items():
        pool = "\u2014"
        if connection.get("pool_size") is not None:
            pool = (
                f"{connection.get('checked_out')} / {connection.get('pool_size')} "
                f"(+{connection.get('overflow') or 0} overflow, {connection.get('utilization_percent')} %)"
            )
        rows.append(
            f'<tr id="db-{_text(role)}"><td>{_text(role)}</td><td>{_text(connection.get("status"))}</td>'
            f"<td>{_text(_server(connection))}</td><td>{_text(pool)}</td>"
            f'<td class="error">{_text(connection.get("last_error"))}</td></tr>'
        )
    return (
        "<h2>Databases</h2><table><thead><tr><th>role</th><th>status</th><th>server</th>"
        "<th>pool (checked out / size)</th><th>last error</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _cycle(
    body: Mapping[str, Any], cycle_started_at: datetime | None, last_cycle_seconds: float | None, now: datetime
) -> str:
    running = (
        f"running since {_moment(cycle_started_at, now)}, now on table {_text(body.get('current_table'))}"
        if cycle_started_at is not None
        else "idle, waiting for the next interval"
    )
    staging = body.get("file_staging") or {}
    staging_text = (
        f"{staging.get('usage_mb')} MB in {staging.get('files_count')} file(s)" if staging.get("enabled") else "off"
    )
    items = [
        ("current cycle", running),
        ("cycles finished", _text(body.get("cycles"))),
        ("last cycle took", _text(format_seconds(last_cycle_seconds))),
        ("last fully successful cycle", _moment(body.get("last_successful_sync"), now)),
        ("tables synced / configured", f"{_text(body.get('tables_synced'))} / {_text(body.get('tables_configured'))}"),
        ("sync errors since start", _text(body.get("sync_errors"))),
        ("file staging", _text(staging_text)),
    ]
    return (
        '<h2>Cycle</h2><table class="facts"><tbody>'
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
        + "</tbody></table>"
    )


def _table_row(
    name: str, table: Mapping[str, Any], samples: Sequence[Sample], lag_threshold: float, now: datetime
) -> str:
    lag = table.get("lag_seconds")
    late = lag_threshold > 0 and lag is not None and lag > lag_threshold and table.get("owned", True)
    failures = table.get("consecutive_failures") or 0
    classes = [cls for cls, on in (("failing", failures > 0), ("elsewhere", not table.get("owned", True))) if on]
    failed = [not sample.ok for sample in samples]
    durations = sparkline([sample.seconds for sample in samples], failed, "seconds")
    rows = sparkline([float(sample.rows) for sample in samples], failed, "rows")
    mode = " / ".join(str(part) for part in (table.get("strategy"), table.get("mode")) if part)
    owner = "" if table.get("owned", True) else " (synced by another replica)"
    return (
        f'<tr id="table-{_text(name)}" class="{" ".join(classes)}"><td class="name">{_text(name)}{owner}</td>'
        f"<td>{_text(mode)}</td><td>{_moment(table.get('last_success'), now)}</td>"
        f'<td class="num lag{" late" if late else ""}">{_text(format_seconds(lag) if lag is not None else None)}</td>'
        f'<td class="num">{_text(table.get("rows_last_cycle"))}</td>'
        f'<td class="num failures">{_text(failures)}</td>'
        f'<td class="error">{_text(table.get("last_error"))}</td><td>{durations}</td><td>{rows}</td></tr>'
    )


def _tables(
    body: Mapping[str, Any], history: Mapping[str, Sequence[Sample]], lag_threshold: float, now: datetime
) -> str:
    rows = "".join(
        _table_row(name, table, history.get(name, ()), lag_threshold, now)
        for name, table in sorted((body.get("tables") or {}).items())
    )
    limit = f"red above {format_seconds(lag_threshold)}" if lag_threshold > 0 else "no threshold set"
    return (
        "<h2>Tables</h2><table><thead><tr><th>table</th><th>strategy / mode</th><th>last success</th>"
        f"<th>lag ({limit})</th><th>rows last cycle</th><th>failures in a row</th><th>last error</th>"
        "<th>duration, last syncs</th><th>rows, last syncs</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )


def render_status_page(
    body: Mapping[str, Any],
    history: Mapping[str, Sequence[Sample]],
    lag_threshold: float,
    cycle_started_at: datetime | None = None,
    last_cycle_seconds: float | None = None,
    now: datetime | None = None,
) -> str:
    """The whole HTML document for a health ``body`` and each table's recent ``history``; a pure function.

    ``lag_threshold`` is ``LAG_THRESHOLD_SECONDS`` (0: no lag cell is marked late).
    """
    now = now or datetime.now(UTC)
    status = _text(body.get("status", "unknown"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{status} \u2014 DLT database sync</title><style>{CSS}</style></head><body>"
        + _header(body)
        + _databases(body)
        + _cycle(body, cycle_started_at, last_cycle_seconds, now)
        + _tables(body, history, lag_threshold, now)
        + "</body></html>\n"
    )
