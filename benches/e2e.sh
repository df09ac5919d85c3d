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
#   CARGO_TARGET_DIR [target]        BENCH_KEEP_TMP [unset]  keep the temporary directory (configs, logs)
#   E2E_TRACING [off]   off, or a sample ratio (0.0, 1.0): adds a `tracing:` block exporting over
#                       OTLP/HTTP to E2E_OTLP_ENDPOINT, else to a local sink (python3) that answers 200
set -euo pipefail

LOG_TAG=e2e
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

relay_knobs E2E # DURATION WARMUP SIZE TP_* LAT_* RESULTS, and the TP / LAT run arguments
ECHO_CPU=${E2E_ECHO_CPU-$(auto_cpu 1)}
SIGMESH_CPUS=${E2E_SIGMESH_CPUS:-}
LOADGEN_CPUS=${E2E_LOADGEN_CPUS:-}
LOADGEN_THREADS=${E2E_LOADGEN_THREADS:-}
TRACING=${E2E_TRACING:-off}

build_release sigmesh sigmesh-loadgen
make_tmp sigmesh-e2e

# HTTP status of a GET on 127.0.0.1:PORT/PATH ("000" when nothing answers).
http_status() {
    local port=$1 path=$2
    if have curl; then
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
readyz_ok() { [[ $(http_status "$1" /readyz) == 200 ]]; }

free_ports 3
ECHO_PORT=${PORTS[0]} LISTEN_PORT=${PORTS[1]} ADMIN_PORT=${PORTS[2]}

# --- echo upstream -------------------------------------------------------------------------------
start_echo "$ECHO_PORT" "$ECHO_CPU"
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
        spawn "$TMP/otlp.log" "" python3 -c '
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
' "$OTLP_PORT"
        wait_until 10 "$SPAWNED" "otlp sink" tcp_open "$OTLP_PORT"
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
RUST_LOG=${SIGMESH_LOG:-warn} spawn "$TMP/sigmesh.log" "$SIGMESH_CPUS" "$SIGMESH" run --config "$CONFIG"
SIGMESH_PID=$SPAWNED
wait_until 15 "$SIGMESH_PID" "sigmesh /readyz" readyz_ok "$ADMIN_PORT"
log "sigmesh on 127.0.0.1:$LISTEN_PORT, admin $ADMIN_PORT (pid $SIGMESH_PID, cpus ${SIGMESH_CPUS:-any})"

DIRECT_URL="ws://127.0.0.1:$ECHO_PORT/ws"
SIGMESH_URL="ws://127.0.0.1:$LISTEN_PORT/ws"

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
    CPU_ARGS=(--sigmesh-cpu-seconds "$(cpu_seconds $((CPU1 - CPU0)))")
fi

result_meta
echo
"$LOADGEN" report \
    --throughput "$TMP/tp-direct.json" "$TMP/tp-sigmesh.json" \
    --latency "$TMP/lat-direct.json" "$TMP/lat-sigmesh.json" \
    "${CPU_ARGS[@]}" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --meta "git=$REV" \
    --meta "tracing=$TRACING" \
    --meta "machine=$MACHINE" \
    --meta "pinning=echo ${ECHO_CPU:-unpinned} (1 thread), sigmesh ${SIGMESH_CPUS:-unpinned}, loadgen ${LOADGEN_CPUS:-unpinned} (${LOADGEN_THREADS:-$NPROC} threads)" \
    --meta "runs=${WARMUP} warmup + ${DURATION} measured each; loopback; text messages of $SIZE B" \
    --md "$RESULTS/$STAMP.md" \
    --json "$RESULTS/$STAMP.json"
echo
log "wrote $RESULTS/$STAMP.md and $RESULTS/$STAMP.json"
