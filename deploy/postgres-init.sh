#!/usr/bin/env bash
# Creates orders-svc's role and database on the first start of the postgres container
# (compose.yaml mounts this into /docker-entrypoint-initdb.d/ and sql/ at /sql).
# The image runs *.sql files there without psql -v variables, hence this wrapper to pass
# the role's password (ORDERS_DB_PASSWORD) to sql/admin/create_role_and_database.sql.
#
# The entrypoint executes this file when it is executable and sources it otherwise; the
# subshell keeps `set` options and failures the same either way.
(
    set -euo pipefail
    : "${ORDERS_DB_PASSWORD:?ORDERS_DB_PASSWORD must be set for the postgres service}"
    # As an SQL string literal: single quotes doubled.
    password_literal="'${ORDERS_DB_PASSWORD//\'/\'\'}'"
    psql -v ON_ERROR_STOP=1 --no-psqlrc \
        --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        -v password="$password_literal" \
        -f /sql/admin/create_role_and_database.sql
)
