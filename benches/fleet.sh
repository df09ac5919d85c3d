#!/usr/bin/env bash
# What `scope: global` costs, against `scope: local`, in one run, on a loopback redis-server:
#
# - the handshake with a global connection bucket (one Redis script call before the upstream
#   handshake): p50/p99 handshake time of back-to-back handshakes (`sigmesh-loadgen storm`,
#   FLEET_CONNECTORS connectors [2]: light load, so the figure is the added latency, not
#   queueing), the bucket never empty;
# - the relay with a global room bucket (tokens leased in batches): round trips/s of 100
#   sessions × 200 B closed loop (window 4), two sessions per room, the bucket never empty;
# - Redis down (`on_error: allow`, timeout 50ms): the storm again with redis-server stopped, so
#   the breaker's cost shows (the first failures pay the timeout, then nothing).
#
#   benches/fleet.sh             # ~1 minute after the build
#   FLEET_DURATION=10s FLEET_REPEAT=5 benches/fleet.sh
#
# sigmesh on one CPU, the loadgen, echo upstream and redis-server on the other. Knobs:
# FLEET_DURATION [5s], FLEET_REPEAT [3] (runs per mode, interleaved; the median is kept),
# FLEET_RESULTS [benches/results].
set -euo pipefail

LOG_TAG=fleet
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${FLEET_DURATION:-5s}
CONNECTORS=${FLEET_CONNECTORS:-2}
REPEAT=${FLEET_REPEAT:-3}
RESULTS=${FLEET_RESULTS:-$ROOT/benches/results}
command -v redis-server >/dev/null || bash "$ROOT/scripts/install/redis.sh" >&2

build_release sigmesh sigmesh-loadgen
make_tmp sigmesh-fleet
free_ports 4
LISTEN_PORT=${PORTS[0]} ADMIN_PORT=${PORTS[1]} ECHO_PORT=${PORTS[2]} REDIS_PORT=${PORTS[3]}
PROXY_CPUS=$(auto_cpu 0) LOAD_CPUS=$(auto_cpu 1)

start_redis() {
    spawn "$TMP/redis.log" "$LOAD_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no
    REDIS_PID=$SPAWNED
    wait_until 10 "$REDIS_PID" redis-server tcp_open "$REDIS_PORT"
}
start_redis
start_echo "$ECHO_PORT" "$LOAD_CPUS"

config() { # `config SCOPE`: both limits in that scope, never empty
    cat <<YAML
listen: 127.0.0.1:$LISTEN_PORT
admin: 127.0.0.1:$ADMIN_PORT
cluster: { redis: "redis://127.0.0.1:$REDIS_PORT/0", timeout: 50ms, on_error: allow }
routes:
  - name: load
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 65536
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      connections: { rate: 1000000, per: 1s, burst: 1000000, key: client_ip, scope: $1 }
      rooms: { rate: 100000000, per: 1s, burst: 100000000, scope: $1 }
    upstreams:
      - { name: echo, url: "ws://127.0.0.1:$ECHO_PORT/ws" }
YAML
}
SIG_PID=
start_sigmesh() { # `start_sigmesh SCOPE`
    [[ -z $SIG_PID ]] || stop "$SIG_PID"
    config "$1" >"$TMP/sigmesh-$1.yaml"
    "$SIGMESH" check --config "$TMP/sigmesh-$1.yaml" >"$TMP/check.log" 2>&1 || fail "sigmesh check $1"
    RUST_LOG=error spawn "$TMP/sigmesh-$1.log" "$PROXY_CPUS" "$SIGMESH" run --config "$TMP/sigmesh-$1.yaml"
    SIG_PID=$SPAWNED
    wait_until 30 "$SIG_PID" sigmesh tcp_open "$LISTEN_PORT"
}
URL="ws://127.0.0.1:$LISTEN_PORT/ws"
pin "$LOAD_CPUS"

