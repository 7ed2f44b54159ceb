#!/usr/bin/env node
// The load generator of `make bench`: one Node process, the `ws` client.
//
// Why Node and `ws`: one client for every server under test, fast enough that
// the server (pinned to the other core) is what limits the numbers. bench/run.py
// checks that claim: every result carries this process's own CPU use over the
// measurement window (process.cpuUsage()).
//
// Usage: node loadgen.js '<json config>'. It talks to bench/run.py in JSON
// lines on stdout: {"event": "start"} and {"event": "end"} frame the
// measurement window (run.py samples the server's CPU there), the last line is
// {"event": "result", ...}. The idle scenario also waits for "go" and "done"
// lines on stdin, so that run.py can read the server's RSS in between.
//
// Every scenario is bounded: a warm-up, `duration` seconds of measurement,
// then every connection is closed and the process exits by itself.

"use strict";

const WebSocket = require("ws");
const crypto = require("crypto");
const EventEmitter = require("events");
const net = require("net");
const readline = require("readline");
const zlib = require("zlib");
const { performance } = require("perf_hooks");

const config = JSON.parse(process.argv[2] || "{}");
const now = () => performance.now(); // ms, monotonic; one clock for sender and receivers

// Where stamp() writes the send time and sequence number in a JSON page.
const JSON_TIME = 15; // digits of microseconds: 11.5 days of performance.now()
const JSON_SEQ = 10;
const JSON_HEAD = '{"sent_us":"';
const JSON_MID = '","seq":"';
const TIME_AT = JSON_HEAD.length;
const SEQ_AT = TIME_AT + JSON_TIME + JSON_MID.length;

function emit(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

function fail(message) {
  emit({ event: "error", message });
  process.exit(1);
}

// Latency samples in ms: every one up to `cap`, then a uniform reservoir, so
// memory stays bounded however fast the server is.
class Samples {
  constructor(cap = 2000000) {
    this.values = new Float64Array(cap);
    this.seen = 0;
  }
  add(value) {
    const cap = this.values.length;
    if (this.seen < cap) {
      this.values[this.seen] = value;
    } else {
      const slot = Math.floor(Math.random() * (this.seen + 1));
      if (slot < cap) this.values[slot] = value;
    }
    this.seen += 1;
  }
  summary() {
    const count = Math.min(this.seen, this.values.length);
    if (!count) return { p50_ms: null, p99_ms: null, max_ms: null };
    const sorted = this.values.slice(0, count).sort();
    const at = (q) => sorted[Math.min(count - 1, Math.floor(q * count))];
    return { p50_ms: at(0.5), p99_ms: at(0.99), max_ms: sorted[count - 1] };
  }
}

// CPU of this process over the measurement window, in % of one core.
class CpuMeter {
  start() {
    this.cpu = process.cpuUsage();
    this.wall = now();
  }
  stop() {
    const used = process.cpuUsage(this.cpu);
    const wall = now() - this.wall;
    return ((used.user + used.system) / 1000 / wall) * 100;
  }
}

// `compression: true` offers permessage-deflate as a ws client does out of the
// box ("permessage-deflate; client_max_window_bits", and it compresses its own
// messages of 1024 bytes and more, the same threshold as fws's server side).
// Not `threshold: 0`: no client in the field compresses every tiny message,
// and the 2 KiB messages of the compression scenarios are above either
// threshold. Off otherwise, so that the other scenarios measure the servers,
// not zlib.
function connect(url) {
  return new WebSocket(url, { perMessageDeflate: Boolean(config.compression) });
}

// The client of the JSON scenarios (`client: "lean"`), with the same events
// and fields as a ws WebSocket as far as this script uses them.
//
// Why: ws deflates and inflates on libuv's thread pool, at most 10 messages at
// a time per process; pinned to one core, that capped the client at ~10,000
// inflated deliveries/s while fws used a sixth of its core, and the echo
// client at a few thousand messages/s. So that the server is what limits the
// numbers, this one does the least a client can:
// - it inflates synchronously with one zlib handle per connection (reset
//   before each message when the server keeps no context, kept when it does,
//   so a server with and without context takeover costs it the same);
// - it sends pages whose compressed body was deflated once per page (the
//   stamped head, which changes per message, goes first in a stored deflate
//   block: a valid stream any inflater reads; a 2 KiB page comes to 807
//   bytes instead of 785 deflated whole), masked with one key whose XOR over
//   each page body was done once too.
// It is used with and without compression, so the rows differ only in deflate.
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]); // RFC 7692 7.2.2: re-added before inflating

