// The chat page: plain JavaScript, no build step. Received text is shown with
// textContent, never innerHTML, so a message cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
let socket = null;
let retryDelay = 1000; // doubles up to 30 s while the server is unreachable
let retryTimer = null;

function show(kind, text) {
  const line = document.createElement("li");
  line.className = kind;
  line.textContent = text;
  $("log").append(line);
  line.scrollIntoView({ block: "end" });
}

// The status line: a test reads #status[data-state], #protocol and #extensions.
function setStatus(state, ws) {
  $("status").textContent = state;
  $("status").dataset.state = state;
  $("protocol").textContent = ws ? ws.protocol : "";
  $("extensions").textContent = ws ? ws.extensions : "";
}

function render(data) {
  if (typeof data !== "string") {
    show("info", `(binary message of ${data.byteLength} bytes)`);
    return;
  }
  let message;
  try {
    message = JSON.parse(data);
  } catch (error) {
    show("info", data);
    return;
  }
  switch (message.type) {
    case "welcome":
      show("info", `Welcome, ${message.user}, to room ${message.room}.`);
      break;
    case "joined":
      show("info", `${message.user} joined.`);
      break;
    case "left":
      show("info", `${message.user} left.`);
      break;
    case "message":
      show("message", `${message.user}: ${message.text}`);
      break;
    case "error":
      show("error", message.text);
      break;
    default:
      show("info", data);
  }
}

function connect() {
  disconnect();
  const room = $("room").value.trim() || "lobby";
  const token = $("token").value.trim();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + "/?room=" + encodeURIComponent(room);
  // The token travels as a subprotocol entry, not in the URL (which servers log).
  const protocols = token ? ["chat.v1", "bearer." + token] : ["chat.v1"];
  let ws;
  try {
    ws = new WebSocket(url, protocols);
  } catch (error) {
    show("error", `Cannot connect: ${error.message}`);
    return;
  }
  ws.binaryType = "arraybuffer";
  socket = ws;
  setStatus("connecting", ws);
  ws.onopen = () => {
    retryDelay = 1000;
    setStatus("open", ws);
  };
  ws.onmessage = (event) => render(event.data);
  ws.onclose = (event) => {
    const reason = event.reason ? ` (${event.reason})` : "";
    show("closed", `Connection closed: ${event.code}${reason}.`);
    if (ws !== socket) return; // replaced or closed on purpose
    socket = null;
    setStatus("closed", null);
    // 1008: refused by policy (a bad token, a room name too long): retrying will not help.
    if (event.code === 1008) return;
    show("info", `Reconnecting in ${retryDelay / 1000} s...`);
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  };
}

function disconnect() {
  clearTimeout(retryTimer);
  if (socket) {
    const ws = socket;
    socket = null; // its onclose will not reconnect
    ws.close(1000);
    setStatus("closed", null);
  }
}

$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
$("disconnect").addEventListener("click", disconnect);
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    show("error", "Not connected.");
    return;
  }
  socket.send(JSON.stringify({ type: "message", text }));
  $("text").value = "";
});

// The page's own query and fragment can preset the room and the token:
// /?room=kitchen#token=eyJ... (the fragment never reaches the server's logs).
const params = new URLSearchParams(location.search);
if (params.get("room")) $("room").value = params.get("room");
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) $("token").value = fragment.get("token");
connect();
