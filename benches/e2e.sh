#!/usr/bin/env bash
# End-to-end load: small signaling text messages through (a) a direct connection to an echo
# upstream and (b) sigmesh on loopback in front of the same echo upstream, in the same run.
# Reports messages/s, p50/p99 round-trip latency and sigmesh CPU per message, as sigmesh/direct.
#
#   benches/e2e.sh                      # ~1 minute after the build
#   E2E_DURATION=30s benches/e2e.sh     # longer runs
#
# Needs cargo; curl is used when present (else bash /dev/tcp). Writes benches/results/<UTC>.md and
# .json. Environment knobs (defaults in brackets):
#   E2E_DURATION [10s]  measured time of each of the four runs     E2E_WARMUP [2s] unmeasured lead-in
#   E2E_SIZE [200]      message size in bytes
#   E2E_TP_SESSIONS [100], E2E_TP_WINDOW [4]   closed-loop throughput runs
#   E2E_LAT_SESSIONS [100], E2E_LAT_RATE [20]  fixed-rate latency runs (messages/s per session)
#   E2E_ECHO_CPU [1 when nproc > 1]  core the echo server is pinned to ("" for none)
#   E2E_SIGMESH_CPUS, E2E_LOADGEN_CPUS [unpinned]  taskset CPU lists for sigmesh and the load client
#   E2E_LOADGEN_THREADS [nproc]      E2E_RESULTS [benches/results]   SIGMESH_LOG [warn] (RUST_LOG)
#   CARGO_TARGET_DIR [target]
#   E2E_TRACING [off]   off, or a sample ratio (0.0, 1.0): adds a `tracing:` block exporting over
#                       OTLP/HTTP to E2E_OTLP_ENDPOINT, else to a local sink (python3) that answers 200
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${E2E_DURATION:-10s}
WARMUP=${E2E_WARMUP:-2s}
SIZE=${E2E_SIZE:-200}
TP_SESSIONS=${E2E_TP_SESSIONS:-100}
TP_WINDOW=${E2E_TP_WINDOW:-4}
LAT_SESSIONS=${E2E_LAT_SESSIONS:-100}
LAT_RATE=${E2E_LAT_RATE:-20}
RESULTS=${E2E_RESULTS:-$ROOT/benches/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NPROC=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
HAVE_TASKSET=0
command -v taskset >/dev/null 2>&1 && HAVE_TASKSET=1
if [[ -z ${E2E_ECHO_CPU+x} ]]; then
    if ((HAVE_TASKSET && NPROC > 1)); then ECHO_CPU=1; else ECHO_CPU=; fi
else
    ECHO_CPU=$E2E_ECHO_CPU
fi
SIGMESH_CPUS=${E2E_SIGMESH_CPUS:-}
LOADGEN_CPUS=${E2E_LOADGEN_CPUS:-}
LOADGEN_THREADS=${E2E_LOADGEN_THREADS:-}

TRACING=${E2E_TRACING:-off}
log() { printf 'e2e: %s\n' "$*" >&2; }

# `pin CPUS`: sets PIN to the command prefix that runs a program on CPUS (taskset execs the program,
# so `$!` of a backgrounded "${PIN[@]}" prog is the program itself). Empty without CPUS or taskset.
pin() {
    PIN=()
    if [[ -n $1 ]] && ((HAVE_TASKSET)); then PIN=(taskset -c "$1"); fi
}

log "building sigmesh and sigmesh-loadgen (release, target dir $TARGET_DIR)"
cargo build --release -p sigmesh -p sigmesh-loadgen
BIN=$TARGET_DIR/release
LOADGEN=$BIN/sigmesh-loadgen
SIGMESH=$BIN/sigmesh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sigmesh-e2e.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    log "FAILED: $*"
    for f in "$TMP"/*.log; do
        [[ -s $f ]] && { log "--- $(basename "$f") (last lines)"; tail -n 20 "$f" >&2; }
    done
    exit 1
}

# HTTP status of a GET on 127.0.0.1:PORT/PATH ("000" when nothing answers).
http_status() {
    local port=$1 path=$2
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port$path" || true
        return
    fi
    local line=''
    if exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3 || true
        IFS= read -r -t 1 line <&3 || true
        exec 3<&- 3>&-
    fi
    line=${line#* }
    echo "${line:0:3}" | grep -E '^[0-9]{3}$' || echo 000
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# `wait_until DEADLINE_SECONDS PID DESCRIPTION CMD...`: polls CMD until it succeeds.
wait_until() {
    local secs=$1 pid=$2 what=$3
    shift 3
    local end=$((SECONDS + secs))
    until "$@"; do
        kill -0 "$pid" 2>/dev/null || fail "$what: the process exited"
        ((SECONDS < end)) || fail "$what: not ready after ${secs}s"
        sleep 0.05
    done
}

readyz_ok() { [[ $(http_status "$1" /readyz) == 200 ]]; }

# CPU ticks (utime + stime) of a process, or nothing without /proc.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $((${12} + ${13}))
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

mapfile -t PORTS < <("$LOADGEN" free-ports 3)
((${#PORTS[@]} == 3)) || fail "could not find free ports"
ECHO_PORT=${PORTS[0]} LISTEN_PORT=${PORTS[1]} ADMIN_PORT=${PORTS[2]}

# --- echo upstream -------------------------------------------------------------------------------
pin "$ECHO_CPU"
"${PIN[@]}" "$LOADGEN" echo --listen "127.0.0.1:$ECHO_PORT" --threads 1 >"$TMP/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_until 10 "$ECHO_PID" "echo server" tcp_open "$ECHO_PORT"
log "echo upstream on 127.0.0.1:$ECHO_PORT (pid $ECHO_PID, cpu ${ECHO_CPU:-any})"

# --- sigmesh -------------------------------------------------------------------------------------
CONFIG=$TMP/sigmesh.yaml
cat >"$CONFIG" <<EOF
listen: 127.0.0.1:$LISTEN_PORT
admin: 127.0.0.1:$ADMIN_PORT
routes:
  - name: load
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 65536
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      # High enough never to trigger: the bucket is exercised, but nothing is dropped.
      messages: { rate: 1000000000, per: 1s, burst: 1000000000, on_exceed: drop }
    upstreams:
      - { name: echo, url: "ws://127.0.0.1:$ECHO_PORT/ws" }
EOF
if [[ $TRACING != off ]]; then
    OTLP=${E2E_OTLP_ENDPOINT:-}
    if [[ -z $OTLP ]]; then
        OTLP_PORT=$("$LOADGEN" free-ports 1)
        # An OTLP/HTTP sink: every POST gets 200 with an empty (valid) protobuf response.
        python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$OTLP_PORT" >"$TMP/otlp.log" 2>&1 &
        OTLP_PID=$!
        PIDS+=("$OTLP_PID")
        wait_until 10 "$OTLP_PID" "otlp sink" tcp_open "$OTLP_PORT"
        OTLP=http://127.0.0.1:$OTLP_PORT
    fi
    cat >>"$CONFIG" <<EOF
tracing:
  otlp_endpoint: $OTLP
  protocol: http
  sample_ratio: $TRACING
EOF
    log "tracing on: sample_ratio $TRACING, OTLP/HTTP to $OTLP"
fi
"$SIGMESH" check --config "$CONFIG" >"$TMP/check.log" 2>&1 || fail "sigmesh check rejected the config"
pin "$SIGMESH_CPUS"
RUST_LOG=${SIGMESH_LOG:-warn} "${PIN[@]}" "$SIGMESH" run --config "$CONFIG" >"$TMP/sigmesh.log" 2>&1 &
SIGMESH_PID=$!
PIDS+=("$SIGMESH_PID")
wait_until 15 "$SIGMESH_PID" "sigmesh /readyz" readyz_ok "$ADMIN_PORT"
log "sigmesh on 127.0.0.1:$LISTEN_PORT, admin $ADMIN_PORT (pid $SIGMESH_PID, cpus ${SIGMESH_CPUS:-any})"

DIRECT_URL="ws://127.0.0.1:$ECHO_PORT/ws"
SIGMESH_URL="ws://127.0.0.1:$LISTEN_PORT/ws"

# `load LABEL URL OUT.json ARGS...`
load() {
    local label=$1 url=$2 out=$3
    shift 3
    local threads=()
    [[ -n $LOADGEN_THREADS ]] && threads=(--threads "$LOADGEN_THREADS")
    pin "$LOADGEN_CPUS"
    "${PIN[@]}" "$LOADGEN" run --url "$url" --label "$label" --size "$SIZE" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$out" "${threads[@]}" "$@" \
        || fail "load run $label ($url)"
}

TP=(--sessions "$TP_SESSIONS" --window "$TP_WINDOW")
LAT=(--sessions "$LAT_SESSIONS" --rate "$LAT_RATE")

log "throughput: $TP_SESSIONS sessions x $SIZE B, window $TP_WINDOW, ${WARMUP} + ${DURATION} each"
load direct "$DIRECT_URL" "$TMP/tp-direct.json" "${TP[@]}"
CPU0=$(cpu_ticks "$SIGMESH_PID")
load sigmesh "$SIGMESH_URL" "$TMP/tp-sigmesh.json" "${TP[@]}"
CPU1=$(cpu_ticks "$SIGMESH_PID")

log "latency: $LAT_SESSIONS sessions x $LAT_RATE msg/s, $SIZE B"
load direct "$DIRECT_URL" "$TMP/lat-direct.json" "${LAT[@]}"
load sigmesh "$SIGMESH_URL" "$TMP/lat-sigmesh.json" "${LAT[@]}"

kill -0 "$SIGMESH_PID" 2>/dev/null || fail "sigmesh died during the runs"

CPU_ARGS=()
if [[ -n $CPU0 && -n $CPU1 ]]; then
    CPU_ARGS=(--sigmesh-cpu-seconds "$(awk -v t=$((CPU1 - CPU0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }')")
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git status --porcelain 2>/dev/null | head -n 1) ]] && REV="$REV (dirty)"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
echo
"$LOADGEN" report \
    --throughput "$TMP/tp-direct.json" "$TMP/tp-sigmesh.json" \
    --latency "$TMP/lat-direct.json" "$TMP/lat-sigmesh.json" \
    "${CPU_ARGS[@]}" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --meta "git=$REV" \
    --meta "tracing=$TRACING" \
    --meta "machine=$NPROC CPUs${CPU_MODEL:+, $CPU_MODEL}, $(uname -sr)" \
    --meta "pinning=echo ${ECHO_CPU:-unpinned} (1 thread), sigmesh ${SIGMESH_CPUS:-unpinned}, loadgen ${LOADGEN_CPUS:-unpinned} (${LOADGEN_THREADS:-$NPROC} threads)" \
    --meta "runs=${WARMUP} warmup + ${DURATION} measured each; loopback; text messages of $SIZE B" \
    --md "$RESULTS/$STAMP.md" \
    --json "$RESULTS/$STAMP.json"
echo
log "wrote $RESULTS/$STAMP.md and $RESULTS/$STAMP.json"
