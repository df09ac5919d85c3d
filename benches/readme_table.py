#!/usr/bin/env python3
"""The README's performance table from one suite run: `benches/readme_table.py RESULT-suite.json`.

Every row the run measured, as sigmesh's figure and its ratios to the other proxies in that same
run (nginx, HAProxy, Envoy, and the direct connection where that means something), plus the
Envoy filter's cost (Envoy with the sigmesh filter over bare Envoy). `benches/run.sh` appends it to
its Markdown result; the README carries the latest one.
"""

import json
import sys

ROWS = [
    # (label, run, key, decimals, higher is better, against direct)
    ("relay 100 × 200 B, round trips/s", "tp100", "msgs_per_sec", 0, True, True),
    ("relay 1,000 × 200 B, round trips/s", "tp1000", "msgs_per_sec", 0, True, True),
    ("relay 100 × 16 KiB, round trips/s", "tp16k", "msgs_per_sec", 0, True, True),
    ("CPU per round trip, 100 × 200 B, µs", "tp100", "proxy_cpu_s_per_million_round_trips", 2, False, False),
    ("CPU per round trip, 1,000 × 200 B, µs", "tp1000", "proxy_cpu_s_per_million_round_trips", 2, False, False),
    ("CPU per round trip, 100 × 16 KiB, µs", "tp16k", "proxy_cpu_s_per_million_round_trips", 2, False, False),
    ("latency p50 at a fixed rate, µs", "lat", "p50_us", 0, False, True),
    ("latency p99 at a fixed rate, µs", "lat", "p99_us", 0, False, True),
    ("idle RSS per session, KiB (1,000)", "idle1000", "rss_kib_per_session", 2, False, False),
    ("idle RSS per session, KiB (9,900)", "idle9900", "rss_kib_per_session", 2, False, False),
    ("storm: handshakes/s", "storm", "completed_per_sec", 0, True, True),
    ("storm: handshake p99, µs", "storm", "p99_us", 0, False, True),
    ("storm: handshakes per CPU second", "storm", "handshakes_per_proxy_cpu_s", 0, True, False),
    ("wss relay 100 × 200 B, round trips/s", "tls-tp100", "msgs_per_sec", 0, True, False),
    ("wss CPU per round trip, 100 × 200 B, µs", "tls-tp100", "proxy_cpu_s_per_million_round_trips", 2, False, False),
    ("wss CPU per round trip, 100 × 16 KiB, µs", "tls-tp16k", "proxy_cpu_s_per_million_round_trips", 2, False, False),
    ("TLS storm: full handshakes per CPU second", "tls-storm", "handshakes_per_proxy_cpu_s", 0, True, False),
    ("idle RSS per TLS session, KiB (9,900)", "tls-idle9900", "rss_kib_per_session", 2, False, False),
]
OTHERS = [("nginx", "nginx"), ("haproxy", "HAProxy"), ("envoy", "Envoy"), ("direct", "direct")]


def get(res, peer, run, key):
    v = res["peers"].get(peer, {}).get(run)
    return v.get(key) if isinstance(v, dict) else None


def main(path):
    res = json.load(open(path))
    out = [
        "| measure | sigmesh | ÷ nginx | ÷ HAProxy | ÷ Envoy | ÷ direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, run, key, prec, _higher, vs_direct in ROWS:
        v = get(res, "sigmesh", run, key)
        if v is None:
            continue
        cells = [f"{v:,.{prec}f}"]
        for peer, _ in OTHERS:
            b = get(res, peer, run, key)
            ok = peer != "direct" or vs_direct
            cells.append(f"{v / b:.2f}" if ok and b else "–")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    filt = []
    for label, run, key, prec, _h, _d in ROWS:
        a, b = get(res, "envoy-sigmesh", run, key), get(res, "envoy", run, key)
        if a is not None and b:
            filt.append(f"{label}: {a / b:.2f}")
    if filt:
        out += ["", "Envoy with the sigmesh filter ÷ bare Envoy: " + "; ".join(filt) + "."]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
