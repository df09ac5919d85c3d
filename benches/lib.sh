# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by the scripts that source this
# Shared helpers for benches/run.sh, e2e.sh and envoy.sh (sourced, after `set -euo pipefail`).
# Sets ROOT (the repository) and changes to it; the sourcing script sets LOG_TAG (its log prefix)
# first. What is here: logging and failing, pinning, the build, process tracking and cleanup,
# readiness polling, /proc accounting (CPU ticks, memory), free ports, the echo upstream, the
# `loadgen run` of e2e.sh and envoy.sh, and the git revision / machine line of a result.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# shellcheck source=SCRIPTDIR/../scripts/install/lib.sh
source "$ROOT/scripts/install/lib.sh" # have, apt_install

NPROC=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
HAVE_TASKSET=0
have taskset && HAVE_TASKSET=1

log() { printf '%s: %s\n' "${LOG_TAG:-bench}" "$*" >&2; }

# --- pinning -------------------------------------------------------------------------------------
# `auto_cpu N`: prints N when taskset is there and the machine has more than one CPU (the default
# placement of a pinned process), else nothing.
auto_cpu() {
    if ((HAVE_TASKSET && NPROC > 1)); then echo "$1"; fi
}
# `pin CPUS`: sets PIN to the command prefix that runs a program on CPUS (taskset execs the program,
# so `$!` of a backgrounded "${PIN[@]}" prog is the program itself). Empty without CPUS or taskset.
pin() {
    PIN=()
    if [[ -n $1 ]] && ((HAVE_TASKSET)); then PIN=(taskset -c "$1"); fi
}

# --- build ---------------------------------------------------------------------------------------
# `build_release PACKAGE...`: `cargo build --release` of the packages; sets BIN (the release dir),
# LOADGEN and SIGMESH. CARGO_TARGET_DIR defaults to target/ and is exported.
build_release() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    local what=$1 args=() p
    for p in "${@:2}"; do what="$what and $p"; done
    for p in "$@"; do args+=(-p "$p"); done
    log "building $what (release, $CARGO_TARGET_DIR)"
    cargo build --release "${args[@]}"
    BIN=$CARGO_TARGET_DIR/release
    LOADGEN=$BIN/sigmesh-loadgen
    SIGMESH=$BIN/sigmesh
}

# --- processes: every one started is tracked and killed on exit -----------------------------------
# `make_tmp NAME`: creates TMP (removed on exit unless BENCH_KEEP_TMP is set) and installs the
# trap that stops every process in PIDS.
make_tmp() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$TMP" # nginx's workers (another user unless root) read the configs in it
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n ${BENCH_KEEP_TMP:-} ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
# `spawn LOG CPUS CMD...`: runs CMD in the background on CPUS (any when empty), its output to LOG;
# tracks it and sets SPAWNED to its PID. Environment assignments before `spawn` reach CMD.
spawn() {
    local out=$1
    pin "$2"
    shift 2
    "${PIN[@]}" "$@" >"$out" 2>&1 &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}
