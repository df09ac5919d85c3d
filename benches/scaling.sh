#!/usr/bin/env bash
# How sigmesh's costs grow, in one run (benches/results/<UTC>-scaling.md):
#
# - sessions: idle RSS per session and proxy CPU per round trip at SCALE_SESSIONS sessions
#   (1,000, 5,000 and 9,900: the file limit here, two descriptors per proxied session). The idle
#   figure is `loadgen idle` (one round trip each, then held) on a fresh proxy; the CPU figure a
#   fixed rate of SCALE_RATE round trips/s in all (10,000: well below saturation, the same load
#   whatever the sessions, so only their number changes), every message read, counted once every
#   session is open; nginx (one worker) measured the same way beside it, as the machine's curve;
# - routes: handshake p50/p99 (2 connectors back to back: latency, not queueing) and handshakes
#   per proxy CPU second (50 connectors) with SCALE_ROUTES routes in the config (1 to 1,000), the
#   storm aimed at the last route (the routes are prefixes, matched in order: the worst case);
# - rooms: with a per-room message bucket (`limits.rooms`), SCALE_ROOMS distinct rooms (1,000
#   to 100,000, the table's cap) are filled by 100 sessions whose messages cycle through them
#   (`loadgen run --rooms`); then the proxy CPU per round trip of that run, the RSS the table
#   added per room, and the handshake p50/p99 with that many live rooms.
#
#   benches/scaling.sh     # ~3 minutes after the build (nginx-light is installed if missing)
#
# sigmesh on CPU 0, the loadgen and the echo upstream on CPU 1 (when there are two CPUs).
# Knobs: SCALE_SESSIONS, SCALE_ROUTES, SCALE_ROOMS, SCALE_DURATION [3s], SCALE_RATE [10000],
# SCALE_RESULTS.
set -euo pipefail

LOG_TAG=scaling
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS=${SCALE_SESSIONS:-1000 5000 9900}
ROUTES=${SCALE_ROUTES:-1 10 100 1000}
ROOMS=${SCALE_ROOMS:-1000 10000 100000}
DURATION=${SCALE_DURATION:-3s}
RATE=${SCALE_RATE:-10000}
RESULTS=${SCALE_RESULTS:-$ROOT/benches/results}
SOURCE_IPS=127.0.0.2-127.0.0.17

build_release sigmesh sigmesh-loadgen
make_tmp sigmesh-scaling
free_ports 3
LISTEN_PORT=${PORTS[0]} ADMIN_PORT=${PORTS[1]} ECHO_PORT=${PORTS[2]}
PROXY_CPUS=$(auto_cpu 0) LOAD_CPUS=$(auto_cpu 1)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
start_echo "$ECHO_PORT" "$LOAD_CPUS"
pin "$LOAD_CPUS"
LPIN=("${PIN[@]}")

# `config ROUTES ROOM_BUCKET`: ROUTES prefix routes (/r0 … /rN-1, the last one also /ws), each
# reading every message; ROOM_BUCKET 1 adds a per-room message bucket that never runs dry.
config() {
    local i rooms=
    ((${2:-0})) && rooms="      rooms: { rate: 1000000000, per: 1s, burst: 1000000000 }"
    printf 'listen: 127.0.0.1:%s\nadmin: 127.0.0.1:%s\nroutes:\n' "$LISTEN_PORT" "$ADMIN_PORT"
    for ((i = 0; i < $1; i++)); do
        cat <<YAML
  - name: r$i
    match: { path_prefix: /r$i/ }
    websocket:
      max_message_bytes: 65536
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      messages: { rate: 1000000000, per: 1s, burst: 1000000000, on_exceed: drop }
$rooms
    upstreams:
      - { name: echo, url: "ws://127.0.0.1:$ECHO_PORT/ws" }
YAML
    done
}
# nginx (one worker, as benches/run.sh runs it) in front of the same echo upstream, for the sessions
# rows: the same curve for a proxy that reads nothing tells the machine's share from sigmesh's.
start_nginx() {
    [[ -z $SIG_PID ]] || stop "$SIG_PID"
    mkdir -p "$TMP/nginx-body" "$TMP/nginx-proxy"
    sed -e "s|@LISTEN_PORT@|$LISTEN_PORT|g; s|@ECHO_PORT@|$ECHO_PORT|g; s|@DIR@|$TMP|g; s|@NOFILE@|$NOFILE|g" \
        -e "s|@NGINX_WORKERS@|1|g; s|@NGINX_SSL@||g; s|@NGINX_TLS@||g" \
        -e "s|@NGINX_USER@|$([[ $(id -u) == 0 ]] && echo 'user root;')|g" \
        "$ROOT/benches/peers/nginx.conf.in" >"$TMP/nginx.conf"
    spawn "$TMP/nginx.log" "$PROXY_CPUS" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
    SIG_PID=$SPAWNED
    wait_until 30 "$SIG_PID" nginx tcp_open "$LISTEN_PORT"
    sleep 0.5
    URL="ws://127.0.0.1:$LISTEN_PORT/r0/ws"
}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || apt_install nginx-light

