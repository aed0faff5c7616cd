#!/usr/bin/env bash
# The project's test command: `scripts/test.sh [extra cargo test args]`.
#
# 1. Installs what is missing (Debian): the build packages rdkafka needs, redis-server, nx-27017
#    (PyPI, a MongoDB wire-protocol server), tansu 0.6.0 (a Kafka-protocol broker, built with
#    cargo into ~/.cargo/bin; ~18 min the first time, reused afterwards) and s3s-fs 0.14.1 (an S3
#    server on a directory that checks signatures; cargo, ~5 min the first time).
# 2. Starts redis-server, nx-27017, tansu and s3s-fs, each on a free port in a temp dir, and
#    exports CAAS_TEST_REDIS_URL, CAAS_TEST_MONGODB_URI, CAAS_TEST_KAFKA_BROKERS and
#    CAAS_TEST_S3_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY, _BUCKET). A variable the caller
#    already set wins: that server is used as given and nothing is started (or installed) for it.
# 3. Runs `cargo test --workspace --all-targets --no-fail-fast "$@"` (CARGO_TARGET_DIR defaults to
#    ~/.cache/caas-target), then every executable scripts/checks/*.sh.
# 4. Stops everything it started. On failure the server logs are kept and their path printed.
# The chat page's browser test needs Debian's chromium (and nodejs, npm when there is no node) and
# the packages of tests/js (`npm ci`): installed too when missing. CHROMIUM=<path> picks another
# browser.
#
# Knobs: CAAS_TEST_START_TIMEOUT (seconds a server may take to listen, default 60);
# CAAS_TEST_CMD (run that command instead of the suite, with the servers up: development).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/caas-target}"
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"
TANSU_VERSION=0.6.0
S3S_FS_VERSION=0.14.1
START_TIMEOUT="${CAAS_TEST_START_TIMEOUT:-60}"

log() { echo "test.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "root is needed to run: $*"
    fi
}

NEED_REDIS=""
NEED_MONGO=""
NEED_KAFKA=""
[ -n "${CAAS_TEST_REDIS_URL:-}" ] || NEED_REDIS=1
[ -n "${CAAS_TEST_MONGODB_URI:-}" ] || NEED_MONGO=1
[ -n "${CAAS_TEST_KAFKA_BROKERS:-}" ] || NEED_KAFKA=1
NEED_S3=""
[ -n "${CAAS_TEST_S3_ENDPOINT:-}" ] || NEED_S3=1

# ---------------------------------------------------------------------------------------------
# Install what is missing.