fail() {
    log "FAILED: $*"
    local f
    for f in "${TMP:-}"/*.log; do [[ -s $f ]] && { log "--- $(basename "$f")"; tail -n 20 "$f" >&2; }; done
    exit 1
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# `wait_until SECS PID WHAT CMD...`: polls CMD until it succeeds; fails when PID exits or after SECS.
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
# `stop PID`: TERM, then KILL after 5 s.
stop() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# `bounded SECS CMD...`: runs CMD with a time limit.
bounded() { timeout -k 5 "$@"; }

# --- /proc accounting ----------------------------------------------------------------------------
# `tree PID`: the PID and all its descendants (nginx's workers).
tree() {
    local p=$1 c
    echo "$p"
    for c in $(pgrep -P "$p" 2>/dev/null); do tree "$c"; done
}
# `cpu_ticks PID`: utime + stime of the whole tree, or nothing when PID has no /proc entry.
cpu_ticks() {
    [[ -r /proc/$1/stat ]] || return 0
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
# `cpu_seconds TICKS`: ticks as seconds, three decimals.
cpu_seconds() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }'; }
# `mem_kib PID`: "RSS_KiB PSS_KiB" summed over the tree.
mem_kib() {
    local rss=0 pss=0 p v
    for p in $(tree "$1"); do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) && rss=$((rss + ${v:-0}))
        v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null) && pss=$((pss + ${v:-0}))
    done
    echo "$rss $pss"
}

# --- ports, the echo upstream, load runs ---------------------------------------------------------
# `free_ports N`: sets PORTS to N free TCP ports on 127.0.0.1.
free_ports() {
    mapfile -t PORTS < <("$LOADGEN" free-ports "$1")
    ((${#PORTS[@]} == $1)) || fail "could not find free ports"
}
# `start_echo PORT [CPUS]`: the echo upstream (`loadgen echo`, one thread); sets ECHO_PID.
start_echo() {
    spawn "$TMP/echo.log" "${2:-}" "$LOADGEN" echo --listen "127.0.0.1:$1" --threads 1
    ECHO_PID=$SPAWNED
    wait_until 10 "$ECHO_PID" "echo server" tcp_open "$1"
}
# `relay_knobs PREFIX`: the knobs of e2e.sh and envoy.sh's relay runs, from PREFIX_DURATION [10s],
# _WARMUP [2s], _SIZE [200], _TP_SESSIONS [100], _TP_WINDOW [4], _LAT_SESSIONS [100],
# _LAT_RATE [20], _RESULTS [benches/results]; sets the variables without the prefix, and TP and LAT
# (the `loadgen run` arguments of the closed-loop and the fixed-rate runs).
relay_knobs() {
    local k d v
    for k in DURATION=10s WARMUP=2s SIZE=200 TP_SESSIONS=100 TP_WINDOW=4 LAT_SESSIONS=100 \
        LAT_RATE=20 RESULTS="$ROOT/benches/results"; do
        d=${k#*=} k=${k%%=*}
        v=${1}_$k
        printf -v "$k" '%s' "${!v:-$d}"
    done
    TP=(--sessions "$TP_SESSIONS" --window "$TP_WINDOW")
    LAT=(--sessions "$LAT_SESSIONS" --rate "$LAT_RATE")
}
# `load LABEL URL OUT.json ARGS...`: one `loadgen run` of SIZE-byte messages, WARMUP + DURATION, on
# LOADGEN_CPUS with LOADGEN_THREADS threads when those are set.
load() {
    local label=$1 url=$2 out=$3 threads=()
    shift 3
    [[ -n ${LOADGEN_THREADS:-} ]] && threads=(--threads "$LOADGEN_THREADS")
    pin "${LOADGEN_CPUS:-}"
    "${PIN[@]}" "$LOADGEN" run --url "$url" --label "$label" --size "$SIZE" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$out" "${threads[@]}" "$@" \
        || fail "load run $label ($url)"
}

# --- Envoy ---------------------------------------------------------------------------------------
# `wasm_filter_yaml PLUGIN_JSON WASM`: the sigmesh Wasm filter (V8) as an entry of an Envoy
# bootstrap's `http_filters` (indented for benches/envoy.sh's and run.sh's bootstraps).
wasm_filter_yaml() {
    cat <<YAML
          - name: sigmesh
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: sigmesh
                root_id: sigmesh
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '$1'
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "$2" } }
YAML
}

# --- results -------------------------------------------------------------------------------------
# `result_meta`: creates RESULTS; sets STAMP (UTC, for file names), REV (git, "(dirty)" when the
# tree has changes) and MACHINE (CPUs, model, kernel).
result_meta() {
    mkdir -p "$RESULTS"
    STAMP=$(date -u +%Y%m%dT%H%M%SZ)
    REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -z $(git status --porcelain 2>/dev/null | head -n 1) ]] || REV="$REV (dirty)"
    local model
    model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    MACHINE="$NPROC CPUs${model:+, $model}, $(uname -sr)"
}