storm() { # `storm LABEL`: "p50 p99 handshakes/s"
    bounded 60 "${PIN[@]}" "$LOADGEN" storm --url "$URL" --connectors "$CONNECTORS" --duration "$DURATION" \
        --label "$1" --json "$TMP/storm.json" >/dev/null || fail "storm $1"
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert not j["refused"], j["refused"]
print("%.0f %.0f %.0f" % (j["p50_us"], j["p99_us"], j["completed_per_sec"]))' "$TMP/storm.json"
}
relay() { # `relay LABEL`: round trips/s
    bounded 60 "${PIN[@]}" "$LOADGEN" run --url "$URL" --sessions 100 --window 4 --size 200 \
        --duration "$DURATION" --warmup 1s --label "$1" --json "$TMP/run.json" >/dev/null || fail "run $1"
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["errors"] == 0, j
print("%.0f" % j["msgs_per_sec"])' "$TMP/run.json"
}

declare -A STORM RELAY
for ((i = 1; i <= REPEAT; i++)); do
    for scope in local global; do
        start_sigmesh "$scope"
        s=$(storm "$scope")
        r=$(relay "$scope")
        STORM[$scope]="${STORM[$scope]:-} $s"
        RELAY[$scope]="${RELAY[$scope]:-} $r"
        log "$scope run $i: handshake p50/p99 µs, handshakes/s: $s; relay round trips/s: $r"
    done
done
errors=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^sigmesh_cluster_errors_total/ { s += $2 } END { print s + 0 }')
[[ $errors == 0 ]] || fail "cluster errors with Redis up: $errors"

# Redis down: the global handshake pays the timeout until the breaker opens, then nothing.
stop "$REDIS_PID"
DOWN=$(storm redis-down)
DOWN_ERRORS=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^sigmesh_cluster_errors_total\{op="connections"\}/ { print $2 }')
log "redis down: $DOWN (p50 p99 handshakes/s), on_error decisions counted: $DOWN_ERRORS"

median3() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | paste - - - | sort -k2 -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
median1() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
read -r L50 L99 LHS < <(median3 "${STORM[local]}")
read -r G50 G99 GHS < <(median3 "${STORM[global]}")
read -r D50 D99 DHS <<<"$DOWN"
LREL=$(median1 "${RELAY[local]}")
GREL=$(median1 "${RELAY[global]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

result_meta
OUT_MD=$RESULTS/$STAMP-fleet.md
cat >"$OUT_MD" <<MD
# scope: global against scope: local (loopback redis-server)

- sigmesh $REV; $MACHINE; $(date -u +%Y-%m-%dT%H:%M:%SZ)
- sigmesh on CPU ${PROXY_CPUS:-any}; loadgen, echo upstream and redis-server $(redis-server --version | awk '{print $3}') on CPU ${LOAD_CPUS:-any}; median of $REPEAT interleaved runs per scope, $DURATION each
- handshakes: \`sigmesh-loadgen storm\`, $CONNECTORS connectors back to back, a connection bucket per client IP that never runs dry; relay: 100 sessions × 200 B closed loop (window 4), two sessions per room, every message read, a room bucket that never runs dry

| measure | local | global | global − local | global / local |
|---|---:|---:|---:|---:|
| handshake p50, µs | $L50 | $G50 | $((G50 - L50)) | $(ratio "$G50" "$L50") |
| handshake p99, µs | $L99 | $G99 | $((G99 - L99)) | $(ratio "$G99" "$L99") |
| handshakes/s | $LHS | $GHS | | $(ratio "$GHS" "$LHS") |
| relay round trips/s | $LREL | $GREL | | $(ratio "$GREL" "$LREL") |

Redis stopped (\`on_error: allow\`, \`timeout: 50ms\`): handshake p50 $D50 µs, p99 $D99 µs, $DHS handshakes/s; $DOWN_ERRORS decisions taken by \`on_error\` (counted in \`sigmesh_cluster_errors_total\`).

All runs (p50 µs, p99 µs, handshakes/s): local${STORM[local]}; global${STORM[global]}. Relay round trips/s: local${RELAY[local]}; global${RELAY[global]}.
MD
cat "$OUT_MD"
log "wrote $OUT_MD"