// Inflate `input` synchronously on a zlib stream that stays open. Node has no
// public API for that (inflateRawSync makes and closes a handle per call, and
// so loses the context a server with context takeover relies on); this is the
// loop of Node's own processChunkSync (lib/zlib.js, v20) without its close.
const INFLATED = Buffer.allocUnsafe(64 * 1024);

function inflateKept(inflater, input) {
  const handle = inflater._handle;
  const state = inflater._writeState;
  const parts = [];
  let inOffset = 0;
  let inLeft = input.length;
  for (;;) {
    handle.writeSync(
      zlib.constants.Z_SYNC_FLUSH, input, inOffset, inLeft, INFLATED, 0, INFLATED.length,
    );
    if (inflater.failed) throw inflater.failed;
    const [outLeft, inLeftAfter] = [state[0], state[1]];
    parts.push(Buffer.from(INFLATED.subarray(0, INFLATED.length - outLeft)));
    inOffset += inLeft - inLeftAfter;
    inLeft = inLeftAfter;
    if (outLeft !== 0) break; // the output buffer had room left: all input consumed
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

const MASK = crypto.randomBytes(4);
const STAMPED = SEQ_AT + JSON_SEQ; // the head of a JSON page that stamp() rewrites
const INFLATED_BEFORE = new Map(); // compressed payload (latin1) -> inflated, no context only
const PREPARED = { plain: new WeakMap(), deflate: new WeakMap() }; // page -> masked tail

function masked(data, offset) {
  const out = Buffer.allocUnsafe(data.length);
  for (let i = 0; i < data.length; i += 1) out[i] = data[i] ^ MASK[(offset + i) & 3];
  return out;
}

class LeanClient extends EventEmitter {
  constructor(url) {
    super();
    const { hostname, port, pathname } = new URL(url);
    this.readyState = WebSocket.CONNECTING;
    this.extensions = "";
    this._buffer = Buffer.alloc(0);
    this._inflater = null;
    this._resetEach = false;
    this._closeCode = 1006;
    const socket = net.connect(Number(port), hostname);
    this._socket = socket;
    socket.setNoDelay(true);
    socket.on("connect", () => {
      const offer = config.compression
        ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        : "";
      socket.write(
        `GET ${pathname || "/"} HTTP/1.1\r\nHost: ${hostname}:${port}\r\n` +
          "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
          `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\n${offer}\r\n`,
      );
    });
    socket.on("data", (chunk) => this._received(chunk));
    socket.on("error", (error) => this.emit("error", error));
    socket.on("close", () => {
      this.readyState = WebSocket.CLOSED;
      this.emit("close", this._closeCode);
    });
  }

  _received(chunk) {
    let buffer = this._buffer.length ? Buffer.concat([this._buffer, chunk]) : chunk;
    let offset = 0;
    if (this.readyState === WebSocket.CONNECTING) {
      const end = buffer.indexOf("\r\n\r\n");
      if (end < 0) {
        this._buffer = buffer;
        return;
      }
      const head = buffer.toString("latin1", 0, end);
      if (!/^HTTP\/1\.1 101/.test(head)) {
        this.emit("error", new Error(head.split("\r\n")[0]));
        this._socket.destroy();
        return;
      }
      const offered = /^sec-websocket-extensions:[ \t]*(.*)$/im.exec(head);
      if (offered && offered[1].includes("permessage-deflate")) {
        this.extensions = offered[1];
        this._resetEach = offered[1].includes("server_no_context_takeover");
        this._inflater = zlib.createInflateRaw({ windowBits: 15 });
        this._inflater.on("error", (error) => {
          this._inflater.failed = error;
        });
      }
      offset = end + 4;
      this.readyState = WebSocket.OPEN;
      this.emit("open");
    }
    while (buffer.length - offset >= 2) {
      const first = buffer[offset];
      let length = buffer[offset + 1] & 0x7f;
      let at = offset + 2;
      if (length === 126) {
        if (buffer.length - offset < 4) break;
        length = buffer.readUInt16BE(offset + 2);
        at = offset + 4;
      } else if (length === 127) {
        if (buffer.length - offset < 10) break;
        length = Number(buffer.readBigUInt64BE(offset + 2));
        at = offset + 10;
      }
      if (buffer.length - at < length) break;
      const payload = buffer.subarray(at, at + length);
      offset = at + length;
      this._frame(first, payload);
    }
    this._buffer = offset < buffer.length ? buffer.subarray(offset) : Buffer.alloc(0);
  }

  _frame(first, payload) {
    const opcode = first & 0x0f;
    if (opcode === 0x1 || opcode === 0x2) {
      if (!(first & 0x80)) {
        this.emit("error", new Error("fragmented message: the lean receiver reads whole ones only"));
        this._socket.destroy();
        return;
      }
      let data = payload;
      if (first & 0x40) data = this._inflate(payload);
      this.emit("message", data);
    } else if (opcode === 0x9) {
      this._control(0xa, payload);
    } else if (opcode === 0x8) {
      this._closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      if (this.readyState === WebSocket.OPEN) this._control(0x8, payload.subarray(0, 2));
      this.readyState = WebSocket.CLOSING;
      this._socket.end();
    }
  }

  // A masked control frame (payloads of at most 125 bytes).
  _control(opcode, payload) {
    const header = Buffer.from([0x80 | opcode, 0x80 | payload.length, ...MASK]);
    this._socket.write(Buffer.concat([header, masked(payload, 0)]));
  }

  _inflate(payload) {
    if (!this._resetEach) return inflateKept(this._inflater, Buffer.concat([payload, TAIL]));
    // Without context takeover the same bytes always inflate to the same
    // message: in a broadcast, every receiver of a server that compresses
    // once gets the bytes another receiver has inflated already. One core
    // stands in for 100 clients here; inflating each copy again capped fws's
    // compressed broadcast at the client's ~64,000 inflates/s, with fws at 44 %
    // of its core. Servers with context takeover send each client its own
    // stream, which each receiver inflates in full.
    const key = config.scenario === "broadcast" ? payload.toString("latin1") : null;
    const known = key === null ? undefined : INFLATED_BEFORE.get(key);
    if (known !== undefined) return known;
    this._inflater.reset();
    const data = inflateKept(this._inflater, Buffer.concat([payload, TAIL]));
    if (key !== null) {
      if (INFLATED_BEFORE.size >= 256) INFLATED_BEFORE.clear();
      INFLATED_BEFORE.set(key, data);
    }
    return data;
  }

  // Send a stamped JSON page as one masked text frame, compressed if negotiated.
  send(page) {
    const deflate = this._inflater !== null;
    const head = page.subarray(0, STAMPED);
    // Stored block: BFINAL 0, BTYPE 00, padding to the byte, LEN, NLEN (RFC 1951 3.2.4).
    const prefix = deflate
      ? Buffer.concat([
          Buffer.from([0x00, STAMPED & 0xff, STAMPED >> 8, ~STAMPED & 0xff, (~STAMPED >> 8) & 0xff]),
          head,
        ])
      : head;
    const cache = deflate ? PREPARED.deflate : PREPARED.plain;
    let tail = cache.get(page);
    if (tail === undefined) {
      let body = page.subarray(STAMPED);
      if (deflate) {
        // An 11-bit window: no distance beyond 2 KiB, within what any server asked for here.
        body = zlib.deflateRawSync(body, { windowBits: 11, finishFlush: zlib.constants.Z_SYNC_FLUSH });
        body = body.subarray(0, body.length - 4); // RFC 7692 7.2.1: no 00 00 ff ff tail
      }
      tail = masked(body, prefix.length);
      cache.set(page, tail);
    }
    const length = prefix.length + tail.length;
    const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
    const frame = Buffer.allocUnsafe(2 + extended + 4 + length);
    frame[0] = 0x80 | (deflate ? 0x40 : 0) | 0x1;
    if (extended === 0) frame[1] = 0x80 | length;
    else if (extended === 2) {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(length, 2);
    } else {
      frame[1] = 0x80 | 127;
      frame.writeBigUInt64BE(BigInt(length), 2);
    }
    let at = 2 + extended;
    MASK.copy(frame, at);
    at += 4;
    for (let i = 0; i < prefix.length; i += 1) frame[at + i] = prefix[i] ^ MASK[i & 3];
    tail.copy(frame, at + prefix.length);
    this._socket.write(frame);
  }

  close(code) {
    if (this.readyState !== WebSocket.OPEN) return;
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code, 0);
    this._control(0x8, payload);
    this.readyState = WebSocket.CLOSING;
  }

  terminate() {
    this._socket.destroy();
  }
}

// How many of `sockets` negotiated permessage-deflate (ws.extensions is the
// server's Sec-WebSocket-Extensions answer).
function deflated(sockets) {
  return sockets.filter((ws) => ws.extensions && ws.extensions.includes("permessage-deflate"))
    .length;
}

// Bytes read from the TCP sockets so far: frame headers and (compressed)
// payloads as they came off the wire, without TCP/IP headers.
function bytesRead(sockets) {
  let total = 0;
  for (const ws of sockets) if (ws._socket) total += ws._socket.bytesRead;
  return total;
}

// Open `count` connections, at most `concurrency` handshakes at a time (so the
// servers' listen backlogs never overflow), resolve with them and the time taken.
// How this scenario's connections are made: ws, or the lean client above.
function opener() {
  if (config.client !== "lean") return connect;
  if (config.payload !== "json") fail("the lean client sends JSON pages only");
  return (url) => new LeanClient(url);
}

function openMany(url, count, concurrency, onSocket, open = opener()) {
  return new Promise((resolve) => {
    const sockets = [];
    let started = 0;
    let settled = 0;
    let failed = 0;
    const firstError = [];
    const begin = now();
    const next = () => {
      if (settled === count) {
        resolve({ sockets, seconds: (now() - begin) / 1000, failed, firstError: firstError[0] });
        return;
      }
      while (started < count && started - settled < concurrency) {
        const index = started;
        started += 1;
        const ws = open(url);
        if (onSocket) onSocket(ws, index);
        let done = false;
        const finish = (ok, error) => {
          if (done) return;
          done = true;
          settled += 1;
          if (ok) sockets.push(ws);
          else {
            failed += 1;
            if (error) firstError.push(String(error.message || error));
          }
          next();
        };
        ws.once("open", () => finish(true));
        ws.once("error", (error) => finish(false, error));
        ws.once("close", () => finish(false, "closed during the handshake"));
      }
    };
    next();
  });
}

// Close every socket cleanly, then cut those that do not answer in time.
function closeAll(sockets, timeoutMs = 3000) {
  return new Promise((resolve) => {
    let open = 0;
    const check = () => {
      if (open === 0) resolve();
    };
    for (const ws of sockets) {
      if (ws.readyState === WebSocket.CLOSED) continue;
      open += 1;
      ws.once("close", () => {
        open -= 1;
        check();
      });
      ws.on("error", () => {});
      try {
        if (ws._socket && ws._socket.isPaused()) ws._socket.resume();
        ws.close(1000);
      } catch (error) {
        ws.terminate();
      }
    }
    check();
    setTimeout(() => {
      for (const ws of sockets) ws.terminate();
      resolve();
    }, timeoutMs).unref();
  });
}

// Warm-up, then the measurement window; `onStart`/`onStop` flip the counters.
function measureWindow(onStart, onStop) {
  const meter = new CpuMeter();
  return new Promise((resolve) => {
    setTimeout(() => {
      emit({ event: "start" });
      meter.start();
      const begin = now();
      onStart();
      setTimeout(() => {
        const seconds = (now() - begin) / 1000;
        onStop();
        const cpu = meter.stop();
        emit({ event: "end" });
        resolve({ seconds, cpu });
      }, config.duration * 1000);
    }, config.warmup * 1000);
  });
}

// Two kinds of message, each with a send time (ms) and a sequence number
// that `stamp` writes in place and `readStamp` reads back.
//
// "binary" (the default): the same bytes for every server, no UTF-8 checks on
// either side; the time is a double at offset 0, the sequence at offset 8.
//
// "json": a text message that compresses like real traffic, a page of chat
// history (ids, user names, ISO times, sentences from a 150-word vocabulary,
// picked by a seeded generator so every run sends the same bytes). The time
// and sequence are fixed-width decimal fields at the start, so stamping
// never changes the length.

function chatPage(size, seed) {
  const words = (
    "the a to and of in is it you that he was for on are with as I his they be at one have this " +
    "from or had by hot word but what some we can out other were all there when up use your how " +
    "said an each she which do their time if will way about many then them write would like so " +
    "these her long make thing see him two has look more day could go come did number sound no " +
    "most people my over know water than call first who may down side been now find any new " +
    "work part take get place made live where after back little only round man year came show " +
    "every good me give our under name very through just form sentence great think say help low " +
    "line differ turn cause much mean before move right boy old too same tell does set three"
  ).split(" ");
  const users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"];
  let state = seed;
  const random = (n) => {
    state = (state * 1103515245 + 12345) & 0x7fffffff;
    return (state >>> 16) % n;
  };
  const word = () => words[random(words.length)];
  const message = (i) => {
    const length = 4 + random(14);
    const sentence = Array.from({ length }, word).join(" ");
    return {
      id: `m${(48213 + seed + i * 7).toString(36)}`,
      user: users[random(users.length)],
      at: new Date(Date.UTC(2026, 10, 29, 16, 37, random(60), random(1000))).toISOString(),
      text: sentence.charAt(0).toUpperCase() + sentence.slice(1) + ".",
    };
  };
  const head = JSON_HEAD + "0".repeat(JSON_TIME) + JSON_MID + "0".repeat(JSON_SEQ) + '",';
  const render = (messages) =>
    head + JSON.stringify({ type: "history", room: "general", messages }).slice(1);
  // Whole messages while they fit, then the last one's text grows word by
  // word, then a few spaces make the size exact.
  const messages = [message(0)];
  messages[0].text = "";
  for (let i = 1; ; i += 1) {
    const next = message(i);
    if (render([...messages, next]).length > size) break;
    messages.push(next);
    if (messages[0].text === "") messages.shift();
  }
  const last = messages[messages.length - 1];
  for (;;) {
    const before = last.text;
    last.text = `${before.replace(/\.$/, "")} ${word()}.`.trimStart();
    if (render(messages).length > size) {
      last.text = before;
      break;
    }
  }
  const text = render(messages);
  return Buffer.from(head + " ".repeat(Math.max(0, size - text.length)) + text.slice(head.length), "latin1");
}

// JSON messages come from a ring of this many different pages: a server that
// keeps compression context between messages (websockets, Node ws) must not
// see the same page again within its window (32 KiB at most), or it would
// send a few bytes that say "as before", which real traffic never allows.
const JSON_PAGES = 256;

// The messages to send, in turn: the same one for binary, a ring for JSON.
function payloads(size) {
  if (config.payload !== "json") return [payload(size)];
  return Array.from({ length: JSON_PAGES }, (_, page) => chatPage(size, 12345 + page * 7919));
}

function payload(size) {
  const buffer = Buffer.alloc(Math.max(size, 16), 0x61);
  buffer.writeDoubleLE(now(), 0);
  return buffer;
}

const isJson = () => config.payload === "json";

function stamp(buffer, seq) {
  if (isJson()) {
    buffer.write(String(Math.round(now() * 1000)).padStart(JSON_TIME, "0"), TIME_AT, "latin1");
    buffer.write(String(seq).padStart(JSON_SEQ, "0"), SEQ_AT, "latin1");
  } else {
    buffer.writeDoubleLE(now(), 0);
    buffer.writeUInt32LE(seq, 8);
  }
}

function readStamp(data) {
  if (isJson()) {
    return {
      sent: Number(data.toString("latin1", TIME_AT, TIME_AT + JSON_TIME)) / 1000,
      seq: Number(data.toString("latin1", SEQ_AT, SEQ_AT + JSON_SEQ)),
    };
  }
  return { sent: data.readDoubleLE(0), seq: data.readUInt32LE(8) };
}

function sendMessage(ws, buffer) {
  if (ws instanceof LeanClient) {
    ws.send(buffer);
    return;
  }
  // Without compression ws copies while masking, so the template is reusable;
  // with it, zlib reads the buffer later, on another thread: give it a copy.
  ws.send(config.compression ? Buffer.from(buffer) : buffer, { binary: !isJson() });
}

// Echo: `connections` x `inflight` messages of `size` bytes; each echo that
// comes back is timed (the send time rides in its first 8 bytes) and replaced.
async function echo() {
  const { url, connections, inflight, size } = config;
  const ring = payloads(size);
  let turn = 0;
  const latency = new Samples();
  const perConnection = new Array(connections).fill(0);
  let measuring = false;
  let sending = true;
  let messages = 0;
  let bytes = 0;
  let errors = 0;
  const send = (ws) => {
    const message = ring[turn++ % ring.length];
    stamp(message, 0);
    sendMessage(ws, message);
  };
  const opened = await openMany(url, connections, 100, (ws, index) => {
    ws.on("message", (data) => {
      if (measuring) {
        latency.add(now() - readStamp(data).sent);
        perConnection[index] += 1;
        messages += 1;
        bytes += data.length;
      }
      if (sending) send(ws);
    });
    ws.on("error", () => {
      errors += 1;
    });
  });
  if (opened.failed) fail(`${opened.failed} of ${connections} connections failed: ${opened.firstError}`);
  for (const ws of opened.sockets) for (let i = 0; i < inflight; i += 1) send(ws);
  let wire = 0;
  const window = await measureWindow(
    () => {
      measuring = true;
      wire = -bytesRead(opened.sockets);
    },
    () => {
      measuring = false;
      sending = false;
      wire += bytesRead(opened.sockets);
    },
  );
  const closedEarly = opened.sockets.filter((ws) => ws.readyState !== WebSocket.OPEN).length;
  await closeAll(opened.sockets);
  const counts = perConnection.slice().sort((a, b) => a - b);
  const mean = messages / connections;
  emit({
    event: "result",
    messages,
    seconds: window.seconds,
    messages_per_s: messages / window.seconds,
    mb_per_s: bytes / window.seconds / 1e6,
    ...latency.summary(),
    // Fairness: the least served connection's share of the mean (1.0 = perfectly fair).
    fairness: mean ? counts[0] / mean : 0,
    wire_bytes_per_message: messages ? wire / messages : null,
    deflate_negotiated: deflated(opened.sockets),
    client_cpu: window.cpu,
    errors,
    closed_early: closedEarly,
  });
}

// Broadcast: one sender, `receivers` fast receivers (and `slow` receivers that
// never read). The sender keeps at most `window` messages not yet delivered to
// every fast receiver, so the server, not the client, sets the pace.
async function broadcast() {
  const { url, receivers, size, window: maxOutstanding, slow = 0 } = config;
  const latency = new Samples();
  const remaining = new Map(); // seq -> fast receivers still to get it
  let measuring = false;
  let sending = false;
  let seq = 0;
  let deliveries = 0;
  let lastProgress = now();
  let errors = 0;
  const ring = payloads(size);
  const heard = new Set(); // fast receivers that got any message yet

  const received = (data) => {
    const { sent, seq: id } = readStamp(data);
    if (measuring) {
      latency.add(now() - sent);
      deliveries += 1;
    }
    const left = remaining.get(id);
    if (left === undefined) return;
    if (left > 1) remaining.set(id, left - 1);
    else {
      remaining.delete(id);
      lastProgress = now();
      pump();
    }
  };
  const fast = await openMany(
    url,
    receivers,
    100,
    (ws) => {
      ws.on("message", received);
      ws.once("message", () => heard.add(ws));
      ws.on("error", () => {
        errors += 1;
      });
    },
    opener(),
  );
  if (fast.failed) fail(`${fast.failed} of ${receivers} receivers failed: ${fast.firstError}`);
  const slowSockets = [];
  const slowClosed = [];
  for (let i = 0; i < slow; i += 1) {
    const opened = await openMany(url, 1, 1);
    if (opened.failed) fail(`the slow receiver failed to connect: ${opened.firstError}`);
    const ws = opened.sockets[0];
    ws.on("error", () => {});
    ws.on("close", (code) => slowClosed.push(code));
    ws._socket.pause(); // never reads again: its TCP window fills, then the server's queue
    slowSockets.push(ws);
  }
  const senders = await openMany(url, 1, 1);
  if (senders.failed) fail(`the sender failed to connect: ${senders.firstError}`);
  const sender = senders.sockets[0];
  sender.on("message", () => {}); // servers under test never echo to the sender; ignore if one did

  function pump() {
    while (sending && remaining.size < maxOutstanding) {
      seq = (seq + 1) >>> 0;
      const message = ring[seq % ring.length];
      stamp(message, seq);
      remaining.set(seq, receivers);
      sendMessage(sender, message);
    }
  }
  // A server that loses a message would stall the window: give up rather than hang.
  let stalled = false;
  const watchdog = setInterval(() => {
    if (sending && now() - lastProgress > 5000) {
      stalled = true;
      remaining.clear();
      lastProgress = now();
      pump();
    }
  }, 500);
  // A server that fans out through Redis (fws --workers 2) subscribes a worker
  // to broadcasts shortly after its first client arrives, and pub/sub loses
  // what was published before: the window would stall on a lost message. So
  // probe (messages outside the window, ignored by receivers) until every
  // receiver has heard the sender, for at most 10 s, then start.
  const probeUntil = now() + 10000;
  while (heard.size < receivers && now() < probeUntil) {
    seq = (seq + 1) >>> 0;
    const probe = ring[seq % ring.length];
    stamp(probe, seq);
    sendMessage(sender, probe);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (heard.size < receivers) fail(`${receivers - heard.size} receivers never heard the sender`);
  sending = true;
  pump();
  let wire = 0;
  const measured = await measureWindow(
    () => {
      measuring = true;
      wire = -bytesRead(fast.sockets);
    },
    () => {
      measuring = false;
      sending = false;
      wire += bytesRead(fast.sockets);
    },
  );
  clearInterval(watchdog);
  const slowOpen = slowSockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  const slowClosedByServer = slowClosed.slice(); // before our own close at the end
  await closeAll([sender, ...fast.sockets, ...slowSockets]);
  emit({
    event: "result",
    deliveries,
    seconds: measured.seconds,
    deliveries_per_s: deliveries / measured.seconds,
    ...latency.summary(),
    wire_bytes_per_delivery: deliveries ? wire / deliveries : null,
    deflate_negotiated: deflated(fast.sockets),
    client_cpu: measured.cpu,
    errors,
    stalled,
    slow_open_at_end: slowOpen,
    slow_close_codes: slowClosedByServer,
  });
}

// Idle: open `connections` connections that then say nothing. run.py reads
// the server's RSS before "go" and after "opened", then answers "done".
async function idle() {
  const { url, connections, concurrency = 100, warm = 20 } = config;
  const lines = readline.createInterface({ input: process.stdin });
  const waitFor = (word) =>
    new Promise((resolve) => {
      const onLine = (line) => {
        if (line.trim() === word) {
          lines.off("line", onLine);
          resolve();
        }
      };
      lines.on("line", onLine);
    });
  // A few connections first, each with one round trip, so that whatever a
  // server allocates once (imports, pools) is in the baseline, not per connection.
  const warmed = await openMany(url, warm, warm);
  await Promise.all(
    warmed.sockets.map(
      (ws) =>
        new Promise((resolve) => {
          ws.once("message", resolve);
          ws.send(payload(32), { binary: true });
        }),
    ),
  );
  await closeAll(warmed.sockets);
  emit({ event: "baseline" });
  await waitFor("go");
  const opened = await openMany(url, connections, concurrency, (ws) => {
    ws.on("error", () => {});
  });
  emit({ event: "opened", seconds: opened.seconds, open: opened.sockets.length, failed: opened.failed });
  const negotiated = deflated(opened.sockets);
  await waitFor("done");
  const stillOpen = opened.sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  await closeAll(opened.sockets, 5000);
  lines.close();
  emit({
    event: "result",
    open_seconds: opened.seconds,
    opened: opened.sockets.length,
    failed: opened.failed,
    first_error: opened.firstError || null,
    still_open: stillOpen,
    deflate_negotiated: negotiated,
  });
}

const scenarios = { echo, broadcast, idle };
const run = scenarios[config.scenario];
if (!run) fail(`unknown scenario ${JSON.stringify(config.scenario)}`);
// Hard stop: whatever happens, this process never outlives its bound.
const bound = ((config.warmup || 0) + (config.duration || 0) + (config.timeout || 60)) * 1000;
setTimeout(() => fail(`timed out after ${bound / 1000} s`), bound).unref();
run().then(
  () => process.exit(0),
  (error) => fail(String((error && error.stack) || error)),
);
