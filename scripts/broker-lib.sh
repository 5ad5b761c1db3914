# Helpers shared by scripts/rabbitmq.sh, scripts/redis.sh and scripts/postgres.sh (sourced; each defines log() first).

# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 - <<'PY'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
}

# ensure_installed COMMAND HINT PACKAGE...: install the Debian packages unless COMMAND is on the PATH;
# without apt-get, say HINT (what to install by hand) and exit.
ensure_installed() {
    local command=$1 hint=$2
    shift 2
    if command -v "$command" >/dev/null 2>&1; then
        return
    fi
    apt_install "$hint" "$@"
}

# apt_install HINT PACKAGE...: install the Debian packages; without apt-get, say HINT and exit.
apt_install() {
    local hint=$1
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        log "$* not installed and apt-get is not available: $hint"
        exit 1
    fi
    log "installing $* (apt-get)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}
