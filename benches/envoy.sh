#!/usr/bin/env bash
# Relay load through Envoy 1.40 with and without the sigmesh Wasm filter, in the same run: an echo
# upstream, two Envoys in front of it (identical bootstraps but for the filter), and the same
# closed-loop throughput and fixed-rate latency runs against each. Reports messages/s and p99
# round-trip latency, and the ratios filter/bare.
#
#   benches/envoy.sh                       # ~1 minute after the build
#   ENVOY_BENCH_DURATION=30s benches/envoy.sh
#
# Needs Envoy (scripts/install/envoy.sh; or SIGMESH_ENVOY), the wasm32-wasip1 target, python3.
# Writes benches/results/envoy-<UTC>.md and .json. Knobs (defaults in brackets):
#   ENVOY_BENCH_DURATION [10s]  ENVOY_BENCH_WARMUP [2s]  ENVOY_BENCH_SIZE [200] bytes per message
#   ENVOY_BENCH_TP_SESSIONS [100] ENVOY_BENCH_TP_WINDOW [4]     closed-loop throughput runs
#   ENVOY_BENCH_LAT_SESSIONS [100] ENVOY_BENCH_LAT_RATE [20]    fixed-rate latency runs
#   ENVOY_BENCH_CONCURRENCY [1]  Envoy worker threads (each Envoy)   CARGO_TARGET_DIR [target]
#   ENVOY_BENCH_WASM [the wasm-release build]  a .wasm to load instead (e.g. another opt-level)
#   ENVOY_BENCH_RESULTS [benches/results]  BENCH_KEEP_TMP [unset] keep the temporary directory
set -euo pipefail

LOG_TAG=envoy-bench
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

relay_knobs ENVOY_BENCH # DURATION WARMUP SIZE TP_* LAT_* RESULTS, and the TP / LAT run arguments
CONCURRENCY=${ENVOY_BENCH_CONCURRENCY:-1}
LOADGEN_CPUS='' LOADGEN_THREADS='' # `load`: the client unpinned, with loadgen's default threads
ENVOY=${SIGMESH_ENVOY:-$HOME/.local/share/sigmesh/envoy/bin/envoy}
[[ -x $ENVOY ]] || { log "Envoy not found at $ENVOY: run scripts/install/envoy.sh"; exit 1; }

build_release sigmesh-loadgen
if [[ -n ${ENVOY_BENCH_WASM:-} ]]; then
    WASM=$ENVOY_BENCH_WASM
else
    log "building the filter (wasm32-wasip1, wasm-release)"
    cargo build -p sigmesh-filter --target wasm32-wasip1 --profile wasm-release
    WASM=$CARGO_TARGET_DIR/wasm32-wasip1/wasm-release/sigmesh_filter.wasm
fi

make_tmp sigmesh-envoy-bench
free_ports 5
ECHO_PORT=${PORTS[0]}
start_echo "$ECHO_PORT"

# The plugin configuration: a WebSocket route reading signaling fields, with message and
# connection buckets high enough never to trigger (exercised on every message, nothing dropped).
PLUGIN='{"routes":[{"name":"load","match":{"path_prefix":"/ws"},"websocket":{"max_message_bytes":65536,"signaling":{"type":"/type","room":"/room","peer":"/from"}},"limits":{"connections":{"rate":1000000,"per":"1s","burst":1000000},"messages":{"rate":1000000000,"per":"1s","burst":1000000000}},"upstreams":[{"name":"echo","weight":1}]}]}'

# `bootstrap NAME PORT ADMIN WITH_FILTER`
bootstrap() {
    local name=$1 port=$2 admin=$3 with=$4 filter=""
    if [[ $with == 1 ]]; then
        filter=$(wasm_filter_yaml "$PLUGIN" "$WASM")
    fi
    cat >"$TMP/$name.yaml" <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $admin } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          upgrade_configs: [{ upgrade_type: websocket }]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: / }
                route: { cluster: echo, timeout: 0s }
          http_filters:
$filter
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: echo
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $ECHO_PORT } } }
EOF
}

