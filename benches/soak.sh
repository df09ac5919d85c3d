#!/usr/bin/env bash
# Soak: sigmesh holding 5,000 sessions with churn (connect, exchange, close) beside a flood of
# bad input, for 10 minutes; every 30 s one line of its RSS, file descriptors and the good
# sessions' round-trip p99. Flat lines mean nothing leaks.
#
#   benches/soak.sh                                   # 5,000 sessions, 10 min
#   SOAK_SESSIONS=1000 SOAK_DURATION=2m benches/soak.sh
#
# Knobs: SOAK_SESSIONS [5000], SOAK_DURATION [10m], SOAK_INTERVAL [30s], SOAK_CHURN [20 per s],
# SOAK_MESSAGE_EVERY [5s], SOAK_ATTACKERS [8 loops of quick bad input], SOAK_HOLDERS [4 loops of
# slow-head and never-reading clients], SOAK_SOURCE_IPS [127.0.0.2-127.0.0.17].
# Writes benches/results/<UTC>-soak.md and .json.
set -euo pipefail

LOG_TAG=soak
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS=${SOAK_SESSIONS:-5000}
DURATION=${SOAK_DURATION:-10m}
INTERVAL=${SOAK_INTERVAL:-30s}
CHURN=${SOAK_CHURN:-20}
MESSAGE_EVERY=${SOAK_MESSAGE_EVERY:-5s}
ATTACKERS=${SOAK_ATTACKERS:-8}
HOLDERS=${SOAK_HOLDERS:-4}
SOURCE_IPS=${SOAK_SOURCE_IPS:-127.0.0.2-127.0.0.17}
RESULTS=${BENCH_RESULTS:-$ROOT/benches/results}

build_release sigmesh sigmesh-loadgen
make_tmp sigmesh-soak
free_ports 3
ECHO_PORT=${PORTS[0]} LISTEN_PORT=${PORTS[1]} ADMIN_PORT=${PORTS[2]}
start_echo "$ECHO_PORT"

sed -e "s|@LISTEN_PORT@|$LISTEN_PORT|g; s|@ADMIN_PORT@|$ADMIN_PORT|g; s|@ECHO_PORT@|$ECHO_PORT|g" \
    "$ROOT/benches/peers/sigmesh-soak.yaml.in" >"$TMP/sigmesh.yaml"
"$SIGMESH" check --config "$TMP/sigmesh.yaml" >"$TMP/check.log" 2>&1 || fail "sigmesh check"
RUST_LOG=${SIGMESH_LOG:-error} spawn "$TMP/sigmesh.log" "" "$SIGMESH" run --config "$TMP/sigmesh.yaml"
SIGMESH_PID=$SPAWNED
wait_until 20 "$SIGMESH_PID" "sigmesh" tcp_open "$LISTEN_PORT"

result_meta
OUT="$RESULTS/$STAMP-soak"
log "soak: $SESSIONS sessions, churn $CHURN/s, $ATTACKERS attackers, $DURATION (report every $INTERVAL)"
"$LOADGEN" soak --url "ws://127.0.0.1:$LISTEN_PORT/ws" --pid "$SIGMESH_PID" \
    --sessions "$SESSIONS" --duration "$DURATION" --interval "$INTERVAL" --churn "$CHURN" \
    --message-every "$MESSAGE_EVERY" --attackers "$ATTACKERS" --holders "$HOLDERS" --source-ips "$SOURCE_IPS" \
    --json "$OUT.json" | tee "$TMP/soak.txt" || fail "soak run"
kill -0 "$SIGMESH_PID" 2>/dev/null || fail "sigmesh exited during the soak"
{
    echo "# Soak, $STAMP"
    echo
    echo "$MACHINE; revision $REV. sigmesh (\`benches/peers/sigmesh-soak.yaml.in\`) in front of"
    echo "the echo upstream; $SESSIONS good sessions (one 200 B message each every $MESSAGE_EVERY,"
    echo "churn $CHURN/s), $ATTACKERS loops of quick bad input and $HOLDERS of slow, for $DURATION. Per interval: the proxy's"
    echo "RSS and open file descriptors, live good sessions, opened/closed in the interval, round"
    echo "trips, failed sessions, round-trip p50/p99/max, and attacks ended by the proxy / not."
    echo
    echo '```'
    cat "$TMP/soak.txt"
    echo '```'
} >"$OUT.md"
log "wrote $OUT.md"
