// The unifeed live map: MapLibre GL draws the base map, deck.gl the aircraft.
//
// Data flow: the feed worker (feed-worker.js) holds the WebSocket and the aircraft table
// and posts typed arrays; this thread only hands them to deck.gl as binary attributes.
// Everything the page shows is what the server sent for the token in the page's URL
// (?token=...), used as a Bearer header for HTTP and as ?token= for the WebSocket.
//
// window.unifeedMap.state() reports what is drawn, for tests and for people debugging.

import maplibregl from "maplibre-gl";
import { MapboxOverlay } from "@deck.gl/mapbox";
import { IconLayer, PathLayer, ScatterplotLayer, TextLayer } from "@deck.gl/layers";
import { LEGEND, EMERGENCY_SQUAWKS } from "./colors.js";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const base = new URL(".", location.href).href;
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
/** An aircraft without news for this much feed time is dropped in playback (the
 * server's default --stale; live, the server itself removes stale aircraft). */
const PLAYBACK_STALE_MS = 120000;
const SEND_INTERVAL_MS = 150;

const { Map: MapLibre, NavigationControl, ScaleControl } = maplibregl;

const $ = (id) => document.getElementById(id);

// --- state -------------------------------------------------------------------

/** Every id this page has drawn since it opened (tests: nothing hidden ever showed). */
const everDrawn = new Set();

const state = {
  frame: null, // latest frame from the worker
  frames: 0,
  viewport: null, // bbox last sent
  viewportsSent: 0,
  drawnViewport: null, // bbox of the snapshot the drawn aircraft came from (live)
  selection: null,
  selected: null,
  follow: false,
  followEndedBy: null,
  trail: [],
  mode: null, // "live" | "catchup": the server's, carried by every WebSocket frame
  source: "live", // "live" | "playback"
  playback: null,
  ws: "connecting",
  errors: [],
  handleMs: [], // main-thread time per frame (last 200)
};

// --- map -----------------------------------------------------------------------

function bundledStyle() {
  return {
    version: 8,
    sources: {
      land: { type: "geojson", data: `${base}land.json` },
      borders: { type: "geojson", data: `${base}borders.json` },
      airports: { type: "geojson", data: { type: "FeatureCollection", features: [] } },
    },
    layers: [
      { id: "sea", type: "background", paint: { "background-color": "#0d1b2a" } },
      { id: "land", type: "fill", source: "land", paint: { "fill-color": "#1b2838" } },
      { id: "coast", type: "line", source: "land", paint: { "line-color": "#46698c", "line-width": 0.8 } },
      {
        id: "borders",
        type: "line",
        source: "borders",
        paint: { "line-color": "#34495e", "line-width": 0.6, "line-dasharray": [3, 2] },
      },
      {
        id: "airports",
        type: "circle",
        source: "airports",
        minzoom: 4,
        paint: {
          "circle-radius": ["interpolate", ["linear"], ["zoom"], 4, 1.5, 10, 4],
          "circle-color": "#7f9cbf",
          "circle-opacity": 0.8,
        },
      },
    ],
  };
}

async function loadConfig() {
  // config.json ships with the page ({"style": null}); a server may answer it with a
  // tile style of its own. ?style=URL on the page's address wins over both.
  try {
    const response = await fetch(`${base}config.json`);
    if (response.ok) return await response.json();
  } catch {
    // no config: the bundled map
  }
  return {};
}

/** The tile style `url` if it can be fetched, else null: a style MapLibre cannot load
 * leaves the map without its "load" event, and so without any aircraft, so the page falls
 * back to the bundled layers and says why. */
async function usableStyle(url) {
  try {
    const response = await fetch(url);
    if (response.ok) {
      await response.json();
      return url;
    }
    reportError(`tile style ${url}: HTTP ${response.status}; showing the bundled map`);
  } catch (error) {
    reportError(`tile style ${url}: ${error.message || error}; showing the bundled map`);
  }
  return null;
}

const config = await loadConfig();
const wantedStyle = params.get("style") || config.style || null;
const customStyle = wantedStyle ? await usableStyle(wantedStyle) : null;

