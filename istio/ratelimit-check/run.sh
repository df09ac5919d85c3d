#!/usr/bin/env bash
# Proves the Envoy half of istio/ratelimit.yaml with a real Envoy and a real gRPC rate limit
# service, all on 127.0.0.1:
#
#   1. starts ratelimit_service.py (a fixed window of LIMIT requests per descriptor per second)
#      and Envoy with envoy.yaml (the EnvoyFilter's ratelimit filter and route actions);
#   2. sends REQUESTS WebSocket handshakes to /ws in one quick burst: the first LIMIT must get
#      the upstream's 200, the rest Envoy's 429; the service must have seen domain `sigmesh` and
#      the one descriptor [(generic_key, signaling), (remote_address, 127.0.0.1)] for each, the
#      last one too, which carries a forged x-forwarded-for;
#   3. stops the service: handshakes must pass again (failure_mode_deny: false, fail open).
#
#   bash istio/ratelimit-check/run.sh
#
# LIMIT defaults to the ConfigMap's requests_per_unit (20), REQUESTS to 30. Before it starts
# anything, it checks that envoy.yaml has the EnvoyFilter's filter config and route actions.
#
# Needs Envoy (scripts/install/envoy.sh, or $SIGMESH_ENVOY), grpcio (scripts/install/grpcio.sh,
# or $SIGMESH_GRPC_PYTHON), node with npm's yaml (scripts/install/k8s-schemas.sh, or
# $SIGMESH_K8S_SCHEMAS) and curl. Exits non-zero on any failure; stops what it started.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
REQUESTS="${REQUESTS:-30}"
AFTER=5 # requests sent once the service is down

envoy="${SIGMESH_ENVOY:-$HOME/.local/share/sigmesh/envoy/bin/envoy}"
[ -x "$envoy" ] || { echo "no Envoy at $envoy: run scripts/install/envoy.sh (or set SIGMESH_ENVOY)" >&2; exit 2; }
py="${SIGMESH_GRPC_PYTHON:-$HOME/.local/share/sigmesh/grpc/bin/python}"
if ! [ -x "$py" ] || ! "$py" -c 'import grpc' 2>/dev/null; then
  py=python3
  "$py" -c 'import grpc' 2>/dev/null \
    || { echo "no Python with grpcio: run scripts/install/grpcio.sh (or set SIGMESH_GRPC_PYTHON)" >&2; exit 2; }
fi
command -v curl >/dev/null || { echo "curl is missing" >&2; exit 2; }

# 0. The two configs agree: envoy.yaml's ratelimit filter and /ws route actions are the
# EnvoyFilter's (but the service's cluster name), and the ConfigMap limits that descriptor per
# second; its requests_per_unit is the default LIMIT. Read with the npm `yaml` package that
# scripts/install/k8s-schemas.sh installs for istio/validate.mjs.
schemas="${SIGMESH_K8S_SCHEMAS:-$HOME/.local/share/sigmesh/k8s-schemas}"
[ -f "$schemas/node_modules/yaml/dist/index.js" ] && command -v node >/dev/null \
  || { echo "no node or npm's yaml in $schemas: run scripts/install/k8s-schemas.sh" >&2; exit 2; }
per_second="$(node --input-type=module - "$schemas" "$here/../ratelimit.yaml" "$here/envoy.yaml" <<'JS'
import { readFileSync } from "node:fs";
import { isDeepStrictEqual as same } from "node:util";
import { pathToFileURL } from "node:url";
const [schemas, manifest, bootstrap] = process.argv.slice(2);
const { parse, parseAllDocuments } = await import(
  pathToFileURL(`${schemas}/node_modules/yaml/dist/index.js`).href);
const die = (m) => { console.error(`envoy.yaml and ../ratelimit.yaml disagree: ${m}`); process.exit(1); };
const docs = parseAllDocuments(readFileSync(manifest, "utf8")).map((d) => d.toJS());
const envoy = parse(readFileSync(bootstrap, "utf8"));
const patches = docs.find((d) => d?.kind === "EnvoyFilter").spec.configPatches;
const hcm = envoy.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
// The filter's config but the service's cluster (Istio's outbound cluster, or the local one).
const config = (f) => {
  const g = structuredClone(f);
  delete g.rate_limit_service.grpc_service.envoy_grpc;
  return g;
};
const want = patches.find((p) => p.applyTo === "HTTP_FILTER").patch.value;
const got = hcm.http_filters.find((f) => f.name === want.name);
if (!got || !same(config(got.typed_config), config(want.typed_config)))
  die(`the ratelimit filter: ${JSON.stringify(got)} vs ${JSON.stringify(want)}`);
