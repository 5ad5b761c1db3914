#!/usr/bin/env bash
# Start or stop a private RabbitMQ node for kelp's tests: loopback only, free ports, its own directories.
#
#   scripts/rabbitmq.sh start [DIR]   install rabbitmq-server if missing (Debian: apt-get), start a node whose
#                                     config, data and logs live in DIR (default .kelp-test/rabbitmq), wait
#                                     (at most 60 s) until its AMQP port answers the protocol header, print:
#                                         KELP_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:PORT/
#                                         KELP_TEST_RABBITMQ_DIR=DIR
#                                     (eval "$(scripts/rabbitmq.sh start)" exports both)
#   scripts/rabbitmq.sh stop [DIR]    stop exactly the node `start DIR` started (rabbitmqctl -n NODE stop),
#                                     and epmd if `start` had to launch it
#   scripts/rabbitmq.sh restart [DIR] stop, then start the same node on the same ports with the same data
#                                     (durable queues and persistent messages survive)
#
# The node listens on 127.0.0.1 only (AMQP and Erlang distribution), with no plugins but the delayed-message
# exchange when the installation ships it; the guest user may
# connect from loopback. A second `start` with the same DIR reuses the node's ports and data.
set -euo pipefail
cd "$(dirname "$0")/.."

command_name=${1:-}
DIR=${2:-${KELP_TEST_RABBITMQ_DIR:-.kelp-test/rabbitmq}}

log() { echo "rabbitmq.sh: $*" >&2; }

source scripts/broker-lib.sh

# The node's environment, from the files `start` wrote in DIR.
node_env() {
    local port dist node
    port=$(cat "$DIR/port")
    dist=$(cat "$DIR/dist_port")
    node=$(cat "$DIR/node")
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$port"
    export RABBITMQ_DIST_PORT="$dist"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE=/dev/null
    export ERL_EPMD_ADDRESS=127.0.0.1
}

epmd_running() {
    # epmd answers "epmd: up and running on port 4369 ..." when it runs.
    epmd -names >/dev/null 2>&1
}

# Succeeds once the port accepts a TCP connection AND answers the AMQP header with connection.start.
amqp_answers() {
    python3 - "$1" <<'EOF'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 11:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        # a method frame (type 1) on channel 0 carrying class 10 (connection), method 10 (start)
        sys.exit(0 if data[:1] == b"\x01" and data[7:11] == b"\x00\x0a\x00\x0a" else 1)
except OSError:
    sys.exit(1)
EOF
}

start() {
    ensure_installed rabbitmq-server "install RabbitMQ >= 3.10 yourself" rabbitmq-server
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if [ ! -f "$DIR/port" ]; then
        free_port >"$DIR/port"
        free_port >"$DIR/dist_port"
        echo "kelp-$(basename "$(mktemp -u XXXXXXXX)" | tr 'A-Z' 'a-z')@localhost" >"$DIR/node"
    fi
    node_env
    local port=$RABBITMQ_NODE_PORT
    if amqp_answers "$port"; then
        log "a node already answers on port $port (started from $DIR); reusing it"
    else
        mkdir -p "$DIR/mnesia" "$DIR/log"
        cat >"$DIR/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
EOF
        # Delayed delivery uses rabbitmq_delayed_message_exchange when the installed RabbitMQ ships it
        # (Debian's does not: kelp's TTL tiers are what its tests then exercise).
        if compgen -G "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_delayed_message_exchange*" \
            >/dev/null; then
            echo '[rabbitmq_delayed_message_exchange].' >"$DIR/enabled_plugins"
        else
            echo '[].' >"$DIR/enabled_plugins"
        fi
        chown -R rabbitmq:rabbitmq "$DIR" 2>/dev/null || true
        if ! epmd_running; then
            epmd -address 127.0.0.1 -daemon
            touch "$DIR/epmd_started_here"
        fi
        rabbitmq-server -detached >&2
        local tries=0
        until amqp_answers "$port"; do
            tries=$((tries + 1))
            if [ "$tries" -ge 120 ]; then  # 120 x 0.5 s
                log "node $RABBITMQ_NODENAME did not answer AMQP on port $port within 60 s; see $DIR/log"
                exit 1
            fi
            sleep 0.5
        done
    fi
    echo "KELP_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$port/"
    echo "KELP_TEST_RABBITMQ_DIR=$DIR"
}

stop() {
    if [ ! -f "$DIR/node" ]; then
        log "no node was started from $DIR: nothing to stop"
        return
    fi
    DIR=$(cd "$DIR" && pwd)
    node_env
    rabbitmqctl -n "$RABBITMQ_NODENAME" stop >&2 || log "rabbitmqctl stop failed (node already down?)"
    local tries=0
    while amqp_answers "$RABBITMQ_NODE_PORT"; do
        tries=$((tries + 1))
        [ "$tries" -ge 60 ] && { log "node still answers after 30 s"; exit 1; }
        sleep 0.5
    done
}

stop_epmd() {
    if [ -f "$DIR/epmd_started_here" ]; then
        epmd -kill >/dev/null 2>&1 || true
        rm -f "$DIR/epmd_started_here"
    fi
}

case "$command_name" in
start) start ;;
stop)
    stop
    stop_epmd
    ;;
restart)
    stop
    start
    ;;
*)
    echo "usage: $0 start|stop|restart [DIR]" >&2
    exit 2
    ;;
esac