const map = new MapLibre({
  container: "map",
  style: customStyle || bundledStyle(),
  center: [Number(params.get("lon") ?? -98), Number(params.get("lat") ?? 39)],
  zoom: Number(params.get("zoom") ?? 3),
  dragRotate: false,
  pitchWithRotate: false,
  touchPitch: false,
  attributionControl: customStyle ? undefined : false,
  fadeDuration: 0,
});
map.touchZoomRotate.disableRotation();
map.addControl(new NavigationControl({ showCompass: false }), "bottom-right");
map.addControl(new ScaleControl({ unit: "nautical" }), "bottom-left");

let airports = [];
if (!customStyle) {
  fetch(`${base}airports.json`)
    .then((r) => r.json())
    .then((body) => {
      airports = body.airports;
      const features = airports.map(([icao, iata, name, lon, lat]) => ({
        type: "Feature",
        geometry: { type: "Point", coordinates: [lon, lat] },
        properties: { icao, iata, name },
      }));
      const apply = () => map.getSource("airports").setData({ type: "FeatureCollection", features });
      if (map.getSource("airports")) apply();
      else map.once("load", apply);
      render();
    })
    .catch((error) => reportError(`airports: ${error}`));
}

// --- icons ---------------------------------------------------------------------

function iconAtlas() {
  const size = 64;
  const canvas = document.createElement("canvas");
  canvas.width = size * 2;
  canvas.height = size;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  // An airliner seen from above, nose up (heading 0 = north).
  const plane = new Path2D(
    "M32 2 C35 2 36 6 36 10 L36 24 L60 38 L60 43 L36 36 L35 52 L43 58 L43 62 L32 59 L21 62 L21 58 L29 52 L28 36 L4 43 L4 38 L28 24 L28 10 C28 6 29 2 32 2 Z",
  );
  g.fill(plane);
  // A ground vehicle: a rounded box with a notch showing its direction.
  g.translate(size, 0);
  g.beginPath();
  g.moveTo(32, 8);
  g.lineTo(48, 24);
  g.lineTo(48, 56);
  g.lineTo(16, 56);
  g.lineTo(16, 24);
  g.closePath();
  g.fill();
  return {
    atlas: canvas.toDataURL(),
    mapping: {
      plane: { x: 0, y: 0, width: size, height: size, mask: true },
      vehicle: { x: size, y: 0, width: size, height: size, mask: true },
    },
  };
}
const icons = iconAtlas();

// --- deck.gl layers ------------------------------------------------------------------

// Interleaved: deck.gl draws into MapLibre's WebGL context, one canvas to composite
// instead of two (measured: the cheaper frame of the two under SwiftShader).
const overlay = new MapboxOverlay({
  interleaved: true,
  layers: [],
  getCursor: ({ isHovering, isDragging }) => (isDragging ? "grabbing" : isHovering ? "pointer" : "grab"),
});
map.addControl(overlay);

// Clicks pick explicitly (a few pixels around the point, for fingers too): deck.gl's own
// click handling in interleaved mode missed the first click on a fresh page.
map.on("click", (e) => {
  const f = state.frame;
  if (!f || !f.count) return;
  const info = overlay.pickObject({ x: e.point.x, y: e.point.y, radius: 6, layerIds: ["aircraft"] });
  if (info && info.index >= 0 && info.index < f.count) select(f.ids[info.index], { fly: false });
});

let serial = 0;

