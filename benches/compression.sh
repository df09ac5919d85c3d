#!/usr/bin/env bash
# A compressed session read through vs an uncompressed one, end to end, in one run: sigmesh's CPU
# per relayed round trip of 2 KiB offer-like messages with permessage-deflate negotiated end to
# end (every text message inflated to be read) and without it, and sigmesh's idle memory per
# session either way.
#
#   benches/compression.sh            # ~1 minute after the build
#   COMP_DURATION=20s COMP_SIZE=4096 benches/compression.sh
#
# Load: `sigmesh-loadgen raw-run` (raw frames: tungstenite has no permessage-deflate), 100
# sessions closed loop, window 4, the messages compressed once before the run, echoes counted by
# frame header; upstream: `sigmesh-loadgen raw-echo`, which accepts the offer and echoes frames
# as they came. Both on one CPU, sigmesh on the other. Idle memory: Python `websockets` clients
# (scripts/install/python-peers.sh), which negotiate deflate by default, against a freshly
# started sigmesh per mode. Knobs: COMP_DURATION [5s], COMP_SIZE [2048], COMP_SESSIONS [100],
# COMP_REPEAT [3] (runs per mode, interleaved; the median is kept), COMP_IDLE [1000],
# COMP_RESULTS [benches/results].
set -euo pipefail

LOG_TAG=compression
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${COMP_DURATION:-5s}
SIZE=${COMP_SIZE:-2048}
SESSIONS=${COMP_SESSIONS:-100}
REPEAT=${COMP_REPEAT:-3}
IDLE=${COMP_IDLE:-1000}
RESULTS=${COMP_RESULTS:-$ROOT/benches/results}
PY=${SIGMESH_PYTHON:-$HOME/.local/share/sigmesh/py/bin/python}
[[ -x $PY ]] || bash "$ROOT/scripts/install/python-peers.sh" >&2 || { log "scripts/install/python-peers.sh failed"; exit 1; }

build_release sigmesh sigmesh-loadgen
make_tmp sigmesh-compression
free_ports 3
LISTEN_PORT=${PORTS[0]} ADMIN_PORT=${PORTS[1]} ECHO_PORT=${PORTS[2]}
PROXY_CPUS=$(auto_cpu 0) LOAD_CPUS=$(auto_cpu 1)

spawn "$TMP/echo.log" "$LOAD_CPUS" "$LOADGEN" raw-echo --listen "127.0.0.1:$ECHO_PORT"
ECHO_PID=$SPAWNED
wait_until 10 "$ECHO_PID" "raw echo" tcp_open "$ECHO_PORT"

cat >"$TMP/sigmesh.yaml" <<YAML
listen: 127.0.0.1:$LISTEN_PORT
admin: 127.0.0.1:$ADMIN_PORT
routes:
  - name: load
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 65536
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      # Every message is read, and held until read (a room bucket that never runs dry).
      rooms: { rate: 1000000000, per: 1s, burst: 1000000000 }
    upstreams:
      - { name: echo, url: "ws://127.0.0.1:$ECHO_PORT/ws" }
YAML
"$SIGMESH" check --config "$TMP/sigmesh.yaml" >"$TMP/check.log" 2>&1 || fail "sigmesh check"
SIG_PID=
start_sigmesh() {
    [[ -z $SIG_PID ]] || stop "$SIG_PID"
    RUST_LOG=error spawn "$TMP/sigmesh.log" "$PROXY_CPUS" "$SIGMESH" run --config "$TMP/sigmesh.yaml"
    SIG_PID=$SPAWNED
    wait_until 30 "$SIG_PID" sigmesh tcp_open "$LISTEN_PORT"
    sleep 0.5
}
start_sigmesh
URL="ws://127.0.0.1:$LISTEN_PORT/ws"

