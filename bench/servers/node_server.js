#!/usr/bin/env node
// Node's `ws` server: the reference the issue compares against (the fastest here).
//
// Usage: node node_server.js PORT MODE; MODE is "echo" or "broadcast" (every
// message to every other client, never back to the sender). permessage-deflate
// with ws's defaults, accepted when a client offers it (only the compression
// scenarios do): messages of 1024 bytes and more compressed, server context
// takeover, so each client has its own deflate stream and a broadcast is
// compressed once per client, on zlib's thread pool (10 at a time).

"use strict";

const { WebSocketServer, WebSocket } = require("ws");

const [port, mode] = [Number(process.argv[2]), process.argv[3]];
if (!port || !["echo", "broadcast"].includes(mode)) {
  console.error("usage: node node_server.js PORT echo|broadcast");
  process.exit(2);
}
const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  backlog: 1024,
  perMessageDeflate: true,
  maxPayload: 1 << 20,
});
server.on("connection", (ws) => {
  ws.on("error", () => {});
  ws.on("message", (data, isBinary) => {
    if (mode === "echo") {
      ws.send(data, { binary: isBinary });
      return;
    }
    for (const client of server.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    }
  });
});
// Clients are cut, not closed: the benchmark is over when this is called.
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