function layers() {
  const f = state.frame;
  const out = [];
  const zoom = map.getZoom();
  if (airports.length && zoom >= 7) {
    out.push(
      new TextLayer({
        id: "airport-labels",
        data: airports,
        getPosition: (a) => [a[3], a[4]],
        getText: (a) => a[1],
        getSize: 11,
        getColor: [160, 185, 215, 220],
        getPixelOffset: [0, -12],
        fontFamily: "system-ui, sans-serif",
      }),
    );
  }
  if (state.trail.length > 1) {
    out.push(
      new PathLayer({
        id: "trail",
        // Trail points are [lon, lat, pitr]: only the first two are the path.
        data: [{ path: state.trail.map((p) => [p[0], p[1]]) }],
        getPath: (d) => d.path,
        getColor: [255, 255, 255, 180],
        widthUnits: "pixels",
        getWidth: 2,
        updateTriggers: { getPath: serial },
      }),
    );
  }
  if (f && f.count) {
    const emergencies = [];
    for (let i = 0; i < f.count; i++) {
      if (f.emergencies[i]) emergencies.push([f.positions[2 * i], f.positions[2 * i + 1]]);
    }
    if (emergencies.length) {
      out.push(
        new ScatterplotLayer({
          id: "emergency-rings",
          data: emergencies,
          getPosition: (p) => p,
          radiusUnits: "pixels",
          getRadius: 17,
          stroked: true,
          filled: true,
          getFillColor: [231, 60, 60, 60],
          getLineColor: [255, 80, 80, 255],
          lineWidthUnits: "pixels",
          getLineWidth: 2.5,
        }),
      );
    }
    out.push(
      new IconLayer({
        id: "aircraft",
        data: {
          length: f.count,
          attributes: {
            getPosition: { value: f.positions, size: 2 },
            getAngle: { value: f.angles, size: 1 },
            getColor: { value: f.colors, size: 4, normalized: true },
          },
        },
        iconAtlas: icons.atlas,
        iconMapping: icons.mapping,
        getIcon: (_, { index }) => (f.icons[index] ? "vehicle" : "plane"),
        getSize: (_, { index }) => (f.icons[index] ? 13 : 20),
        sizeUnits: "pixels",
        sizeScale: iconScale(zoom),
        billboard: false,
        pickable: true,
        updateTriggers: { getIcon: serial, getSize: serial },
      }),
    );
  }
  const s = state.selected;
  if (s) {
    out.push(
      new ScatterplotLayer({
        id: "selection",
        data: [s],
        getPosition: (a) => [a.lon, a.lat],
        radiusUnits: "pixels",
        getRadius: 15,
        stroked: true,
        filled: false,
        getLineColor: [255, 255, 255, 230],
        lineWidthUnits: "pixels",
        getLineWidth: 2,
        updateTriggers: { getPosition: serial },
      }),
    );
  }
  return out;
}

/** Smaller icons when zoomed out: a dense picture stays readable, and fewer pixels to fill. */
function iconScale(zoom) {
  return zoom < 5 ? 0.6 : zoom < 7 ? 0.8 : 1;
}

function render() {
  overlay.setProps({ layers: layers() });
}

// --- the feed worker -------------------------------------------------------------------

const worker = new Worker(`${base}feed-worker.js`);

worker.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "frame") onFrame(msg);
  else if (msg.type === "ws") onSocket(msg);
  else if (msg.type === "playback") onPlayback(msg);
};
worker.onerror = (event) => reportError(`feed worker: ${event.message}`);

