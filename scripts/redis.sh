#!/usr/bin/env bash
# Start or stop a private Redis server for kelp's tests: loopback only, a free port, its own directory.
#
#   scripts/redis.sh start [DIR]   install redis-server if missing (Debian: apt-get), start it in DIR
#                                  (default .kelp-test/redis), wait for PONG, print on stdout:
#                                      KELP_TEST_REDIS_URL=redis://127.0.0.1:PORT/0
#                                      KELP_TEST_REDIS_DIR=DIR
#                                  (eval "$(scripts/redis.sh start)" exports both)
#   scripts/redis.sh stop [DIR]    stop exactly the server that `start DIR` started (by its pidfile)
#
# The server runs with --appendonly yes --appendfsync always: every write command (every publish and ack
# script) is written and fsync'ed to the append-only file before Redis replies, so a message whose publish
# returned survives a crash or kill -9 of redis-server, not just a clean shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."

command_name=${1:-}
DIR=${2:-${KELP_TEST_REDIS_DIR:-.kelp-test/redis}}

log() { echo "redis.sh: $*" >&2; }

source scripts/broker-lib.sh

start() {
    ensure_installed redis-server "install Redis >= 7 yourself" redis-server redis-tools
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    local pidfile="$DIR/redis.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "a server started from $DIR is still running (pid $(cat "$pidfile")); stop it first"
        exit 1
    fi
    rm -f "$pidfile" "$DIR/port"
    local port
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$DIR" \
        --pidfile "$pidfile" --logfile "$DIR/redis.log" \
        --appendonly yes --appendfsync always --save "" >&2
    echo "$port" >"$DIR/port"
    local tries=0
    until [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" = "PONG" ]; do
        tries=$((tries + 1))
        if [ "$tries" -ge 100 ]; then  # 100 x 0.1 s
            log "redis-server on port $port did not answer PING within 10 s; see $DIR/redis.log"
            exit 1
        fi
        sleep 0.1
    done
    echo "KELP_TEST_REDIS_URL=redis://127.0.0.1:$port/0"
    echo "KELP_TEST_REDIS_DIR=$DIR"
}

stop() {
    local pidfile="$DIR/redis.pid"
    if [ ! -f "$pidfile" ]; then
        log "no pidfile in $DIR: nothing to stop"
        return
    fi
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do  # bounded: 10 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile" "$DIR/port"
    log "stopped the server of $DIR"
}

case "$command_name" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac
