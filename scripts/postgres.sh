#!/usr/bin/env bash
# Start or stop a private PostgreSQL cluster for kelp's tests: loopback only, a free port, its own directory.
#
#   scripts/postgres.sh start [DIR]   install PostgreSQL if missing (Debian: apt-get), create a cluster in
#                                     DIR/data on first use (default DIR .kelp-test/postgres), start it, wait
#                                     until it accepts connections, print on stdout:
#                                         KELP_TEST_POSTGRES_URL=postgresql://kelp@127.0.0.1:PORT/kelp
#                                         KELP_TEST_POSTGRES_DIR=DIR
#                                     (eval "$(scripts/postgres.sh start)" exports both)
#   scripts/postgres.sh stop [DIR]    stop exactly the server that `start DIR` started (pg_ctl -D DIR/data)
#   scripts/postgres.sh restart [DIR] stop (fast shutdown), then start the same cluster on the same port:
#                                     committed data (durable queues, persistent messages) survives
#
# The server listens on 127.0.0.1 only (and a Unix socket inside DIR), trusts loopback connections (a test
# cluster: anyone on this machine may connect as the `kelp` superuser), and keeps PostgreSQL's durable
# defaults (fsync on, synchronous_commit on). Run as root, the cluster belongs to the `postgres` system
# user (PostgreSQL refuses to run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

command_name=${1:-}
DIR=${2:-${KELP_TEST_POSTGRES_DIR:-.kelp-test/postgres}}

log() { echo "postgres.sh: $*" >&2; }

source scripts/broker-lib.sh

# The directory of initdb and pg_ctl: on the PATH, or Debian's /usr/lib/postgresql/VERSION/bin (newest).
pg_bindir() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$found" ] && [ -x "$found/pg_ctl" ] && echo "$found"
}

# Run a PostgreSQL program as the cluster's owner: ourselves, or the postgres user when we are root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

BIN=""
find_bin() {
    BIN=$(pg_bindir || true)
    if [ -z "$BIN" ]; then
        apt_install "install PostgreSQL >= 13 yourself (initdb and pg_ctl)" postgresql
        BIN=$(pg_bindir || true)
        [ -n "$BIN" ] || { log "PostgreSQL was installed but initdb/pg_ctl are not found"; exit 1; }
    fi
}

answers() {
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$1" >/dev/null 2>&1
}

start() {
    find_bin
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if [ "$(id -u)" = 0 ]; then
        getent passwd postgres >/dev/null || { log "running as root needs the 'postgres' system user"; exit 1; }
        chown postgres "$DIR"
        as_owner test -x "$DIR" || { log "the postgres user cannot reach $DIR (a parent is not searchable)"; exit 1; }
    fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        free_port >"$DIR/port"
        as_owner "$BIN/initdb" -D "$DIR/data" -U kelp --auth=trust -E UTF8 --locale=C >"$DIR/initdb.log" 2>&1 ||
            { log "initdb failed; see $DIR/initdb.log"; exit 1; }
        cat >>"$DIR/data/postgresql.conf" <<CONF
# kelp test cluster (scripts/postgres.sh)
listen_addresses = '127.0.0.1'
port = $(cat "$DIR/port")
unix_socket_directories = '$DIR'
max_connections = 300
shared_buffers = 64MB
CONF
    fi
    local port
    port=$(cat "$DIR/port")
    if answers "$port"; then
        log "a server already answers on port $port (started from $DIR); reusing it"
    else
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 start >&2 ||
            { log "the server did not start; see $DIR/postgres.log"; exit 1; }
    fi
    if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U kelp -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'kelp'" | grep -q 1; then
        as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U kelp kelp >&2
    fi
    echo "KELP_TEST_POSTGRES_URL=postgresql://kelp@127.0.0.1:$port/kelp"
    echo "KELP_TEST_POSTGRES_DIR=$DIR"
}

stop() {
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        log "no cluster in $DIR: nothing to stop"
        return
    fi
    find_bin
    DIR=$(cd "$DIR" && pwd)
    if as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >&2
    fi
    log "stopped the server of $DIR"
}

case "$command_name" in
start) start ;;
stop) stop ;;
restart)
    stop
    start
    ;;
*)
    echo "usage: $0 start|stop|restart [DIR]" >&2
    exit 2
    ;;
esac
