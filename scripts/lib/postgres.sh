# PostgreSQL for scripts/stack: the server already on 127.0.0.1:5432 when user
# `postgres` gets in there without a password, else a throwaway cluster in .stack/pg
# (on 5432 if free, else 55432). Debian's postgresql is installed first when its
# binaries are missing. Sourced, not run; needs common.sh and $STACK.

PG_DATA="$STACK/pg/data"
PG_LOG="$STACK/pg/log"
PG_PORT=""
PG_KIND=""

# initdb, pg_ctl and psql: from PATH, else the newest /usr/lib/postgresql/*/bin.
pg_bin() {
    local dir
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
        return 0
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        [[ -x "$dir/$1" ]] && { printf '%s\n' "$dir/$1"; return 0; }
    done
    die "$1 not found on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL (Debian: postgresql)"
}

# Runs a command as the owner of the throwaway cluster: initdb and pg_ctl refuse to run
# as root, so root runs them as `postgres`. From / so that an unreadable working
# directory does not bother them.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# Installs Debian's postgresql unless initdb, pg_ctl and psql are all found.
pg_install_if_missing() {
    local tool
    for tool in initdb pg_ctl psql; do
        (pg_bin "$tool" >/dev/null 2>&1) && continue
        say "postgres: no $tool on PATH or in /usr/lib/postgresql/*/bin; installing Debian's postgresql"
        local started=$SECONDS
        apt_install postgresql
        say "postgres: installed in $((SECONDS - started)) s"
        return 0
    done
}

pg_superuser_ok() {
    [[ "$(PGCONNECT_TIMEOUT=5 "$(pg_bin psql)" -X -w -h 127.0.0.1 -p "$1" -U postgres -d postgres \
        -Atc 'select 1' 2>/dev/null)" == 1 ]]
}

throwaway_running() {
    [[ -f "$PG_DATA/postmaster.pid" ]] && as_pg "$(pg_bin pg_ctl)" -D "$PG_DATA" status >/dev/null 2>&1
}

start_throwaway() {
    local port=5432
    port_open "$port" && port=55432
    port_open "$port" && die "ports 5432 and 55432 are both in use on 127.0.0.1"
    mkdir -p "$STACK/pg"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' user to run initdb as"
        touch "$PG_LOG"
        chown -R postgres: "$STACK/pg"
    fi
    chmod 700 "$STACK/pg"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        say "creating a throwaway PostgreSQL cluster in $PG_DATA"
        as_pg "$(pg_bin initdb)" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
            >>"$PG_LOG" 2>&1 || { show_log "$PG_LOG"; die "initdb failed; log: $PG_LOG"; }
    fi
    say "starting the throwaway PostgreSQL on 127.0.0.1:$port (log: $PG_LOG)"
    as_pg "$(pg_bin pg_ctl)" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $STACK/pg" >/dev/null ||
        { show_log "$PG_LOG"; die "could not start PostgreSQL on 127.0.0.1:$port; log: $PG_LOG"; }
}

pg_up() {
    pg_install_if_missing
    if throwaway_running; then
        PG_KIND="throwaway"
    elif port_open 5432 && pg_superuser_ok 5432; then
        PG_KIND="existing"
        PG_PORT=5432
    else
        start_throwaway
        PG_KIND="throwaway"
    fi
    [[ "$PG_KIND" == existing ]] || PG_PORT="$(sed -n 4p "$PG_DATA/postmaster.pid")"
    pg_superuser_ok "$PG_PORT" || die "PostgreSQL on 127.0.0.1:$PG_PORT does not let user postgres in"
    say "postgres: $PG_KIND server on 127.0.0.1:$PG_PORT; creating role orders_svc and database orders if missing"
    PGOPTIONS="-c client_min_messages=warning" "$(pg_bin psql)" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -f "$ROOT/sql/admin/create_role_and_database.sql" >/dev/null ||
        die "sql/admin/create_role_and_database.sql failed on 127.0.0.1:$PG_PORT"
}

pg_down() {
    if throwaway_running; then
        say "stopping the throwaway PostgreSQL (data kept in $PG_DATA)"
        as_pg "$(pg_bin pg_ctl)" -D "$PG_DATA" -w -t 60 -m fast stop >/dev/null
    else
        say "postgres: no throwaway cluster running (a server stack did not start is left alone)"
    fi
}

pg_status() {
    if throwaway_running; then
        say "postgres: up (throwaway, 127.0.0.1:$(sed -n 4p "$PG_DATA/postmaster.pid"))"
    elif port_open 5432 && pg_superuser_ok 5432; then
        say "postgres: up (existing server, 127.0.0.1:5432)"
    else
        say "postgres: down"
        return 1
    fi
}
