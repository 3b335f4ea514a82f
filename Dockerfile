# syntax=docker/dockerfile:1
# Image of the sync daemon (TRD 9.1.1). Build: docker build -t dlt-db-sync .
# Configuration is never baked in: settings come from the environment (compose `env_file: .env`),
# the table list from a mounted /app/config/tables.json.

# --- builder: resolve and install the pinned runtime dependencies into a virtualenv ----------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY source/requirements.txt /tmp/requirements.txt
# Every dependency ships manylinux wheels, so no compiler is needed; --only-binary makes sure.
RUN pip install --only-binary=:all: -r /tmp/requirements.txt

# --- runtime -----------------------------------------------------------------------------------------
FROM python:3.11-slim

ENV TZ=Asia/Jakarta \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    RUNTIME__DLTHUB_TELEMETRY=false \
    TABLES_FILE=/app/config/tables.json \
    FILE_STAGING_DIR=/app/staging \
    HEALTH_PORT=8089

# Only what runs: time zone data (TZ) and curl (HEALTHCHECK). No compilers, no MySQL client libs
# (PyMySQL is pure Python).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tzdata curl \
    && rm -rf /var/lib/apt/lists/* \
    && ln -snf "/usr/share/zoneinfo/$TZ" /etc/localtime && echo "$TZ" > /etc/timezone

# Unprivileged user (Debian already has a `sync` system account, hence `dltsync`).
RUN groupadd --system --gid 10001 dltsync \
    && useradd --system --uid 10001 --gid dltsync --home-dir /app --shell /usr/sbin/nologin dltsync \
    && mkdir -p /app/config /app/staging /var/log/app \
    && chown dltsync:dltsync /app /app/staging /var/log/app \
    && chmod 755 /app/staging /var/log/app

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root source/ .

# Staging files and the log file (LOG_FILE) survive container re-creation.
VOLUME ["/app/staging", "/var/log/app"]

USER 10001:10001
EXPOSE 8089
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null http://localhost:${HEALTH_PORT:-8089}/ || exit 1"]

# Exec form: python is PID 1 and receives SIGTERM (stop) and SIGHUP (reload tables.json) directly;
# logs go to stderr (`docker compose logs`) and, with LOG_FILE (compose sets it), to /var/log/app.
CMD ["python", "db_pipeline.py"]
