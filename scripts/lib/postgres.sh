# shellcheck shell=bash
# Source this file, then call `ensure_database_url`. It leaves DATABASE_URL pointing at a Postgres server
# that accepts CREATE DATABASE:
#   1. DATABASE_URL already set: used as is.
#   2. otherwise: a throwaway cluster from the Postgres binaries on this machine (initdb/pg_ctl on PATH or under
#      /usr/lib/postgresql/*/bin), in a temporary directory, on a free port, stopped and deleted on exit.
#   3. no binaries: a clear error saying how to get them.

find_pg_bin() {
    local tool=$1 dir
    if command -v "$tool" >/dev/null 2>&1; then
        dirname "$(command -v "$tool")"
        return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/opt/postgresql*/bin 2>/dev/null | sort -rV); do
        if [ -x "$dir/$tool" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Run a command as the cluster's owner: initdb and postgres refuse to run as root.
as_pg_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PG_OWNER" -- "$@"
    else
        "$@"
    fi
}

stop_throwaway_postgres() {
    if [ -n "${THROWAWAY_PGDATA:-}" ] && [ -d "$THROWAWAY_PGDATA" ]; then
        as_pg_owner "$PG_BIN/pg_ctl" -D "$THROWAWAY_PGDATA/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$THROWAWAY_PGDATA"
    fi
}

ensure_database_url() {
    if [ -n "${DATABASE_URL:-}" ]; then
        echo "postgres: using DATABASE_URL from the environment" >&2
        return 0
    fi
    if ! PG_BIN=$(find_pg_bin initdb) || [ ! -x "$PG_BIN/pg_ctl" ]; then
        cat >&2 <<'MSG'
error: DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found on PATH or
under /usr/lib/postgresql/*/bin. Either point DATABASE_URL at a server where the user may CREATE DATABASE
(e.g. export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres), or install PostgreSQL:
  Debian/Ubuntu: sudo apt-get install postgresql        macOS: brew install postgresql@16
MSG
        return 1
    fi
    export PG_BIN
    PG_OWNER=${PG_OWNER:-postgres}
    if [ "$(id -u)" = 0 ] && ! id "$PG_OWNER" >/dev/null 2>&1; then
        PG_OWNER=nobody
    fi
    export PG_OWNER
    THROWAWAY_PGDATA=$(mktemp -d /tmp/gateway-pg.XXXXXX)
    export THROWAWAY_PGDATA
    chmod 755 "$THROWAWAY_PGDATA"
    [ "$(id -u)" = 0 ] && chown "$PG_OWNER" "$THROWAWAY_PGDATA"
    local port
    port=$(free_port)
    echo "postgres: starting a throwaway cluster from $PG_BIN on 127.0.0.1:$port" >&2
    as_pg_owner "$PG_BIN/initdb" -D "$THROWAWAY_PGDATA/data" -U postgres --auth=trust --no-sync -E UTF8 \
        >"$THROWAWAY_PGDATA/initdb.log" 2>&1 || { cat "$THROWAWAY_PGDATA/initdb.log" >&2; return 1; }
    # fsync off: a throwaway test cluster trades durability for speed. max_connections covers parallel tests.
    as_pg_owner "$PG_BIN/pg_ctl" -D "$THROWAWAY_PGDATA/data" -l "$THROWAWAY_PGDATA/server.log" -w start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $THROWAWAY_PGDATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        >/dev/null || { cat "$THROWAWAY_PGDATA/server.log" >&2; return 1; }
    trap stop_throwaway_postgres EXIT
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}