start_envoy() {
    local name=$1 port=$2 admin=$3 with=$4
    bootstrap "$name" "$port" "$admin" "$with"
    spawn "$TMP/$name.log" "" "$ENVOY" -c "$TMP/$name.yaml" --concurrency "$CONCURRENCY" \
        --disable-hot-restart -l error
    wait_until 60 "$SPAWNED" "envoy $name" tcp_open "$port"
    log "envoy $name on 127.0.0.1:$port (pid $SPAWNED, $CONCURRENCY worker(s))"
}
start_envoy bare "${PORTS[1]}" "${PORTS[2]}" 0
start_envoy filter "${PORTS[3]}" "${PORTS[4]}" 1
BARE_URL="ws://127.0.0.1:${PORTS[1]}/ws"
FILTER_URL="ws://127.0.0.1:${PORTS[3]}/ws"

log "throughput: $TP_SESSIONS sessions x $SIZE B, window $TP_WINDOW; latency: $LAT_SESSIONS x $LAT_RATE msg/s"
load bare "$BARE_URL" "$TMP/tp-bare.json" "${TP[@]}"
load filter "$FILTER_URL" "$TMP/tp-filter.json" "${TP[@]}"
load bare "$BARE_URL" "$TMP/lat-bare.json" "${LAT[@]}"
load filter "$FILTER_URL" "$TMP/lat-filter.json" "${LAT[@]}"

MSGS=$(curl -s "http://127.0.0.1:${PORTS[4]}/stats" 2>/dev/null | grep -c 'sigmesh.messages_total' || true)
[[ ${MSGS:-0} -gt 0 ]] || log "warning: no sigmesh.messages_total stats seen on the filtered Envoy"

result_meta
python3 - "$TMP" "$RESULTS/envoy-$STAMP" "$REV" "$CONCURRENCY" "$SIZE" "$DURATION" "$(stat -c %s "$WASM")" <<'EOF'
import json, sys
tmp, out, rev, conc, size, dur, wasm = sys.argv[1:]
r = {k: json.load(open(f"{tmp}/{k}.json")) for k in ["tp-bare", "tp-filter", "lat-bare", "lat-filter"]}
res = {
    "meta": {"git": rev, "envoy_concurrency": int(conc), "message_bytes": int(size), "duration": dur,
             "wasm_bytes": int(wasm)},
    "throughput_msgs_per_sec": {"bare": r["tp-bare"]["msgs_per_sec"], "filter": r["tp-filter"]["msgs_per_sec"]},
    "throughput_p99_us": {"bare": r["tp-bare"]["p99_us"], "filter": r["tp-filter"]["p99_us"]},
    "latency_p50_us": {"bare": r["lat-bare"]["p50_us"], "filter": r["lat-filter"]["p50_us"]},
    "latency_p99_us": {"bare": r["lat-bare"]["p99_us"], "filter": r["lat-filter"]["p99_us"]},
    "errors": {k: v["errors"] + v["lost"] for k, v in r.items()},
}
ratio = lambda d: d["filter"] / d["bare"] if d["bare"] else float("nan")
res["ratios_filter_over_bare"] = {k: round(ratio(res[k]), 3) for k in
    ["throughput_msgs_per_sec", "throughput_p99_us", "latency_p50_us", "latency_p99_us"]}
json.dump(res, open(out + ".json", "w"), indent=2)
rows = [("throughput, messages/s", "throughput_msgs_per_sec"), ("throughput run p99, µs", "throughput_p99_us"),
        ("fixed-rate p50, µs", "latency_p50_us"), ("fixed-rate p99, µs", "latency_p99_us")]
md = [f"# Envoy with and without the sigmesh filter ({rev})", "",
      f"Envoy 1.40, {conc} worker(s) each; {size} B text messages; {dur} per run; filter {int(wasm)//1024} KiB.", "",
      "| measure | bare Envoy | Envoy + sigmesh | filter / bare |", "|---|---:|---:|---:|"]
for name, k in rows:
    md.append(f"| {name} | {res[k]['bare']:.1f} | {res[k]['filter']:.1f} | {res['ratios_filter_over_bare'][k]:.3f} |")
md.append(f"\nErrors or lost messages: {res['errors']}")
open(out + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
log "wrote $RESULTS/envoy-$STAMP.md and .json"
