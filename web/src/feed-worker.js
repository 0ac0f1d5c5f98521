// The feed worker: owns the WebSocket (live) and the playback downloads, keeps the
// aircraft table, and hands the page ready-to-draw typed arrays (transferred, not copied),
// so that parsing JSON and building attributes for thousands of aircraft stay off the
// page's main thread.
//
// Page -> worker: {cmd:"live", url} | {cmd:"bbox", bbox} | {cmd:"select", id}
//   | {cmd:"playback", base, token, from, to, speed, stale} | {cmd:"tick", t}
// Worker -> page: {type:"frame", source, pitr, mode, viewport, count, ids, positions, angles,
//   colors, icons, emergencies, selected} | {type:"ws", status, code, detail, opened}
//   | {type:"playback", status: "loaded"|"error"|"ended", ...}

import { PHASE_COLORS, VEHICLE_COLOR, EMERGENCY_COLOR, UNKNOWN_COLOR, EMERGENCY_SQUAWKS } from "./colors.js";

/** id -> latest state (the API's aircraft objects). */
let table = new Map();
let pitr = 0;
/** The server's "live" | "catchup", from the latest live frame (null in playback). */
let mode = null;
let source = "live"; // "live" | "playback"
let selectedId = null;
let bbox = null;
let socket = null;
let socketUrl = null;
let reconnectDelay = 500;
let reconnectTimer = null;
let dirty = false;
/** Boxes sent on the socket and not yet answered by a snapshot, oldest first; the
 * server answers each in order, so a snapshot belongs to the oldest. */
let pendingBoxes = [];
/** The box the drawn aircraft were chosen by (its snapshot plus later updates). */
let drawnBox = null;
let flushTimer = null;

// --- live ------------------------------------------------------------------

function connect() {
  clearTimeout(reconnectTimer);
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  const ws = new WebSocket(socketUrl);
  socket = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    reconnectDelay = 500;
    post({ type: "ws", status: "open" });
    pendingBoxes = [];
    if (bbox) sendBox(ws);
  };
  ws.onmessage = (event) => {
    if (source !== "live") return;
    onFrame(JSON.parse(event.data));
  };
  ws.onclose = (event) => {
    // opened false: the handshake itself was refused (an unknown token is a 401 there,
    // which browsers do not show; the page asks the HTTP API why).
    post({ type: "ws", status: "closed", code: event.code, detail: event.reason || "", opened });
    if (socket !== ws || source !== "live") return;
    // 1008 (policy: unknown token or bad message) will not get better by retrying often.
    const delay = event.code === 1008 ? 30000 : reconnectDelay;
    reconnectDelay = Math.min(reconnectDelay * 2, 10000);
    reconnectTimer = setTimeout(connect, delay);
  };
}

function sendBox(ws) {
  pendingBoxes.push(bbox);
  ws.send(JSON.stringify({ bbox }));
}

function onFrame(frame) {
  if (frame.type === "snapshot") {
    drawnBox = pendingBoxes.length ? pendingBoxes.shift() : drawnBox;
    table = new Map();
    for (const a of frame.aircraft) table.set(a.id, a);
  } else if (frame.type === "update") {
    for (const a of frame.upsert) table.set(a.id, a);
    for (const id of frame.remove) table.delete(id);
  } else {
    return;
  }
  pitr = frame.pitr;
  mode = frame.mode || null;
  schedule();
}

// --- playback --------------------------------------------------------------

let play = null;

async function startPlayback(msg) {
  stopPlayback();
  source = "playback";
  table = new Map();
  pitr = msg.from;
  play = {
    base: msg.base,
    token: msg.token,
    from: msg.from,
    to: msg.to,
    stale: msg.stale,
    loadedUntil: msg.from - msg.stale,
    queue: [], // states not yet applied, in pitr order
    head: 0,
    loading: null,
    bbox,
    // About 20 s of wall time per request, at least 30 s and at most 10 min of feed time
    // (the server allows an hour; a browser holds a few million states at most).
    window: Math.min(600000, Math.max(30000, msg.speed * 20000)),
    generation: (startPlayback.generation = (startPlayback.generation || 0) + 1),
    received: 0,
  };
  await load(play);
  schedule();
}

function stopPlayback() {
  play = null;
}

