#!/usr/bin/env bash
# PostgreSQL for segloop's scale-out tests and benchmarks (Debian's packages, a private cluster).
#   scripts/postgres.sh install        install Debian's postgresql if missing (idempotent, quiet;
#                                      needs root or passwordless apt)
#   scripts/postgres.sh start DIR      initdb a private cluster in DIR (created; owned by the
#                                      postgres user when run as root, as PostgreSQL refuses to run
#                                      as root) and start it on a free 127.0.0.1 port, password auth,
#                                      database and user "segloop"; prints the database URL
#   scripts/postgres.sh url DIR        print the URL of the cluster started in DIR
#   scripts/postgres.sh stop DIR       stop the cluster started in DIR and remove DIR
# The pytest suite (tests/scaleout) starts and stops its own cluster through this script.
set -euo pipefail

pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
    done
    return 1
}

install() {
    pg_bin >/dev/null 2>&1 && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # Debian's package may create and start a system cluster (port 5432); segloop never uses it.
    pg_bin >/dev/null 2>&1 || { echo "postgres.sh: initdb still missing after apt-get install" >&2; exit 1; }
}

# run a command as the cluster's owner: the postgres user when we are root, else ourselves
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    local dir="${1:?usage: postgres.sh start DIR}"
    local bin port password
    bin="$(pg_bin)" || { echo "postgres.sh: PostgreSQL is not installed (run: $0 install)" >&2; exit 1; }
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [ -f "$dir/url" ] && as_owner "$bin/pg_ctl" -D "$dir/cluster" status >/dev/null 2>&1; then
        cat "$dir/url"
        return 0
    fi
    port="$(free_port)"
    password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    umask 077
    printf '%s\n' "$password" >"$dir/password"
    mkdir -p "$dir/cluster" "$dir/socket"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$dir" "$dir/cluster" "$dir/socket" "$dir/password"
    fi
    as_owner "$bin/initdb" -D "$dir/cluster" -U segloop --pwfile="$dir/password" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/cluster" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c max_connections=200 -c fsync=on" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$port" -U segloop segloop
    printf 'postgresql://segloop:%s@127.0.0.1:%s/segloop\n' "$password" "$port" >"$dir/url"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/url"
    cat "$dir/url"
}

url() {
    cat "${1:?usage: postgres.sh url DIR}/url"
}

stop() {
    local dir="${1:?usage: postgres.sh stop DIR}"
    local bin
    if [ -d "$dir/cluster" ] && bin="$(pg_bin)"; then
        as_owner "$bin/pg_ctl" -D "$dir/cluster" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) install ;;
    start) start "$@" ;;
    url) url "$@" ;;
    stop) stop "$@" ;;
    *) echo "usage: $0 install | start DIR | url DIR | stop DIR" >&2; exit 2 ;;
esac
