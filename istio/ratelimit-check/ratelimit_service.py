#!/usr/bin/env python3
"""A stand-in for Envoy's global rate limit service (envoyproxy/ratelimit), for run.sh.

A real gRPC server of `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on
PyPI's grpcio (scripts/install/grpcio.sh), without generated protobuf code: the handler takes
and returns raw bytes, and the few fields it needs are read and written by the minimal
protobuf wire codec below.

  RateLimitRequest    { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
                        uint32 hits_addend = 3; }
  RateLimitDescriptor { repeated Entry entries = 1; ... }   Entry { string key = 1; string value = 2; }
  RateLimitResponse   { Code overall_code = 1; ... }        Code: UNKNOWN = 0, OK = 1, OVER_LIMIT = 2

Limit: a fixed window, LIMIT requests per descriptor per WINDOW seconds (like envoyproxy/ratelimit's
`requests_per_unit`/`unit`, except that a descriptor's window opens with its first hit instead
of on the wall clock's second, so that a short burst never straddles two windows). A request is
over the limit when any of its descriptors is (as in envoyproxy/ratelimit); hits_addend 0
counts as 1.

  ratelimit_service.py LIMIT [--port PORT] [--window SECONDS]

Prints JSON lines on stdout: first {"listening": PORT} (PORT 0 picks a free one), then one
line per call: {"domain", "descriptors": [[[key, value], ...], ...], "hits", "code", "t"}.
"""

import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
OK, OVER_LIMIT = 1, 2


# --- protobuf wire format -------------------------------------------------------------------

def read_varint(buf, i):
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf):
    """Yields (field number, wire type, value) of a message; value is an int (varint, fixed)
    or bytes (length-delimited). Unknown fields are read past, whatever their number."""
    i = 0
    while i < len(buf):
        tag, i = read_varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 2:
            n, i = read_varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_request(buf):
    domain, descriptors, hits = "", [], 0
    for num, wt, v in fields(buf):
        if num == 1 and wt == 2:
            domain = v.decode()
        elif num == 2 and wt == 2:
            entries = []
            for dn, dwt, dv in fields(v):
                if dn == 1 and dwt == 2:
                    key = value = ""
                    for en, ewt, ev in fields(dv):
                        if en == 1 and ewt == 2:
                            key = ev.decode()
                        elif en == 2 and ewt == 2:
                            value = ev.decode()
                    entries.append((key, value))
            descriptors.append(tuple(entries))
        elif num == 3 and wt == 0:
            hits = v
    return domain, descriptors, hits or 1


def encode_response(code):
    return varint(1 << 3 | 0) + varint(code)  # overall_code = 1, varint


# --- the service ----------------------------------------------------------------------------

class FixedWindow:
    def __init__(self, limit, window):
        self.limit, self.window = limit, window
        self.lock = threading.Lock()
        self.windows = {}  # (domain, descriptor) -> [window start, hits]

    def hit(self, domain, descriptors, hits):
        now = time.monotonic()
        over = False
        with self.lock:
            for d in descriptors:
                w = self.windows.get((domain, d))
                if w is None or now - w[0] >= self.window:
                    w = self.windows[(domain, d)] = [now, 0]
                w[1] += hits
                over |= w[1] > self.limit
        return OVER_LIMIT if over else OK


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("limit", type=int, help="requests per descriptor per window")
    ap.add_argument("--port", type=int, default=0, help="127.0.0.1 port; 0: a free one")
    ap.add_argument("--window", type=float, default=1.0, help="window length, seconds")
    args = ap.parse_args()
    limiter = FixedWindow(args.limit, args.window)
    out_lock = threading.Lock()
    start = time.monotonic()

    def emit(obj):
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def should_rate_limit(request, context):
        try:
            domain, descriptors, hits = decode_request(request)
        except (ValueError, UnicodeDecodeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad RateLimitRequest: {e}")
        code = limiter.hit(domain, descriptors, hits)
        emit({
            "domain": domain,
            "descriptors": [[list(e) for e in d] for d in descriptors],
            "hits": hits,
            "code": {OK: "OK", OVER_LIMIT: "OVER_LIMIT"}[code],
            "t": round(time.monotonic() - start, 6),
        })
        return encode_response(code)

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        # No (de)serializers: the handler gets and returns the raw message bytes.
        "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(should_rate_limit),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    server.start()
    emit({"listening": port})
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    stop.wait()
    server.stop(0).wait()


if __name__ == "__main__":
    main()
