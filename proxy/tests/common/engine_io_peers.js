// Socket.IO peers for proxy/tests/engine_io.rs (npm `socket.io`, `socket.io-client`; see
// scripts/install/node-peers.sh).
//   server NAME   a Socket.IO server on 127.0.0.1, any port; prints "port N". `hello` is
//                 answered with the server's name and the transport the session is on.
//   client URL    connects with polling then the WebSocket upgrade (Socket.IO's default),
//                 waits for the upgrade, asks `hello`; prints one JSON line and exits 0, or
//                 prints the error and exits 1.
// Run as `node -e SOURCE -- MODE ARG`: with -e, the arguments start at argv[1].
const [mode, arg] = process.argv.slice(1);
if (mode === "server") {
  const name = arg;
  const http = require("http").createServer();
  const io = require("socket.io")(http);
  io.on("connection", (socket) => {
    socket.on("hello", (ack) => ack({ server: name, transport: socket.conn.transport.name }));
  });
  http.listen(0, "127.0.0.1", () => console.log("port " + http.address().port));
} else {
  const { io } = require("socket.io-client");
  const socket = io(arg, {
    transports: ["polling", "websocket"],
    reconnection: false,
    timeout: 5000,
  });
  const fail = (why) => {
    console.log(JSON.stringify({ error: String(why) }));
    process.exit(1);
  };
  setTimeout(() => fail("timed out"), 8000);
  socket.on("connect_error", (e) => fail("connect_error: " + e.message));
  socket.on("disconnect", (r) => fail("disconnect: " + r));
  socket.on("connect", () => {
    const engine = socket.io.engine;
    const ask = () =>
      socket.emit("hello", (r) => {
        console.log(JSON.stringify({ ...r, client_transport: engine.transport.name }));
        process.exit(0);
      });
    if (engine.transport.name === "websocket") ask();
    else engine.once("upgrade", ask);
  });
}