pin "$LOAD_CPUS"
declare -A RUNS
for ((i = 1; i <= REPEAT; i++)); do
    for mode in plain deflate; do
        flag=()
        [[ $mode == deflate ]] && flag=(--deflate)
        c0=$(cpu_ticks "$SIG_PID")
        out=$(bounded 120 "${PIN[@]}" "$LOADGEN" raw-run --url "$URL" --sessions "$SESSIONS" --window 4 \
            --size "$SIZE" --duration "$DURATION" --warmup 1s "${flag[@]}") || fail "raw-run $mode"
        c1=$(cpu_ticks "$SIG_PID")
        # CPU over the whole run (warmup included) per round trip of the measured part, scaled
        # by the share of the run that was measured.
        us=$(python3 -c '
import json, sys
j = json.loads(sys.argv[1]); t, hz, d = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rate, mb, fb = j["round_trips_per_sec"], j["message_bytes"], j["frame_bytes"]
print(f"{t / hz / ((d + 1) * rate) * 1e6:.2f} {rate:.0f} {mb} {fb}")
' "$out" $((c1 - c0)) "$CLK_TCK" "${DURATION%s}")
        RUNS[$mode]="${RUNS[$mode]:-} $us"
        log "$mode run $i: $us (µs per round trip, round trips/s, message bytes, frame bytes)"
    done
done
# The median run per mode, by CPU per round trip.
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | paste - - - - | sort -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
read -r CPU_PLAIN RATE_PLAIN MSG_PLAIN FRAME_PLAIN < <(median "${RUNS[plain]}")
read -r CPU_DEFLATE RATE_DEFLATE _ FRAME_DEFLATE < <(median "${RUNS[deflate]}")

# Idle memory per session: IDLE sessions held open, each after one round trip, on a fresh sigmesh.
idle_kib() { # `idle_kib MODE`: sigmesh's RSS growth per idle session, in IDLE_KIB
    local mode=$1 r0 r1 lpid
    start_sigmesh
    read -r r0 _ < <(mem_kib "$SIG_PID")
    rm -f "$TMP/idle.log"
    spawn "$TMP/idle.log" "$LOAD_CPUS" "$PY" -c "
import asyncio, sys, websockets
async def main():
    c = 'deflate' if sys.argv[1] == 'deflate' else None
    conns = []
    for i in range(int(sys.argv[2])):
        ws = await websockets.connect(sys.argv[3], compression=c, max_size=None)
        await ws.send('{\"type\":\"join\",\"room\":\"r%d\",\"from\":\"p%d\",\"pad\":\"%s\"}' % (i % 50, i, 'x' * 1500))
        await ws.recv()
        conns.append(ws)
    print('ready', flush=True)
    await asyncio.sleep(300)
asyncio.run(main())" "$mode" "$IDLE" "$URL"
    lpid=$SPAWNED
    wait_until 120 "$lpid" "idle $mode" grep -qs '^ready' "$TMP/idle.log"
    sleep 1
    read -r r1 _ < <(mem_kib "$SIG_PID")
    stop "$lpid"
    IDLE_KIB=$(awk -v a="$r0" -v b="$r1" -v n="$IDLE" 'BEGIN { printf "%.2f", (b - a) / n }')
    log "  idle $mode: RSS $r0 KiB -> $r1 KiB with $IDLE sessions"
}
idle_kib plain
MEM_PLAIN=$IDLE_KIB
idle_kib deflate
MEM_DEFLATE=$IDLE_KIB
log "idle: plain $MEM_PLAIN KiB, deflate $MEM_DEFLATE KiB per session"

result_meta
RATIO=$(awk -v a="$CPU_DEFLATE" -v b="$CPU_PLAIN" 'BEGIN { printf "%.2f", a / b }')
MRATIO=$(awk -v a="$MEM_DEFLATE" -v b="$MEM_PLAIN" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
OUT_MD=$RESULTS/$STAMP-compression.md
cat >"$OUT_MD" <<MD
# A compressed session read through vs an uncompressed one

- sigmesh $REV; $MACHINE; $(date -u +%Y-%m-%dT%H:%M:%SZ)
- $SESSIONS sessions × $MSG_PLAIN B offer-like JSON (SDP lines; $FRAME_DEFLATE B on the wire compressed, $FRAME_PLAIN B not), closed loop window 4, 1 s warmup + $DURATION, the median of $REPEAT interleaved runs per mode; \`sigmesh-loadgen raw-run\` and \`raw-echo\` on CPU ${LOAD_CPUS:-any}, sigmesh on CPU ${PROXY_CPUS:-any}
- sigmesh reads every message (\`signaling:\` pointers, a room bucket that holds each message until read), both ways; compressed: \`permessage-deflate\` without a context either way, each text message inflated to be read
- idle: $IDLE Python \`websockets\` sessions held open after one 1.5 KiB round trip each, on a freshly started sigmesh per mode; its RSS growth per session

| measure | uncompressed | compressed | compressed / uncompressed |
|---|---:|---:|---:|
| sigmesh CPU per round trip, µs | $CPU_PLAIN | $CPU_DEFLATE | $RATIO |
| round trips/s | $RATE_PLAIN | $RATE_DEFLATE | |
| idle RSS per session, KiB | $MEM_PLAIN | $MEM_DEFLATE | $MRATIO |

All runs (µs per round trip, round trips/s, message bytes, frame bytes): uncompressed${RUNS[plain]}; compressed${RUNS[deflate]}.
MD
cat "$OUT_MD"
log "wrote $OUT_MD"