function wsUrl() {
  const url = new URL("ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function goLive() {
  stopPlaybackClock();
  state.source = "live";
  state.mode = null; // until the first live frame says
  state.playback = null;
  state.frame = null;
  state.drawnViewport = null;
  state.trail = [];
  if (state.selection !== null) loadTrail(state.selection);
  worker.postMessage({ cmd: "live", url: wsUrl() });
  sendViewport(true);
  updateClock();
  render();
}

function onFrame(frame) {
  const started = performance.now();
  if (frame.source !== state.source) return;
  state.frame = frame;
  if (frame.source === "live") state.mode = frame.mode;
  state.frames += 1;
  for (const id of frame.ids) everDrawn.add(id);
  state.drawnViewport = frame.viewport;
  serial += 1;
  const s = frame.selected;
  if (state.selection !== null) {
    state.selected = s;
    if (s) {
      const last = state.trail[state.trail.length - 1];
      if (!last || last[2] < s.pitr) state.trail.push([s.lon, s.lat, s.pitr]);
      if (state.follow && !pointerDown) map.easeTo({ center: [s.lon, s.lat], duration: 400 });
    }
    showPanel();
  }
  render();
  updateClock();
  const spent = performance.now() - started;
  state.handleMs.push(spent);
  if (state.handleMs.length > 200) state.handleMs.shift();
}

let tokenChecked = false;

function onSocket(msg) {
  state.ws = msg.status;
  if (msg.status === "closed" && msg.code === 1008) reportError(`server closed the connection: ${msg.detail}`);
  if (msg.status === "closed" && !msg.opened && token && !tokenChecked) {
    // The handshake was refused; a browser does not say why, the HTTP API does (once).
    tokenChecked = true;
    checkToken();
  }
  updateClock();
}

async function checkToken() {
  try {
    const response = await fetch(`${base}api/aircraft/-`, { headers: authHeaders });
    if (response.status === 401) reportError("unknown token: the server refused it");
  } catch {
    // the server is down: the WebSocket status says so
  }
}

// --- viewport ---------------------------------------------------------------------------

function wrapLon(x) {
  const w = ((((x + 180) % 360) + 360) % 360) - 180;
  return w === -180 && x > 0 ? 180 : w;
}

/** The visible box as W,S,E,N within the API's ranges (west > east across the antimeridian). */
function currentBbox() {
  const b = map.getBounds();
  let west = b.getWest();
  let east = b.getEast();
  const south = Math.max(-90, Math.floor(b.getSouth() * 1e4) / 1e4);
  const north = Math.min(90, Math.ceil(b.getNorth() * 1e4) / 1e4);
  if (east - west >= 360) {
    west = -180;
    east = 180;
  } else {
    west = wrapLon(Math.floor(west * 1e4) / 1e4);
    east = wrapLon(Math.ceil(east * 1e4) / 1e4);
  }
  return [west, south, east, north];
}

let lastSend = 0;
let sendTimer = null;

function sendViewport(force = false) {
  const box = currentBbox();
  if (!force && state.viewport && box.every((v, i) => v === state.viewport[i])) return;
  state.viewport = box;
  state.viewportsSent += 1;
  lastSend = performance.now();
  worker.postMessage({ cmd: "bbox", bbox: box });
}

function onMove() {
  // Throttled while moving, and always once more when the move ends.
  const wait = SEND_INTERVAL_MS - (performance.now() - lastSend);
  if (wait <= 0) sendViewport();
  else if (sendTimer === null) {
    sendTimer = setTimeout(() => {
      sendTimer = null;
      sendViewport();
    }, wait);
  }
}

map.on("move", onMove);
let drawnFor = ""; // the zoom-dependent choices the layers were last made with
map.on("moveend", () => {
  sendViewport();
  const zoom = map.getZoom();
  const key = `${zoom >= 7} ${iconScale(zoom)}`;
  if (key !== drawnFor) {
    drawnFor = key;
    render();
  }
});

// Follow mode ends on any move the user makes (drag, wheel, pinch, keys, zoom buttons):
// those events carry the input event that caused them; the page's own easeTo does not.
for (const name of ["dragstart", "zoomstart", "rotatestart", "pitchstart", "movestart"]) {
  map.on(name, (e) => {
    if (e.originalEvent && state.follow) setFollow(false, name);
  });
}
// A camera animation stops MapLibre's gesture handlers, so following must not move the
// map while a button or finger is down (the drag would never start); and a wheel or a
// pinch over the map is a zoom by the user even before MapLibre reports one.
let pointerDown = false;
map.on("mousedown", () => {
  pointerDown = true;
});
map.on("touchstart", (e) => {
  pointerDown = true;
  if (e.originalEvent.touches.length > 1 && state.follow) setFollow(false, "pinch");
});
for (const name of ["mouseup", "touchend", "touchcancel"]) {
  map.on(name, () => {
    pointerDown = false;
  });
}
window.addEventListener("mouseup", () => {
  pointerDown = false;
});
map.on("wheel", () => {
  if (state.follow) setFollow(false, "wheel");
});

// --- selection, panel, trail ----------------------------------------------------------------

async function select(id, { fly }) {
  state.selection = id;
  state.selected = null;
  state.trail = [];
  worker.postMessage({ cmd: "select", id });
  if (id === null) {
    setFollow(false, "deselect");
    hidePanel();
    render();
    return;
  }
  const response = await fetch(`${base}api/aircraft/${encodeURIComponent(id)}`, { headers: authHeaders });
  if (state.selection !== id) return;
  if (!response.ok) {
    reportError(`${id}: not found`);
    state.selection = null;
    hidePanel();
    return;
  }
  const aircraft = await response.json();
  if (!state.selected) state.selected = aircraft;
  if (fly) map.flyTo({ center: [aircraft.lon, aircraft.lat], zoom: Math.max(map.getZoom(), 8), duration: 800 });
  showPanel();
  render();
  loadTrail(id);
}

async function loadTrail(id) {
  const response = await fetch(`${base}api/aircraft/${encodeURIComponent(id)}/track`, { headers: authHeaders });
  if (state.selection !== id || !response.ok) return;
  const body = await response.json();
  const older = body.positions.map((p) => [p.lon, p.lat, p.pitr]);
  const newest = older.length ? older[older.length - 1][2] : -Infinity;
  state.trail = older.concat(state.trail.filter((p) => p[2] > newest));
  serial += 1;
  render();
}

function setFollow(on, why) {
  if (!on && state.follow) map.stop(true); // end the following ease, keep the user's gesture
  state.follow = on;
  if (!on && why) state.followEndedBy = why;
  $("follow").classList.toggle("on", on);
  $("follow").textContent = on ? "Following" : "Follow";
  if (on && state.selected) map.easeTo({ center: [state.selected.lon, state.selected.lat], duration: 400 });
}

const FIELDS = [
  ["Ident", (a) => a.ident],
  ["Flight ID", (a) => (a.kind === "flight" ? a.id : null)],
  ["Surface ID", (a) => a.surface_id],
  ["Kind", (a) => a.kind],
  ["Type", (a) => a.aircraft_type],
  ["Registration", (a) => a.registration],
  ["Route", (a) => (a.origin || a.destination ? `${a.origin || "?"} → ${a.destination || "?"}` : null)],
  ["Altitude", (a) => (a.alt == null ? null : `${Math.round(a.alt).toLocaleString("en")} ft`)],
  ["Speed", (a) => (a.gs == null ? null : `${Math.round(a.gs)} kt`)],
  ["Heading", (a) => (a.heading == null ? null : `${Math.round(a.heading)}°`)],
  ["Squawk", (a) => a.squawk],
  ["Emergency", (a) => a.emergency],
  ["Phase", (a) => a.phase],
  ["On ground", (a) => (a.on_ground ? "yes" : "no")],
  ["Access", (a) => a.access],
  ["Facility", (a) => a.facility],
  ["Last update", (a) => lastUpdate(a)],
];

function lastUpdate(a) {
  const now = state.frame ? state.frame.pitr : a.pitr;
  const ago = Math.max(0, Math.round((now - a.pitr) / 1000));
  return `${formatTime(a.pitr)} (${ago} s before feed time)`;
}

function showPanel() {
  const a = state.selected;
  const panel = $("panel");
  panel.hidden = false;
  document.body.classList.add("has-panel");
  $("panel-title").textContent = a ? a.ident || a.surface_id || a.id : state.selection;
  panel.classList.toggle("gone", !a);
  const rows = $("panel-rows");
  rows.replaceChildren();
  if (!a) {
    const p = document.createElement("p");
    p.textContent = "Not in view or no longer current.";
    rows.append(p);
    return;
  }
  for (const [label, get] of FIELDS) {
    const value = get(a);
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value == null || value === "" ? "—" : String(value);
    if ((label === "Emergency" && a.emergency) || (label === "Squawk" && EMERGENCY_SQUAWKS.has(a.squawk))) {
      dd.className = "emergency";
    }
    rows.append(dt, dd);
  }
}

function hidePanel() {
  $("panel").hidden = true;
  document.body.classList.remove("has-panel");
}

$("panel-close").addEventListener("click", () => select(null, { fly: false }));
$("panel-collapse").addEventListener("click", () => setPanelCollapsed(!$("panel").classList.contains("collapsed")));

/** Phone-sized windows (the CSS's breakpoint): panels collapse instead of covering the map. */
const phone = window.matchMedia("(max-width: 640px)");

function setPanelCollapsed(on) {
  $("panel").classList.toggle("collapsed", on);
  $("panel-collapse").textContent = on ? "▴" : "▾";
  $("panel-collapse").setAttribute("aria-expanded", String(!on));
  $("panel-collapse").setAttribute("aria-label", on ? "expand the panel" : "collapse the panel");
}
$("follow").addEventListener("click", () => setFollow(!state.follow, "button"));

// --- search -------------------------------------------------------------------------------------

let everything = null; // {at, aircraft} cached list of all visible aircraft for search
let searchTimer = null;

async function allAircraft() {
  if (everything && performance.now() - everything.at < 5000) return everything.aircraft;
  const response = await fetch(`${base}api/aircraft`, { headers: authHeaders });
  if (!response.ok) throw new Error(`search: ${response.status}`);
  const body = await response.json();
  everything = { at: performance.now(), aircraft: body.aircraft };
  return body.aircraft;
}

async function search(text) {
  const q = text.trim().toLowerCase();
  const list = $("results");
  if (q.length < 2) {
    list.replaceChildren();
    return;
  }
  const found = (await allAircraft())
    .filter((a) => (a.ident && a.ident.toLowerCase().includes(q)) || a.id.toLowerCase().includes(q))
    .sort((a, b) => (a.ident || a.id).localeCompare(b.ident || b.id))
    .slice(0, 12);
  if ($("search").value.trim().toLowerCase() !== q) return;
  list.replaceChildren(
    ...found.map((a) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.textContent = `${a.ident || "—"}  ${a.id}`;
      button.dataset.id = a.id;
      button.addEventListener("click", () => {
        list.replaceChildren();
        $("search").value = a.ident || a.id;
        select(a.id, { fly: true });
      });
      li.append(button);
      return li;
    }),
  );
  if (!found.length) {
    const li = document.createElement("li");
    li.textContent = "no match";
    list.append(li);
  }
}

