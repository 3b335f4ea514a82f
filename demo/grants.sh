#!/bin/bash
# Init script for the official MariaDB image: creates the least-privilege users of TRD 7.1.1.
#
# docker-compose.yml mounts this file into /docker-entrypoint-initdb.d/ and demo/grants.sql at
# /demo/grants.sql. The entrypoint sources it once, when the data directory is first created.
# Which user it creates depends on the variables compose passes to the container:
#   mysql_source: SOURCE_DB_NAME, SOURCE_DB_USER, SOURCE_DB_PASS -> read-only user
#   mysql_target: TARGET_DB_NAME, TARGET_DB_USER, TARGET_DB_PASS -> writer user
# Passwords stay in the environment; they are SQL-quoted here and never printed.

demo_sql_string() {
	# Print $1 as a single-quoted SQL string literal (backslash, quote and newline escaped).
	local value=${1//\\/\\\\}
	value=${value//$'\n'/\\n}
	printf "'%s'" "${value//\'/\\\'}"
}

demo_grants() {
	local grants_file=${DEMO_GRANTS_FILE:-/demo/grants.sql}
	local settings=""
	if [ -n "${SOURCE_DB_USER:-}" ] && [ "${SOURCE_DB_USER}" != root ]; then
		settings+="SET @source_db = $(demo_sql_string "${SOURCE_DB_NAME:?SOURCE_DB_NAME is required}"),"
		settings+=" @reader_user = $(demo_sql_string "${SOURCE_DB_USER}"),"
		settings+=" @reader_pass = $(demo_sql_string "${SOURCE_DB_PASS:?SOURCE_DB_PASS is required}");"$'\n'
	fi
	if [ -n "${TARGET_DB_USER:-}" ] && [ "${TARGET_DB_USER}" != root ]; then
		settings+="SET @target_db = $(demo_sql_string "${TARGET_DB_NAME:?TARGET_DB_NAME is required}"),"
		settings+=" @writer_user = $(demo_sql_string "${TARGET_DB_USER}"),"
		settings+=" @writer_pass = $(demo_sql_string "${TARGET_DB_PASS:?TARGET_DB_PASS is required}");"$'\n'
	fi
	if [ -z "$settings" ]; then
		echo "grants.sh: no SOURCE_DB_USER / TARGET_DB_USER set; no sync user created"
		return 0
	fi
	if declare -F docker_process_sql >/dev/null; then
		# Sourced by docker-entrypoint.sh: its helper connects as root over the socket.
		{ printf '%s' "$settings"; cat "$grants_file"; } | docker_process_sql
	else
		# Executed on its own: connect as root with the image's root password.
		{ printf '%s' "$settings"; cat "$grants_file"; } |
			MYSQL_PWD=${MARIADB_ROOT_PASSWORD:-} mariadb --protocol=socket -uroot
	fi
	echo "grants.sh: least-privilege sync user(s) created"
}

demo_grants
