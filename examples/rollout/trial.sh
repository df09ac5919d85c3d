#!/usr/bin/env bash
# Runs examples/rollout/sigmesh.yaml against two example signaling servers and a stream of
# short calls, and prints the rollout as it goes (GET /routes/signaling/rollout):
#
#   examples/rollout/trial.sh            # a healthy canary: walks 10 % → 50 % → 100 %
#   examples/rollout/trial.sh bad        # the canary closes its sessions with 1011: aborted
#   examples/rollout/trial.sh slow       # the canary relays offers and answers 3× slower: aborted
#
# Needs the release binaries (built here) and Python `websockets` (scripts/install/python-peers.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-good}
PY=${SIGMESH_PYTHON:-$HOME/.local/share/sigmesh/py/bin/python}
cargo build -q --release -p sigmesh -p sigmesh-signaling-server
bin=target/release
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
stable_delay=0 canary_delay=0
[[ $MODE == slow ]] && stable_delay=10 canary_delay=30
"$bin/sigmesh-signaling-server" --listen 127.0.0.1:9001 --name stable --relay-delay-ms "$stable_delay" >/dev/null 2>&1 & pids+=($!)
"$bin/sigmesh-signaling-server" --listen 127.0.0.1:9002 --name canary --relay-delay-ms "$canary_delay" >/dev/null 2>&1 & pids+=($!)
RUST_LOG=error "$bin/sigmesh" run --config examples/rollout/sigmesh.yaml & pids+=($!)
for _ in $(seq 100); do curl -fs http://127.0.0.1:9901/readyz >/dev/null && break; sleep 0.1; done

# Calls: two peers per room, an offer and its answer, then both leave (1000); with `bad`, the
# canary closes each session with 1011 instead.
"$PY" - "$MODE" <<'PY' & pids+=($!)
import asyncio, json, sys, websockets
mode = sys.argv[1]
async def call(i):
    url = f"ws://127.0.0.1:8080/ws?room=r{i}"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        for ws, me in ((a, "a"), (b, "b")):
            await ws.send(json.dumps({"type": "join", "room": f"r{i}", "from": me}))
            await ws.recv()
        await a.recv()  # peer-joined
        await a.send(json.dumps({"type": "offer", "room": f"r{i}", "from": "a", "sdp": "v=0"}))
        await b.recv()
        await b.send(json.dumps({"type": "answer", "room": f"r{i}", "from": "b", "sdp": "v=0"}))
        await a.recv()
        await a.send(json.dumps({"type": "whoami"}))
        server = json.loads(await a.recv())["server"]
        if mode == "bad" and server == "canary":
            await a.send(json.dumps({"type": "close", "code": 1011}))
            await b.send(json.dumps({"type": "close", "code": 1011}))
            await asyncio.gather(a.wait_closed(), b.wait_closed())
async def main():
    i = 0
    while True:
        await asyncio.gather(*(call(i + k) for k in range(4)), return_exceptions=True)
        i += 4
        await asyncio.sleep(0.05)
asyncio.run(main())
PY

last=
for _ in $(seq 120); do
    r=$(curl -fs http://127.0.0.1:9901/routes/signaling/rollout)
    line=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1]); b, c = r["baseline"], r["canary"]
print("%-8s step %d/%d weights %s | ended stable %d canary %d | abnormal %d/%d | setup p90 %s/%s ms" % (
    r["state"], r["step"], len(r["steps"]), json.dumps(r["weights"]), b["sessions_ended"],
    c["sessions_ended"], b["abnormal_closes"], c["abnormal_closes"], b["setup_p90_ms"], c["setup_p90_ms"]))
' "$r")
    [[ $line != "$last" ]] && echo "$line"
    last=$line
    case $r in *'"state":"done"'*|*'"state":"aborted"'*) break ;; esac
    sleep 0.5
done
echo
echo "GET /routes/signaling/rollout:"
curl -fs http://127.0.0.1:9901/routes/signaling/rollout | python3 -m json.tool
echo
curl -fs http://127.0.0.1:9901/metrics | grep -E '^sigmesh_(rollout|session_closes)' || true
