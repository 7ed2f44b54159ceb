// Bun's built-in WebSocket server (Bun.serve, on uWebSockets).
//
// Usage: bun bun_server.js PORT MODE; MODE is "echo" or "broadcast": every
// client subscribes to one topic and a message is ws.publish()-ed to it,
// which reaches every subscriber but the sender. Messages up to 16 MiB
// (Bun's default), backpressure up to 16 MiB per connection (its default);
// permessage-deflate is off, Bun's default: the compression scenarios show n/a.

const [port, mode] = [Number(process.argv[2]), process.argv[3]];
if (!port || !["echo", "broadcast"].includes(mode)) {
  console.error("usage: bun bun_server.js PORT echo|broadcast");
  process.exit(2);
}
const TOPIC = "all";
Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(request, server) {
    if (server.upgrade(request)) return undefined;
    return new Response("WebSocket only", { status: 400 });
  },
  websocket: {
    maxPayloadLength: 16 * 1024 * 1024,
    idleTimeout: 0,
    open(ws) {
      if (mode === "broadcast") ws.subscribe(TOPIC);
    },
    message(ws, message) {
      if (mode === "echo") ws.send(message);
      else ws.publish(TOPIC, message);
    },
  },
});
// Clients are cut, not closed: the benchmark is over when this is called.
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