$("search").addEventListener("input", (e) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search(e.target.value).catch((err) => reportError(String(err))), 200);
});
$("search").addEventListener("keydown", (e) => {
  if (e.key === "Enter") {
    const first = $("results").querySelector("button");
    if (first) first.click();
  }
});

// --- clock and mode -------------------------------------------------------------------------------

function formatTime(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function updateClock() {
  const pitr = state.frame ? state.frame.pitr : null;
  $("clock-time").textContent = pitr ? `${formatTime(pitr)} UTC` : "—";
  const badge = $("clock-mode");
  let text;
  let cls;
  if (state.source === "playback") {
    text = `playback ${state.playback ? state.playback.speed : ""}×`;
    cls = "playback";
  } else if (state.ws !== "open") {
    text = state.ws === "connecting" ? "connecting" : "disconnected";
    cls = "down";
  } else {
    text = state.mode === "catchup" ? "catching up" : state.mode === "live" ? "live" : "…";
    cls = state.mode || "";
  }
  badge.textContent = text;
  badge.className = `badge ${cls}`;
  $("count").textContent = state.frame ? `${state.frame.count.toLocaleString("en")} shown` : "";
}

// --- playback ---------------------------------------------------------------------------------

let playTimer = null;

function parseUtc(text) {
  if (!text) return NaN;
  return Date.parse(text.length === 16 ? `${text}:00Z` : `${text}Z`);
}

function toInput(ms) {
  return new Date(ms).toISOString().slice(0, 19);
}

function startPlayback(from, to, speed) {
  if (!(from < to)) {
    reportError("playback: 'from' must be before 'to'");
    return;
  }
  stopPlaybackClock();
  state.source = "playback";
  state.frame = null;
  state.trail = []; // drawn as the playback goes
  state.playback = { from, to, speed, t: from, status: "loading", startedAt: performance.now() };
  worker.postMessage({ cmd: "playback", base, token, from, to, speed, stale: PLAYBACK_STALE_MS });
  $("live").hidden = false;
  updateClock();
}

function onPlayback(msg) {
  const p = state.playback;
  if (!p) return;
  if (msg.status === "error") {
    reportError(`playback: ${msg.detail}`);
    p.status = "error";
  } else if (msg.status === "loaded" && p.status === "loading") {
    p.status = "playing";
    p.startedAt = performance.now();
    playTimer = setInterval(() => {
      p.t = Math.min(p.to, p.from + ((performance.now() - p.startedAt) * p.speed));
      worker.postMessage({ cmd: "tick", t: p.t });
    }, 100);
  } else if (msg.status === "ended") {
    // The worker says so once it has drawn `to` (it may wait for data past the clock).
    p.status = "ended";
    stopPlaybackClock();
  }
}

function stopPlaybackClock() {
  if (playTimer !== null) clearInterval(playTimer);
  playTimer = null;
}

$("play").addEventListener("click", () => {
  startPlayback(parseUtc($("play-from").value), parseUtc($("play-to").value), Number($("play-speed").value));
});
$("live").addEventListener("click", () => {
  $("live").hidden = true;
  goLive();
});
$("toggle-playback").addEventListener("click", () => {
  const box = $("playback");
  box.hidden = !box.hidden;
  if (!box.hidden && phone.matches) setPanelCollapsed(true);
  if (!box.hidden && !$("play-from").value && state.frame) {
    $("play-to").value = toInput(state.frame.pitr);
    $("play-from").value = toInput(state.frame.pitr - 10 * 60000);
  }
});

// --- legend, errors -----------------------------------------------------------------------------

for (const [name, [r, g, b]] of LEGEND) {
  const li = document.createElement("li");
  const dot = document.createElement("span");
  dot.style.background = `rgb(${r},${g},${b})`;
  li.append(dot, name);
  $("legend").append(li);
}

function reportError(text) {
  state.errors.push(text);
  const toast = $("toast");
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(reportError.timer);
  reportError.timer = setTimeout(() => {
    toast.hidden = true;
  }, 6000);
}

// --- for tests and debugging ------------------------------------------------------------------

function project(id) {
  const f = state.frame;
  if (!f) return null;
  const i = f.ids.indexOf(id);
  if (i < 0) return null;
  const point = map.project([f.positions[2 * i], f.positions[2 * i + 1]]);
  const rect = map.getContainer().getBoundingClientRect();
  return { x: rect.left + point.x, y: rect.top + point.y };
}

/** Frame times (ms between animation frames) over `ms` of wall time. */
function measureFrames(ms) {
  return new Promise((resolve) => {
    const deltas = [];
    let last = performance.now();
    const end = last + ms;
    const step = (now) => {
      deltas.push(now - last);
      last = now;
      if (now < end) requestAnimationFrame(step);
      else resolve(deltas);
    };
    requestAnimationFrame(step);
  });
}

window.unifeedMap = {
  map,
  select: (id) => select(id, { fly: false }),
  project,
  measureFrames,
  everDrawn: () => [...everDrawn].sort(),
  /** deck.gl's own counters (fps, cpuTime, gpuTime, updateAttributesTime, ...). */
  deckMetrics: () => ({ ...(overlay._deck && overlay._deck.metrics) }),
  /** How each of `ids` is drawn: RGB, icon, angle (deck.gl's: counter-clockwise
   * degrees), emergency ring; null when not drawn. */
  drawnOf(ids) {
    const f = state.frame;
    return ids.map((id) => {
      const i = f ? f.ids.indexOf(id) : -1;
      if (i < 0) return null;
      return {
        color: [...f.colors.subarray(4 * i, 4 * i + 3)],
        icon: f.icons[i] ? "vehicle" : "plane",
        angle: f.angles[i],
        ring: f.emergencies[i] === 1,
      };
    });
  },
  state() {
    const f = state.frame;
    return {
      ready: map.loaded() && f !== null,
      aircraft: f ? [...f.ids].sort() : [],
      emergencies: f ? f.ids.filter((_, i) => f.emergencies[i]).sort() : [],
      vehicles: f ? f.ids.filter((_, i) => f.icons[i] === 1).sort() : [],
      count: f ? f.count : 0,
      frames: state.frames,
      source: state.source,
      viewport: state.viewport,
      viewportsSent: state.viewportsSent,
      drawnViewport: state.drawnViewport,
      selection: state.selection,
      selected: state.selected,
      panelOpen: !$("panel").hidden,
      panelCollapsed: $("panel").classList.contains("collapsed"),
      follow: state.follow,
      followEndedBy: state.followEndedBy,
      trail: state.trail.length,
      clock: { pitr: f ? f.pitr : null, mode: state.mode, text: $("clock-time").textContent, badge: $("clock-mode").textContent },
      ws: state.ws,
      playback: state.playback ? { ...state.playback } : null,
      center: map.getCenter().toArray(),
      /** The base map: the tile style's URL (--tiles, config.json or ?style=), or null
       * for the bundled layers; and the style's layer ids as MapLibre holds them. */
      style: customStyle,
      styleWanted: wantedStyle,
      layers: (map.getStyle()?.layers || []).map((l) => l.id),
      zoom: map.getZoom(),
      errors: [...state.errors],
      handleMs: [...state.handleMs],
    };
  },
};

/** Without ?lon=&lat= in the address, the map opens on the traffic: the box around every
 * aircraft the token may see (or the whole world when they span more than half of it). */
async function fitTraffic() {
  if (params.has("lon") || params.has("lat")) return;
  try {
    const response = await fetch(`${base}api/aircraft`, { headers: authHeaders });
    if (!response.ok) return;
    const { aircraft } = await response.json();
    if (!aircraft.length) return;
    let [west, south, east, north] = [180, 90, -180, -90];
    for (const a of aircraft) {
      west = Math.min(west, a.lon);
      east = Math.max(east, a.lon);
      south = Math.min(south, a.lat);
      north = Math.max(north, a.lat);
    }
    if (east - west > 180) [west, east] = [-180, 180];
    map.fitBounds([[west, Math.max(south, -80)], [east, Math.min(north, 80)]], { padding: 60, maxZoom: 9, duration: 0 });
  } catch {
    // the server is not answering yet: the WebSocket status says so
  }
}

map.on("load", async () => {
  await fitTraffic();
  goLive();
});
