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
const readline = require("readline");
const { performance } = require("perf_hooks");

const config = JSON.parse(process.argv[2] || "{}");
const now = () => performance.now(); // ms, monotonic; one clock for sender and receivers

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

function connect(url) {
  // perMessageDeflate off: ws offers it by default and websockets would accept,
  // which would benchmark zlib instead of the servers.
  return new WebSocket(url, { perMessageDeflate: false });
}

// Open `count` connections, at most `concurrency` handshakes at a time (so the
// servers' listen backlogs never overflow), resolve with them and the time taken.
function openMany(url, count, concurrency, onSocket) {
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
        const ws = connect(url);
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

function payload(size) {
  // Binary: the same bytes for every server, no UTF-8 checks on either side.
  const buffer = Buffer.alloc(Math.max(size, 16), 0x61);
  buffer.writeDoubleLE(now(), 0);
  return buffer;
}

// Echo: `connections` x `inflight` messages of `size` bytes; each echo that
// comes back is timed (the send time rides in its first 8 bytes) and replaced.
async function echo() {
  const { url, connections, inflight, size } = config;
  const template = payload(size);
  const latency = new Samples();
  const perConnection = new Array(connections).fill(0);
  let measuring = false;
  let sending = true;
  let messages = 0;
  let bytes = 0;
  let errors = 0;
  const send = (ws) => {
    template.writeDoubleLE(now(), 0); // ws copies while masking: the template is reusable
    ws.send(template, { binary: true });
  };
  const opened = await openMany(url, connections, 100, (ws, index) => {
    ws.on("message", (data) => {
      if (measuring) {
        latency.add(now() - data.readDoubleLE(0));
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
  const window = await measureWindow(
    () => {
      measuring = true;
    },
    () => {
      measuring = false;
      sending = false;
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
  const template = payload(size);

  const received = (data) => {
    const sent = data.readDoubleLE(0);
    const id = data.readUInt32LE(8);
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
  const fast = await openMany(url, receivers, 100, (ws) => {
    ws.on("message", received);
    ws.on("error", () => {
      errors += 1;
    });
  });
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
      template.writeDoubleLE(now(), 0);
      template.writeUInt32LE(seq, 8);
      remaining.set(seq, receivers);
      sender.send(template, { binary: true });
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
  sending = true;
  pump();
  const measured = await measureWindow(
    () => {
      measuring = true;
    },
    () => {
      measuring = false;
      sending = false;
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