const actions = patches.find((p) => p.applyTo === "HTTP_ROUTE").patch.value.route.rate_limits;
const ws = hcm.route_config.virtual_hosts[0].routes.find((r) => r.name === "signaling");
if (!same(ws?.route?.rate_limits, actions))
  die(`the /ws route's rate_limits: ${JSON.stringify(ws?.route?.rate_limits)} vs ${JSON.stringify(actions)}`);
const rls = parse(docs.find((d) => d?.kind === "ConfigMap").data["config.yaml"]);
const inner = rls.descriptors
  .find((d) => d.key === "generic_key" && d.value === "signaling")
  ?.descriptors?.find((d) => d.key === "remote_address" && d.value === undefined);
if (rls.domain !== want.typed_config.domain || inner?.rate_limit?.unit !== "second")
  die(`the ConfigMap has no per-second (generic_key, signaling) > remote_address limit in domain ${want.typed_config.domain}`);
console.log(inner.rate_limit.requests_per_unit);
JS
)" || exit 1
LIMIT="${LIMIT:-$per_second}"
[ "$REQUESTS" -gt "$LIMIT" ] || { echo "REQUESTS ($REQUESTS) must exceed LIMIT ($LIMIT)" >&2; exit 2; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sigmesh-ratelimit-check.XXXXXX")"
rls_pid="" envoy_pid="" ok=""
stop() { # stop PID: TERM, then KILL if it is still there after 5 s
  local pid="$1" i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop "$envoy_pid"
  stop "$rls_pid"
  if [ -z "$ok" ]; then
    for f in rls.out rls.err envoy.log; do
      [ -s "$tmp/$f" ] && { echo "--- $f (last 30 lines)" >&2; tail -n 30 "$tmp/$f" >&2; }
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# wait_for SECONDS WHAT CMD...: polls CMD every 50 ms until it succeeds or the deadline passes.
wait_for() {
  local secs="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within ${secs}s"
    sleep 0.05
  done
}
alive() { kill -0 "$1" 2>/dev/null; }

# 1. The rate limit service, on a free port it picks and reports.
"$py" "$here/ratelimit_service.py" "$LIMIT" --port 0 >"$tmp/rls.out" 2>"$tmp/rls.err" &
rls_pid=$!
listening() { alive "$rls_pid" && grep -q '"listening"' "$tmp/rls.out"; }
wait_for 15 "the rate limit service listening" listening
rls_port="$(sed -n 's/^{"listening": \([0-9]*\)}$/\1/p' "$tmp/rls.out")"
[ -n "$rls_port" ] || fail "no port in $(head -n 1 "$tmp/rls.out")"

# Envoy's two listeners: free ports the kernel gives (both held open until both are known).
read -r listen_port upstream_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
[ -n "${upstream_port:-}" ] || fail "no free ports"
sed -e "s/__LISTEN_PORT__/$listen_port/g" -e "s/__UPSTREAM_PORT__/$upstream_port/g" \
  -e "s/__RLS_PORT__/$rls_port/g" "$here/envoy.yaml" >"$tmp/envoy.yaml"
! grep -q '__[A-Z_]*_PORT__' "$tmp/envoy.yaml" || fail "a placeholder is left in envoy.yaml"
"$envoy" -c "$tmp/envoy.yaml" --disable-hot-restart --concurrency 1 -l warning \
  --admin-address-path "$tmp/admin" >"$tmp/envoy.log" 2>&1 &
envoy_pid=$!
admin_known() { alive "$envoy_pid" && [ -s "$tmp/admin" ]; }
wait_for 30 "Envoy's admin address" admin_known
admin="http://$(cat "$tmp/admin")"
ready() { alive "$envoy_pid" && curl -fsS "$admin/ready" | grep -q LIVE; }
wait_for 30 "Envoy ready" ready
base="http://127.0.0.1:$listen_port"
stat() { # stat NAME: one counter of Envoy's (0 when absent)
  local v
  v="$(curl -fsS "$admin/stats?filter=^$1\$" | sed -n "s/^$1: //p")"
  echo "${v:-0}"
}

# The first call opens Envoy's HTTP/2 connection to the service; it must reach the service.
code="$(curl -s -o /dev/null -w '%{http_code}' "$base/warmup")"
[ "$code" = 200 ] || fail "/warmup: HTTP $code"
seen_warmup() { grep -q '"warmup"' "$tmp/rls.out"; }
wait_for 5 "the service seeing the warm-up call" seen_warmup
calls_before="$(grep -c '"domain"' "$tmp/rls.out")"

# 2. The burst: one curl, REQUESTS WebSocket handshakes in order (what sigmesh's `connections`
# counts); the last one claims another client address in x-forwarded-for (Envoy must not
# believe it). The upstream answers 200 to those that get through.
ws=(-H 'connection: Upgrade' -H 'upgrade: websocket' -H 'sec-websocket-version: 13'
  -H 'sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==')
args=()
for ((i = 1; i <= REQUESTS; i++)); do
  [ "$i" -gt 1 ] && args+=(--next)
  args+=(-s -o /dev/null -w '%{http_code}\n' "${ws[@]}")
  [ "$i" -eq "$REQUESTS" ] && args+=(-H 'x-forwarded-for: 203.0.113.7')
  args+=("$base/ws?n=$i")
done
mapfile -t codes < <(curl "${args[@]}")
[ "${#codes[@]}" -eq "$REQUESTS" ] || fail "curl gave ${#codes[@]} status codes for $REQUESTS requests: ${codes[*]}"
want=""
for ((i = 1; i <= REQUESTS; i++)); do want+="$([ "$i" -le "$LIMIT" ] && echo 200 || echo 429) "; done
got="${codes[*]} "

# What the service saw for the burst: every call, its domain, descriptors and decision.
seen_burst() { [ "$(grep -c '"domain"' "$tmp/rls.out")" -ge $((calls_before + REQUESTS)) ]; }
wait_for 5 "the service logging $REQUESTS calls" seen_burst
tail -n +"$((calls_before + 2))" "$tmp/rls.out" >"$tmp/burst.jsonl" # +2: the listening line
python3 - "$tmp/burst.jsonl" "$LIMIT" "$REQUESTS" <<'EOF' || fail "the service's view of the burst (above)"
import json, sys
path, limit, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
calls = [json.loads(l) for l in open(path)]
want = [[["generic_key", "signaling"], ["remote_address", "127.0.0.1"]]]
bad = [c for c in calls if c["domain"] != "sigmesh" or c["descriptors"] != want]
if len(calls) != n or bad:
    sys.exit(f"{len(calls)} calls (want {n}); not domain sigmesh with {want}: {bad[:3]}")
codes = [c["code"] for c in calls]
if codes != ["OK"] * limit + ["OVER_LIMIT"] * (n - limit):
    span = calls[-1]["t"] - calls[0]["t"]
    sys.exit(f"decisions {codes} (burst took {span:.3f}s: longer than the 1s window?)")
EOF
[ "$got" = "$want" ] || fail "status codes: got ${got}want ${want}"
rl_ok="$(stat cluster.upstream.ratelimit.ok)"
rl_over="$(stat cluster.upstream.ratelimit.over_limit)"
rl_err="$(stat cluster.upstream.ratelimit.error)"
[ "$rl_ok" -eq $((LIMIT + 1)) ] && [ "$rl_over" -eq $((REQUESTS - LIMIT)) ] && [ "$rl_err" -eq 0 ] \
  || fail "Envoy's ratelimit stats: ok=$rl_ok (want $((LIMIT + 1)), with the warm-up) over_limit=$rl_over (want $((REQUESTS - LIMIT))) error=$rl_err (want 0)"

# 3. The service goes away: the filter cannot ask it, and lets requests through.
stop "$rls_pid"
! alive "$rls_pid" || fail "the rate limit service did not stop"
rls_pid=""
after=()
for ((i = 1; i <= AFTER; i++)); do
  after+=("$(curl -s -o /dev/null -w '%{http_code}' "${ws[@]}" "$base/ws?after=$i")")
done
[ "${after[*]}" = "$(printf '200 %.0s' $(seq "$AFTER") | sed 's/ $//')" ] \
  || fail "with the service down (fail open): got ${after[*]}, want $AFTER × 200"
allowed="$(stat cluster.upstream.ratelimit.failure_mode_allowed)"
[ "$allowed" -eq "$AFTER" ] || fail "failure_mode_allowed=$allowed, want $AFTER"

ok=1
echo "ratelimit-check: ok: $LIMIT/$REQUESTS got 200 then $((REQUESTS - LIMIT)) got 429 (domain sigmesh, [(generic_key, signaling), (remote_address, 127.0.0.1)], forged x-forwarded-for ignored); service down: $AFTER/$AFTER passed (fail open, failure_mode_allowed=$allowed)"
