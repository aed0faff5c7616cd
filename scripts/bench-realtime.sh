#!/usr/bin/env bash
# The realtime benchmark (docs/benchmarks.md, "Realtime"): caas beside a bare socketioxide
# server, driven by the official Socket.IO client (bench/realtime), server and load generators
# pinned to different cores.
#
#   scripts/bench-realtime.sh [cpu] [memory] [cluster]      (default: cpu memory)
#
# - cpu: 10,000 websocket connections in rooms of 100, 150 sends/s through the sockets
#   (`message.send`: 15,000 deliveries/s) for 20 s after a 3 s warm-up, bare socketioxide and
#   `caas standalone` alternated REPEAT times (default 2): server CPU µs per delivered message
#   (utime+stime from /proc/<pid>/stat before/after), send -> receive latency percentiles.
# - memory: 19,800 idle connections in one process (the fd limit is 20,000 per process): VmRSS
#   (/proc/<pid>/status) after minus before the connections, per connection.
# - cluster: 20,000 connections across two `caas socket` processes sharing Redis (gateway and
#   pipeline beside them, MongoDB/Kafka/Redis from CAAS_TEST_*): run it through scripts/test.sh:
#   CAAS_TEST_CMD="scripts/bench-realtime.sh cluster" scripts/test.sh
#
# Knobs: REPEAT, CAAS (the caas binary; default $CARGO_TARGET_DIR/release/caas), SERVER_CPU (0),
# LOAD_CPU (1), RATE (150), CONNS (10000), DURATION (20), NOBUILD=1 (skip cargo build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/caas-target}"
REPEAT="${REPEAT:-2}"
CAAS="${CAAS:-$CARGO_TARGET_DIR/release/caas}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
RATE="${RATE:-150}"
CONNS="${CONNS:-10000}"
DURATION="${DURATION:-20}"
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(cpu memory)

# One process may hold at most 20,000 files here (the hard limit); take all of it.
ulimit -n "$(ulimit -Hn)"

if [ -z "${NOBUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p caas)
    (cd "$ROOT/bench/bare-socketio" && cargo build --release)
fi

RESULTS="$(mktemp)"
trap 'rm -f "$RESULTS"' EXIT
bench() {
    local cmd=(node "$ROOT/bench/realtime/bench.mjs" --caas "$CAAS" --server-cpu "$SERVER_CPU" --load-cpu "$LOAD_CPU" "$@")
    echo "+ ${cmd[*]}"
    "${cmd[@]}" | while IFS= read -r line; do
        echo "$line"
        case "$line" in RESULT*) echo "${line#RESULT }" >>"$RESULTS" ;; esac
    done
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
for s in "${SCENARIOS[@]}"; do
    case "$s" in
    cpu)
        for i in $(seq "$REPEAT"); do
            bench --server bare --conns "$CONNS" --rate "$RATE" --seconds "$DURATION"
            bench --server caas --conns "$CONNS" --rate "$RATE" --seconds "$DURATION"
        done
        ;;
    memory)
        bench --server bare --conns 19800 --idle
        bench --server caas --conns 19800 --idle
        ;;
    cluster)
        bench --server cluster --conns 20000 --rate 50 --seconds 10
        ;;
    *)
        echo "unknown scenario $s (cpu, memory, cluster)" >&2
        exit 2
        ;;
    esac
done

echo
echo "| server | connections | KiB per connection | idle CPU % | sends/s | delivered/s | server CPU µs per delivered msg | above idle | p50 ms | p99 ms | max ms | lost |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
node -e '
for (const l of require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)) {
  const r = JSON.parse(l);
  const run = r.sent !== undefined;
  const f = (v) => (run ? v : "-");
  console.log(`| ${r.server} | ${r.connected} | ${r.kib_per_conn} | ${r.idle_cpu_pct} | ${f(r.rate)} | ${f(r.delivered_per_s)} | ${f(r.cpu_us_per_delivered)} | ${f(r.cpu_us_per_delivered_above_idle)} | ${f(r.p50_ms)} | ${f(r.p99_ms)} | ${f(r.max_ms)} | ${run ? r.expected - r.delivered : "-"} |`);
}' "$RESULTS"
