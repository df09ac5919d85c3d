"""Load for benches/compression.sh: Python `websockets` peers that negotiate permessage-deflate.

  deflate_load.py server            echo every message as it came; prints "port N"
  deflate_load.py client URL SESSIONS SECONDS SIZE MODE
                                    MODE `deflate` offers permessage-deflate (websockets' default),
                                    `plain` offers nothing; each session sends a SIZE-byte offer-
                                    like JSON message (SDP lines), waits for its echo, and repeats
                                    for SECONDS; prints one JSON line: round trips, the extension
                                    agreed, errors.
"""
import asyncio, json, random, sys, time

import websockets


def sdp(size, rnd):
    # Lines like a real offer's: rtpmaps, fmtps, candidates with varying numbers, so it compresses
    # about as well as real SDP does (~3x), not like a run of one byte.
    lines, n = [], 0
    while n < size:
        k = rnd.randrange(4)
        if k == 0:
            l = f"a=rtpmap:{rnd.randrange(96, 127)} opus/48000/2"
        elif k == 1:
            l = f"a=fmtp:{rnd.randrange(96, 127)} minptime=10;useinbandfec=1"
        elif k == 2:
            l = (f"a=candidate:{rnd.randrange(1 << 31)} 1 udp {rnd.randrange(1 << 31)} "
                 f"192.0.2.{rnd.randrange(255)} {rnd.randrange(1024, 65535)} typ host generation 0")
        else:
            l = f"a=ssrc:{rnd.randrange(1 << 32)} cname:{rnd.randrange(1 << 48):x}"
        lines.append(l)
        n += len(l) + 2
    return "\r\n".join(lines)


def message(i, size, rnd):
    m = {"type": "offer", "room": f"room-{i % 50}", "from": f"peer-{i}", "sdp": ""}
    base = len(json.dumps(m))
    m["sdp"] = sdp(max(0, size - base - 32), rnd)[: max(0, size - base)]
    return json.dumps(m)


async def server():
    async def handle(ws):
        try:
            async for m in ws:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(handle, "127.0.0.1", 0, max_size=None) as s:
        print("port", s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def session(url, i, end, size, mode, out):
    rnd = random.Random(i)
    msgs = [message(i, size, rnd) for _ in range(16)]
    compression = "deflate" if mode == "deflate" else None
    async with websockets.connect(url, compression=compression, max_size=None, open_timeout=10) as ws:
        out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        n = 0
        while time.monotonic() < end:
            await ws.send(msgs[n % len(msgs)])
            await asyncio.wait_for(ws.recv(), 10)
            n += 1
        out["round_trips"] = out.get("round_trips", 0) + n


async def client(url, sessions, seconds, size, mode):
    out = {"errors": 0}
    end = time.monotonic() + seconds
    results = await asyncio.gather(
        *(session(url, i, end, size, mode, out) for i in range(sessions)), return_exceptions=True
    )
    out["errors"] = sum(1 for r in results if isinstance(r, Exception))
    out["first_error"] = next((repr(r) for r in results if isinstance(r, Exception)), None)
    print(json.dumps(out), flush=True)


if sys.argv[1] == "server":
    asyncio.run(server())
else:
    url, sessions, seconds, size, mode = sys.argv[2:7]
    asyncio.run(client(url, int(sessions), float(seconds), int(size), mode))