install_apt_packages() {
    local wanted=(cmake libcurl4-openssl-dev libsasl2-dev pkg-config)
    [ -z "$NEED_REDIS" ] || wanted+=(redis-server)
    if [ -n "$NEED_MONGO$NEED_KAFKA" ] && ! command -v python3 >/dev/null 2>&1; then
        wanted+=(python3)
    fi
    if [ -n "$NEED_MONGO" ] && ! command -v nx-27017 >/dev/null 2>&1 \
        && ! python3 -m pip --version >/dev/null 2>&1; then
        wanted+=(python3-pip)
    fi
    # The chat page's browser test (workloads/caas/tests/chat_page.rs): Debian's Chromium, driven
    # from Node by playwright-core (tests/js).
    [ -n "${CHROMIUM:-}" ] || wanted+=(chromium)
    command -v node >/dev/null 2>&1 || wanted+=(nodejs)
    command -v npm >/dev/null 2>&1 || wanted+=(npm)
    if ! command -v dpkg-query >/dev/null 2>&1; then
        log "not a Debian system: make sure these are installed: ${wanted[*]}"
        return
    fi
    local missing=() p
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

install_nx27017() {
    command -v nx-27017 >/dev/null 2>&1 && return
    log "pip install nx-27017"
    python3 -m pip install --quiet nx-27017 \
        || python3 -m pip install --quiet --break-system-packages nx-27017
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    hash -r
    command -v nx-27017 >/dev/null 2>&1 || die "nx-27017 was installed but is not on PATH ($PATH)"
}

install_tansu() {
    if command -v tansu >/dev/null 2>&1; then
        local have
        have="$(tansu --version 2>/dev/null || true)"
        [ "$have" = "tansu $TANSU_VERSION" ] \
            || log "warning: found '$have' at $(command -v tansu), tested with $TANSU_VERSION"
        return
    fi
    log "building tansu $TANSU_VERSION into ~/.cargo/bin (about 18 minutes the first time)"
    # Its own target dir: do not hold the workspace's build lock for the whole build.
    env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked \
        --features libsql,dynostore
}

install_s3s_fs() {
    command -v s3s-fs >/dev/null 2>&1 && return
    log "building s3s-fs $S3S_FS_VERSION into ~/.cargo/bin (about 5 minutes the first time)"
    env -u CARGO_TARGET_DIR cargo install s3s-fs --version "$S3S_FS_VERSION" --locked \
        --features binary
}

# tests/js: playwright-core and socket.io-client as pinned by package-lock.json; installed again
# when the lock file is newer than the install.
install_js_packages() {
    local js="$ROOT/tests/js"
    [ -f "$js/package-lock.json" ] || return 0
    if [ -f "$js/node_modules/.package-lock.json" ] \
        && [ ! "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
        return 0
    fi
    log "npm ci in tests/js"
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
}

install_apt_packages
[ -z "$NEED_MONGO" ] || install_nx27017
[ -z "$NEED_S3" ] || install_s3s_fs
[ -z "$NEED_KAFKA" ] || install_tansu
install_js_packages

# ---------------------------------------------------------------------------------------------
# Start the servers this run needs, and stop them on exit.

WORK=""
PIDS=()

stop_servers() {
    local pid deadline
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 10))
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

on_exit() {
    local rc=$?
    trap - EXIT
    stop_servers
    if [ -n "$WORK" ]; then
        if [ "$rc" -ne 0 ]; then
            log "FAILED (exit $rc). Server logs (kept):"
            find "$WORK" -name '*.log' -printf '  %p\n' >&2 || true
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME DIR CMD...: runs CMD in DIR, output to DIR/NAME.log; sets STARTED_PID.
start() {
    local name="$1" dir="$2"
    shift 2
    mkdir -p "$dir"
    (cd "$dir" && exec "$@") >"$dir/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# wait_port NAME PORT PID LOG: until 127.0.0.1:PORT accepts a connection.
wait_port() {
    local name="$1" port="$2" pid="$3" logfile="$4"
    local deadline=$((SECONDS + START_TIMEOUT))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited before listening on port $port (log: $logfile)"
        fi
        [ "$SECONDS" -lt "$deadline" ] \
            || die "$name did not listen on 127.0.0.1:$port within ${START_TIMEOUT}s (log: $logfile)"
        sleep 0.1
    done
    log "$name ready on 127.0.0.1:$port (pid $pid, log $logfile)"
}

if [ -n "$NEED_REDIS$NEED_MONGO$NEED_KAFKA$NEED_S3" ]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/caas-test.XXXXXX")"
fi

if [ -n "$NEED_REDIS" ]; then
    port="$(free_port)"
    start redis "$WORK/redis" redis-server --bind 127.0.0.1 --port "$port" --save '' \
        --appendonly no --daemonize no --dir "$WORK/redis"
    wait_port redis "$port" "$STARTED_PID" "$WORK/redis/redis.log"
    export CAAS_TEST_REDIS_URL="redis://127.0.0.1:$port/"
fi

if [ -n "$NEED_MONGO" ]; then
    port="$(free_port)"
    # Its pid and log files default to fixed paths in /tmp, and a second instance refuses to
    # start while the pid file names a live process: give each instance its own.
    start nx-27017 "$WORK/mongo" nx-27017 --db "$WORK/mongo/nx.db" --host 127.0.0.1 -p "$port" \
        --pid-file "$WORK/mongo/nx.pid" --log-file "$WORK/mongo/nx-27017.server.log"
    wait_port nx-27017 "$port" "$STARTED_PID" "$WORK/mongo/nx-27017.log"
    export CAAS_TEST_MONGODB_URI="mongodb://127.0.0.1:$port"
fi

if [ -n "$NEED_KAFKA" ]; then
    port="$(free_port)"
    # tansu reads a .env in its working directory: give it an empty one of its own.
    start tansu "$WORK/tansu" tansu broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db" --silent
    tansu_pid="$STARTED_PID"
    wait_port tansu "$port" "$tansu_pid" "$WORK/tansu/tansu.log"
    # Without this index fetches stall and consumer heartbeats time out (docs: INFRA.md).
    python3 - "$WORK/tansu/tansu.db" "$START_TIMEOUT" <<'EOF' || die "tansu: could not create the header index (log: $WORK/tansu/tansu.log)"
import sqlite3, sys, time

path, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    db = sqlite3.connect(path, timeout=timeout)
    try:
        if db.execute("select 1 from sqlite_master where type = 'table' and name = 'header'").fetchone():
            db.execute("create index if not exists header_topition_offset on header(topition, offset_id)")
            db.commit()
            break
    finally:
        db.close()
    if time.monotonic() > deadline:
        sys.exit(f"tansu: no 'header' table in {path} after {timeout}s")
    time.sleep(0.1)
EOF
    kill -0 "$tansu_pid" 2>/dev/null || die "tansu exited (log: $WORK/tansu/tansu.log)"
    export CAAS_TEST_KAFKA_BROKERS="127.0.0.1:$port"
fi

if [ -n "$NEED_S3" ]; then
    port="$(free_port)"
    # A bucket is a directory. It checks SigV4 signatures, so the keys must match.
    export CAAS_TEST_S3_BUCKET=caas-test
    export CAAS_TEST_S3_ACCESS_KEY=caastest
    CAAS_TEST_S3_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    export CAAS_TEST_S3_SECRET_KEY
    mkdir -p "$WORK/s3/data/$CAAS_TEST_S3_BUCKET"
    start s3s-fs "$WORK/s3" s3s-fs --host 127.0.0.1 --port "$port" \
        --access-key "$CAAS_TEST_S3_ACCESS_KEY" --secret-key "$CAAS_TEST_S3_SECRET_KEY" \
        "$WORK/s3/data"
    wait_port s3s-fs "$port" "$STARTED_PID" "$WORK/s3/s3s-fs.log"
    export CAAS_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
fi

log "CAAS_TEST_REDIS_URL=$CAAS_TEST_REDIS_URL"
log "CAAS_TEST_MONGODB_URI=$CAAS_TEST_MONGODB_URI"
log "CAAS_TEST_KAFKA_BROKERS=$CAAS_TEST_KAFKA_BROKERS"
log "CAAS_TEST_S3_ENDPOINT=$CAAS_TEST_S3_ENDPOINT (bucket ${CAAS_TEST_S3_BUCKET:-?})"

# ---------------------------------------------------------------------------------------------
# Test.

cd "$ROOT"
started=$SECONDS
if [ -n "${CAAS_TEST_CMD:-}" ]; then
    # For development: run one command with the servers up, e.g.
    # CAAS_TEST_CMD="cargo test -p caas-bus" scripts/test.sh
    log "running: $CAAS_TEST_CMD"
    bash -c "$CAAS_TEST_CMD"
    log "done in $((SECONDS - started))s"
    exit 0
fi
log "cargo test --workspace --all-targets --no-fail-fast $* (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo test --workspace --all-targets --no-fail-fast "$@"
log "cargo test passed in $((SECONDS - started))s"

if [ -d "$ROOT/scripts/checks" ]; then
    for check in "$ROOT"/scripts/checks/*.sh; do
        if [ ! -f "$check" ] || [ ! -x "$check" ]; then continue; fi
        log "check: ${check#"$ROOT"/}"
        "$check"
    done
fi
log "all green"