async function load(p) {
  if (p.loading || p.loadedUntil >= p.to) return p.loading;
  const from = p.loadedUntil;
  const to = Math.min(p.to, from + p.window);
  const params = new URLSearchParams({ from: String(from), to: String(to) });
  if (p.bbox) params.set("bbox", p.bbox.join(","));
  const headers = p.token ? { Authorization: `Bearer ${p.token}` } : {};
  p.loading = (async () => {
    try {
      const response = await fetch(`${p.base}api/playback?${params}`, { headers });
      const text = await response.text();
      if (play !== p) return;
      if (!response.ok) {
        post({ type: "playback", status: "error", detail: `${response.status}: ${text.slice(0, 200)}` });
        p.loadedUntil = p.to;
        return;
      }
      const fresh = [];
      for (const line of text.split("\n")) {
        if (line) fresh.push(JSON.parse(line));
      }
      p.received += fresh.length;
      p.queue = p.queue.slice(p.head).concat(fresh);
      p.head = 0;
      p.loadedUntil = to;
      post({ type: "playback", status: "loaded", until: to, received: p.received });
    } catch (error) {
      if (play === p) {
        post({ type: "playback", status: "error", detail: String(error) });
        p.loadedUntil = p.to;
      }
    } finally {
      p.loading = null;
    }
  })();
  return p.loading;
}

function tick(t) {
  const p = play;
  if (!p || source !== "playback") return;
  // Never past what is loaded: the clock shows the time of what is drawn.
  const limit = Math.min(t, p.to, p.loadedUntil);
  const queue = p.queue;
  while (p.head < queue.length && queue[p.head].pitr <= limit) {
    const a = queue[p.head++];
    table.set(a.id, a);
  }
  pitr = limit;
  // Feed-time staleness, as the server judges it live.
  for (const [id, a] of table) {
    if (a.pitr < limit - p.stale) table.delete(id);
  }
  if (p.loadedUntil < p.to && p.loadedUntil - limit < p.window / 2) load(p);
  if (limit >= p.to) post({ type: "playback", status: "ended" });
  schedule();
}

// --- frames to the page --------------------------------------------------------

function schedule() {
  dirty = true;
  if (flushTimer === null) flushTimer = setTimeout(flush, 0);
}

function flush() {
  flushTimer = null;
  if (!dirty) return;
  dirty = false;
  const n = table.size;
  const ids = new Array(n);
  const positions = new Float32Array(n * 2);
  const angles = new Float32Array(n);
  const colors = new Uint8Array(n * 4);
  const icons = new Uint8Array(n);
  const emergencies = new Uint8Array(n);
  let i = 0;
  for (const a of table.values()) {
    ids[i] = a.id;
    positions[2 * i] = a.lon;
    positions[2 * i + 1] = a.lat;
    // deck.gl angles turn counter-clockwise; headings are clockwise from north.
    angles[i] = a.heading == null ? 0 : -a.heading;
    const vehicle = a.kind === "vehicle";
    // The server derives `emergency` from the squawk too; the squawk is checked here as
    // well, so that a state carrying only the code is still highlighted.
    const emergency = a.emergency != null || EMERGENCY_SQUAWKS.has(a.squawk);
    const color = emergency
      ? EMERGENCY_COLOR
      : vehicle
        ? VEHICLE_COLOR
        : PHASE_COLORS[a.phase] || UNKNOWN_COLOR;
    colors.set(color, 4 * i);
    icons[i] = vehicle ? 1 : 0;
    emergencies[i] = emergency ? 1 : 0;
    i++;
  }
  const selected = selectedId === null ? null : table.get(selectedId) || null;
  postMessage(
    { type: "frame", source, pitr, mode: source === "live" ? mode : null, viewport: source === "live" ? drawnBox : null, count: n, ids, positions, angles, colors, icons, emergencies, selected },
    [positions.buffer, angles.buffer, colors.buffer, icons.buffer, emergencies.buffer],
  );
}

function post(message) {
  postMessage(message);
}

self.onmessage = (event) => {
  const msg = event.data;
  switch (msg.cmd) {
    case "live":
      stopPlayback();
      source = "live";
      table = new Map();
      mode = null;
      drawnBox = null;
      socketUrl = msg.url;
      connect();
      break;
    case "bbox":
      bbox = msg.bbox;
      if (source === "live" && socket && socket.readyState === WebSocket.OPEN) {
        sendBox(socket);
      }
      if (play) play.bbox = bbox;
      break;
    case "select":
      selectedId = msg.id;
      schedule();
      break;
    case "playback":
      if (socket) {
        socket.onclose = null;
        socket.close();
        socket = null;
        clearTimeout(reconnectTimer);
      }
      startPlayback(msg);
      break;
    case "tick":
      tick(msg.t);
      break;
    default:
      break;
  }
};