SIG_PID=
start_sigmesh() { # `start_sigmesh ROUTES ROOM_BUCKET`
    [[ -z $SIG_PID ]] || stop "$SIG_PID"
    config "$1" "${2:-0}" >"$TMP/sigmesh.yaml"
    "$SIGMESH" check --config "$TMP/sigmesh.yaml" >"$TMP/check.log" 2>&1 || fail "sigmesh check"
    RUST_LOG=error spawn "$TMP/sigmesh.log" "$PROXY_CPUS" "$SIGMESH" run --config "$TMP/sigmesh.yaml"
    SIG_PID=$SPAWNED
    wait_until 60 "$SIG_PID" sigmesh tcp_open "$LISTEN_PORT"
    URL="ws://127.0.0.1:$LISTEN_PORT/r$(($1 - 1))/ws"
}
rss() { mem_kib "$SIG_PID" | awk '{ print $1 }'; }
json() { python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print($2)" "$1"; }

# `run_cpu LABEL SESSIONS ARGS...`: a closed-loop run; prints its proxy CPU s per 1M round trips,
# counted from the moment every session is open (the handshakes are not the relay's cost).
run_cpu() {
    local label=$1 n=$2 t0 t1 pid
    shift 2
    bounded 180 "${LPIN[@]}" "$LOADGEN" run --url "$URL" --size 200 --duration "$DURATION" --warmup 1s \
        --sessions "$n" --source-ips "$SOURCE_IPS" --label "$label" --json "$TMP/run.json" "$@" >"$TMP/run.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_until 120 "$pid" "run $label: $n sessions open" active_is "$n"
    t0=$(cpu_ticks "$SIG_PID")
    wait "$pid" || fail "run $label"
    t1=$(cpu_ticks "$SIG_PID")
    [[ $(json "$TMP/run.json" 'j["errors"]') == 0 ]] || fail "run $label: errors $(json "$TMP/run.json" "(j['errors'], j['connect_errors'], j['lost'], j['connected'], j['error_samples'][:3])")"
    awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$(json "$TMP/run.json" 'j["received"]')" \
        'BEGIN { printf "%.2f", t / hz / n * 1e6 }'
}
# `active_is N`: N client connections (or more) are established on the listener.
active_is() { (($(ss -Htn state established "( sport = :$LISTEN_PORT )" | wc -l) >= $1)); }
no_sessions() { (($(ss -Htn state established "( sport = :$LISTEN_PORT )" | wc -l) == 0)); }
# `storm CONNECTORS`: "p50_us p99_us handshakes_per_proxy_cpu_s"
storm() {
    local t0 t1
    t0=$(cpu_ticks "$SIG_PID")
    bounded 60 "${LPIN[@]}" "$LOADGEN" storm --url "$URL" --connectors "$1" --duration "$DURATION" \
        --source-ips "$SOURCE_IPS" --json "$TMP/storm.json" >/dev/null || fail "storm"
    t1=$(cpu_ticks "$SIG_PID")
    [[ $(json "$TMP/storm.json" 'len(j["refused"])') == 0 ]] || fail "storm: refused"
    json "$TMP/storm.json" "'%.0f %.0f %.0f' % (j['p50_us'], j['p99_us'], j['completed'] / max($((t1 - t0)) / $CLK_TCK, 0.001))"
}

# --- sessions ------------------------------------------------------------------------------------
SESSION_ROWS=()
# `sessions_row PROXY N`: sets KIB (idle RSS per session) and CPU (CPU s per 1M round trips at
# RATE round trips/s in all, spread over the N sessions) for PROXY (sigmesh or nginx).
sessions_row() {
    local r0 r1
    # A new echo upstream per row: its port makes the proxy's upstream connections new 4-tuples,
    # so the previous row's (in TIME_WAIT by the thousand) do not use up the ephemeral ports.
    [[ -z $SIG_PID ]] || stop "$SIG_PID"
    SIG_PID=
    stop "$ECHO_PID"
    ECHO_PORT=$("$LOADGEN" free-ports 1)
    start_echo "$ECHO_PORT" "$LOAD_CPUS"
    if [[ $1 == nginx ]]; then start_nginx; else start_sigmesh 1; fi
    r0=$(rss)
    "${LPIN[@]}" "$LOADGEN" idle --url "$URL" --sessions "$2" --source-ips "$SOURCE_IPS" >"$TMP/idle.log" 2>&1 &
    IDLE=$!
    PIDS+=("$IDLE")
    wait_until 120 "$IDLE" "idle $2" grep -q ready "$TMP/idle.log"
    r1=$(rss)
    stop "$IDLE"
    # The idle sessions' descriptors must be gone before the run opens as many again.
    wait_until 60 "$SIG_PID" "the idle sessions to close" no_sessions
    CPU=$(run_cpu "$1-sessions-$2" "$2" --rate "$(awk -v r="$RATE" -v n="$2" 'BEGIN { print r / n }')")
    KIB=$(awk -v a="$r0" -v b="$r1" -v n="$2" 'BEGIN { printf "%.2f", (b - a) / n }')
}
for n in $SESSIONS; do
    if ((2 * n + 200 > NOFILE)); then
        log "$n sessions: over the file limit ($NOFILE), skipped"
        continue
    fi
    sessions_row sigmesh "$n"
    kib=$KIB cpu=$CPU
    sessions_row nginx "$n"
    log "$n sessions: idle $kib KiB/session (nginx $KIB), $cpu CPU s / 1M round trips (nginx $CPU)"
    SESSION_ROWS+=("$n $kib $cpu $KIB $CPU")
done

# --- routes --------------------------------------------------------------------------------------
ROUTE_ROWS=()
for k in $ROUTES; do
    start_sigmesh "$k"
    storm 10 >/dev/null # warms the proxy up (its first handshakes allocate what later ones reuse)
    read -r p50 p99 _ < <(storm 2)
    read -r _ _ hps < <(storm 50)
    log "$k routes: handshake p50 $p50 µs, p99 $p99 µs; $hps handshakes per CPU second"
    ROUTE_ROWS+=("$k $p50 $p99 $hps")
done

# --- rooms ---------------------------------------------------------------------------------------
ROOM_ROWS=()
for r in $ROOMS; do
    start_sigmesh 1 1
    r0=$(rss)
    cpu=$(run_cpu "rooms-$r" 100 --window 4 --rooms "$r")
    r1=$(rss)
    storm 10 >/dev/null
    read -r p50 p99 _ < <(storm 2)
    per=$(awk -v a="$r0" -v b="$r1" -v n="$r" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    log "$r rooms: $cpu CPU s / 1M round trips; $per B RSS per room; handshake p50 $p50 µs, p99 $p99 µs"
    ROOM_ROWS+=("$r $cpu $per $p50 $p99")
done

# --- report --------------------------------------------------------------------------------------
result_meta
OUT_MD=$RESULTS/$STAMP-scaling.md
# `grow ROWS COL`: the last row's figure over the first's, as "×R".
grow() {
    local -n rows=$1
    ((${#rows[@]} > 1)) || { echo "–"; return; }
    awk -v a="$(cut -d' ' -f"$2" <<<"${rows[0]}")" -v b="$(cut -d' ' -f"$2" <<<"${rows[-1]}")" \
        'BEGIN { printf "%.2f×", b / a }'
}
{
    echo "# How sigmesh's costs grow"
    echo
    echo "- sigmesh $REV; $MACHINE; $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- sigmesh on CPU ${PROXY_CPUS:-any}, the loadgen and the echo upstream on CPU ${LOAD_CPUS:-any}; every message read (signaling pointers, a message bucket); runs of $DURATION after 1 s of warmup; a fresh proxy per row"
    echo
    echo "## Sessions"
    echo
    echo "| sessions | idle RSS per session, KiB | nginx | proxy CPU s / 1M round trips ($RATE/s in all) | nginx |"
    echo "|---:|---:|---:|---:|---:|"
    for row in "${SESSION_ROWS[@]}"; do read -r a b c d e <<<"$row"; echo "| $a | $b | $d | $c | $e |"; done
    echo
    echo "Last row over the first: sigmesh's RSS per session $(grow SESSION_ROWS 2), its CPU per round trip $(grow SESSION_ROWS 3); nginx's $(grow SESSION_ROWS 4) and $(grow SESSION_ROWS 5) (flat is linear growth in total). The CPU is counted from the moment every session is open."
    echo
    echo "## Routes"
    echo
    echo "| routes | handshake p50, µs | handshake p99, µs | handshakes per proxy CPU second |"
    echo "|---:|---:|---:|---:|"
    for row in "${ROUTE_ROWS[@]}"; do read -r a b c d <<<"$row"; echo "| $a | $b | $c | $d |"; done
    echo
    echo "Last row over the first: p99 $(grow ROUTE_ROWS 3), handshakes per CPU second $(grow ROUTE_ROWS 4). The storm goes to the last route; routes are matched in order."
    echo
    echo "## Live rooms (a per-room message bucket)"
    echo
    echo "| rooms | proxy CPU s / 1M round trips | RSS per room, B | handshake p50, µs | handshake p99, µs |"
    echo "|---:|---:|---:|---:|---:|"
    for row in "${ROOM_ROWS[@]}"; do read -r a b c d e <<<"$row"; echo "| $a | $b | $c | $d | $e |"; done
    echo
    echo "Last row over the first: CPU per round trip $(grow ROOM_ROWS 2), handshake p99 $(grow ROOM_ROWS 5)."
} >"$OUT_MD"
cat "$OUT_MD"
log "wrote $OUT_MD"
