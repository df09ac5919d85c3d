import asyncio, json, sys
import websockets

async def server():
    async def handle(ws):
        async for m in ws:
            print("got", len(m), flush=True)
            await ws.send(m)
    async with websockets.serve(handle, "127.0.0.1", 0, max_size=None) as s:
        print("port", s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

async def client(url):
    async with websockets.connect(url, open_timeout=5, max_size=None) as ws:
        print("extensions", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
        cand = "candidate:1 1 udp 2122260223 192.0.2.10 54400 typ host generation 0"
        for i, t in enumerate(["join", "offer", "candidate", "candidate", "answer"]):
            m = {"type": t, "room": "zroom", "from": "alice", "seq": i, "pad": "p" * 400}
            if t == "candidate":
                m["candidate"] = cand
            await ws.send(json.dumps(m))
            echo = json.loads(await asyncio.wait_for(ws.recv(), 5))
            print("echo", echo["type"], flush=True)
        await ws.send(json.dumps({"type": "bomb", "room": "zroom", "pad": "a" * (2 << 20)}))
        try:
            await asyncio.wait_for(ws.recv(), 5)
            print("bomb echoed", flush=True)
        except websockets.ConnectionClosed as e:
            print("closed", e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "", flush=True)

if sys.argv[1] == "server":
    asyncio.run(server())
else:
    asyncio.run(client(sys.argv[2]))
