// The telesurg console page: shows what the web_console node sends over /ws and sends it the
// controls (keys, pointer, gamepad), the state command buttons and its latency measurements.
"use strict";

const CODEC = "avc1.42C01E";  // H.264 Constrained Baseline level 3.0, as x264 ultrafast makes
const HEADER_BYTES = 16;      // eye, keyframe, 6 padding, capture time (ms, float64)
const INPUT_REFRESH_MS = 100; // the node takes a page silent for 600 ms as gone
const HISTORY_MS = 30000;
const MOVE_KEYS = {
  KeyD: [1, 0, 0], ArrowRight: [1, 0, 0], KeyA: [-1, 0, 0], ArrowLeft: [-1, 0, 0],
  KeyW: [0, 1, 0], ArrowUp: [0, 1, 0], KeyS: [0, -1, 0], ArrowDown: [0, -1, 0],
  KeyE: [0, 0, 1], KeyQ: [0, 0, -1],
};
const GRIP_KEYS = { KeyX: 1, KeyZ: -1 };

const $ = (id) => document.getElementById(id);
// Every measurement since the page loaded (up to MAX_FIGURES each), for benchmarks and tests.
const MAX_FIGURES = 100000;
window.telesurgFigures = { captureToDisplay: [], keyToMotion: [] };
function keep(list, value) { if (list.length < MAX_FIGURES) list.push(value); }
const token = new URLSearchParams(location.search).get("token") || "";
const now = () => performance.timeOrigin + performance.now();  // ms since the epoch

// -- connection ---------------------------------------------------------------------------

let socket = null;
function connect() {
  socket = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { $("connection").textContent = "connected"; };
  socket.onclose = () => {
    // The node released the pedal when this page went: it is pressed again by hand, never
    // by a reconnect.
    present = false;
    $("present-toggle").classList.remove("on");
    $("connection").textContent = "disconnected: reconnecting";
    setTimeout(connect, 1000);
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onFrame(event.data);
  };
}
function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

// -- video --------------------------------------------------------------------------------

const eyes = [0, 1].map(() => ({ decoder: null, wantsKey: true, frame: null }));
const videoCanvas = $("video");
const videoContext = videoCanvas.getContext("2d");
const scratch = document.createElement("canvas");
let captureToDisplay = [];   // since the last report
const recentVideo = [];      // for the figure on the page
let framesShown = 0;
let drawPending = false;
let lastFrameAt = 0;  // page time of the last picture drawn
const STALE_VIDEO_MS = 500;

function openDecoder(index) {
  const eye = eyes[index];
  eye.decoder = new VideoDecoder({
    output: (frame) => {
      if (eye.frame) eye.frame.close();
      eye.frame = frame;
      if (!drawPending) { drawPending = true; requestAnimationFrame(draw); }
    },
    error: (error) => {
      $("notice").textContent = `video decoder (${index ? "right" : "left"} eye): ${error.message}`;
      eye.decoder = null;
      eye.wantsKey = true;
    },
  });
  eye.decoder.configure({ codec: CODEC, optimizeForLatency: true });
  eye.wantsKey = true;
}

function onFrame(buffer) {
  if (typeof VideoDecoder === "undefined") {
    $("notice").textContent = "no video: this browser has no WebCodecs here (open the page on " +
      "localhost or 127.0.0.1, e.g. through an SSH tunnel, or over HTTPS)";
    return;
  }
  const view = new DataView(buffer);
  const index = view.getUint8(0), keyframe = view.getUint8(1) === 1;
  const captureMs = view.getFloat64(8, true);
  const eye = eyes[index];
  if (!eye.decoder || eye.decoder.state === "closed") openDecoder(index);
  if (eye.wantsKey && !keyframe) return;
  eye.wantsKey = false;
  eye.decoder.decode(new EncodedVideoChunk({
    type: keyframe ? "key" : "delta", timestamp: Math.round(captureMs * 1000),
    data: new Uint8Array(buffer, HEADER_BYTES),
  }));
}

function draw() {
  drawPending = false;
  const mode = $("view-mode").value;
  const [left, right] = [eyes[0].frame, eyes[1].frame];
  if (!left) return;
  const w = left.displayWidth, h = left.displayHeight;
  const width = mode === "side" ? 2 * w : w;
  if (videoCanvas.width !== width || videoCanvas.height !== h) {
    videoCanvas.width = width;
    videoCanvas.height = h;
  }
  if (mode === "side" && right) {
    videoContext.drawImage(left, 0, 0, w, h);
    videoContext.drawImage(right, w, 0, w, h);
  } else if (mode === "anaglyph" && right) {
    anaglyph(left, right, w, h);
  } else {
    videoContext.drawImage(left, 0, 0, w, h);
  }
  const shownAt = now();
  for (const frame of mode === "left" ? [left] : [left, right]) {
    if (!frame || frame.shown) continue;
    frame.shown = true;
    const latency = shownAt - frame.timestamp / 1000;
    captureToDisplay.push(latency);
    recentVideo.push(latency);
    keep(window.telesurgFigures.captureToDisplay, latency);
  }
  if (recentVideo.length > 300) recentVideo.splice(0, recentVideo.length - 300);
  framesShown += 1;
  lastFrameAt = shownAt;
  videoCanvas.dataset.frames = String(framesShown);
}

// Red from the left eye, green and blue from the right: each multiplied by its colour, added.
function anaglyph(left, right, w, h) {
  scratch.width = w; scratch.height = h;
  const other = scratch.getContext("2d");
  videoContext.globalCompositeOperation = "source-over";
  videoContext.drawImage(left, 0, 0, w, h);
  videoContext.globalCompositeOperation = "multiply";
  videoContext.fillStyle = "#ff0000";
  videoContext.fillRect(0, 0, w, h);
  other.globalCompositeOperation = "source-over";
  other.drawImage(right, 0, 0, w, h);
  other.globalCompositeOperation = "multiply";
  other.fillStyle = "#00ffff";
  other.fillRect(0, 0, w, h);
  videoContext.globalCompositeOperation = "lighter";
  videoContext.drawImage(scratch, 0, 0);
  videoContext.globalCompositeOperation = "source-over";
}

// -- state --------------------------------------------------------------------------------

let history = [];  // [page time ms, overall, {link: [state, rtt, loss]}]
const pressedAt = new Map();  // press number -> performance.now()
let keyToMotion = [];
const recentKey = [];

function setBadge(id, text) {
  const element = $(id);
  element.textContent = text || "?";
  element.className = `badge ${text || ""}`;
}

function onMessage(message) {
  if (message.type === "state") onState(message);
  else if (message.type === "answer") $("answer").textContent = message.text;
  else if (message.type === "error") $("notice").textContent = message.text;
  else if (message.type === "motion") onMotion(message);
}

let stateAt = 0;  // page time of the last state message
const STALE_STATE_MS = 1000;

function onState(message) {
  stateAt = now();
  $("connection").textContent = "connected";
  const arm = message.arm;
  setBadge("arm-state", arm.state);
  $("arm-cause").textContent = arm.cause || "-";
  $("arm-persisting").textContent = arm.persisting.join(", ") || "-";
  const yesNo = (value) => (value === null || value === undefined ? "?" : value ? "yes" : "no");
  $("following").textContent = yesNo(message.console.following);
  $("clutch").textContent = yesNo(message.console.clutch);
  $("present").textContent = yesNo(message.console.operator_present);
  $("hands").textContent = message.console.hands_blocked ||
    (message.console.hands_driving ? "the page's controls drive the master" : "no page drives");
  if (message.tip_mm) $("tip").textContent = message.tip_mm.map((v) => v.toFixed(1)).join(", ");
  const links = message.links || { overall: null, links: {} };
  setBadge("links-overall", links.overall);
  const rows = Object.entries(links.links).map(([name, link]) =>
    `<tr><td>${name}</td><td><span class="badge ${link.state}">${link.state}</span></td>` +
    `<td>${formatMs(link.rtt_ms)}</td><td>${link.loss_percent == null ? "?" :
      link.loss_percent.toFixed(1) + " %"}</td></tr>`);
  document.querySelector("#links tbody").innerHTML = rows.join("");
  const t = now();
  if (message.history) {
    history = message.history.map(([ago, overall, each]) => [t + 1000 * ago, overall, each]);
  } else {
    const each = {};
    for (const [name, link] of Object.entries(links.links)) {
      each[name] = [link.state, link.rtt_ms, link.loss_percent];
    }
    history.push([t, links.overall, each]);
  }
  history = history.filter((point) => t - point[0] <= HISTORY_MS);
  plotLinks(t);
  $("latency-video").textContent = figures(recentVideo);
  videoSources = message.video_sources;
  checkStaleness();
  $("latency-key").textContent = figures(recentKey);
}

function formatMs(value) {
  if (value === null || value === undefined) return "?";
  return `${value < 100 ? value.toFixed(1) : value.toFixed(0)} ms`;
}

function figures(samples) {
  if (!samples.length) return "-";
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return `p50 ${at(0.5).toFixed(1)} ms, p99 ${at(0.99).toFixed(1)} ms (${samples.length})`;
}

const OVERALL_COLOURS = { REDUNDANT: "#1f7a3a", SINGLE: "#a86d00", LOST: "#b02a2a" };
const LINE_COLOURS = ["#6cb6ff", "#f5a3ff", "#ffd166"];

function plotLinks(t) {
  const canvas = $("link-plot"), context = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, band = 10;
  context.clearRect(0, 0, w, h);
  const x = (time) => w * (1 - (t - time) / HISTORY_MS);
  history.forEach((point, i) => {  // the overall state, as a band along the top
    const next = history[i + 1] ? history[i + 1][0] : t;
    context.fillStyle = OVERALL_COLOURS[point[1]] || "#444";
    context.fillRect(x(point[0]), 0, Math.max(1, x(next) - x(point[0])), band);
  });
  const rtts = history.flatMap((p) => Object.values(p[2]).map((v) => v[1] || 0));
  const top = Math.max(1, ...rtts) * 1.2;
  const names = [...new Set(history.flatMap((p) => Object.keys(p[2])))];
  names.forEach((name, n) => {
    context.strokeStyle = LINE_COLOURS[n % LINE_COLOURS.length];
    context.beginPath();
    let drawing = false;
    for (const point of history) {
      const link = point[2][name];
      if (!link || link[1] === null || link[0] === "DOWN") { drawing = false; continue; }
      const y = h - (h - band - 14) * link[1] / top - 2;
      if (drawing) context.lineTo(x(point[0]), y); else context.moveTo(x(point[0]), y);
      drawing = true;
    }
    context.stroke();
    context.fillStyle = context.strokeStyle;
    context.fillText(`${name} RTT`, 4 + 60 * n, band + 12);
  });
  context.fillStyle = "#9aa0aa";
  context.fillText(`${top.toFixed(0)} ms`, w - 50, band + 12);
}

function onMotion(message) {
  const pressed = pressedAt.get(message.press);
  if (message.tip_mm) $("tip").textContent = message.tip_mm.map((v) => v.toFixed(1)).join(", ");
  if (pressed === undefined) return;
  pressedAt.delete(message.press);
  const latency = performance.now() - pressed;
  keyToMotion.push(latency);
  recentKey.push(latency);
  keep(window.telesurgFigures.keyToMotion, latency);
  $("latency-key").textContent = figures(recentKey);
}

// -- controls -----------------------------------------------------------------------------

const held = new Set();
let present = false, clutchButton = false, padMove = [0, 0];
let gamepadMove = [0, 0, 0], gamepadGrip = 0, gamepadClutch = false, gamepadPresentWas = false;
let pressNumber = 0, lastSent = "", lastSentAt = 0;

function controls() {
  const move = [0, 0, 0];
  let grip = gamepadGrip;
  for (const code of held) {
    if (MOVE_KEYS[code]) MOVE_KEYS[code].forEach((v, i) => { move[i] += v; });
    if (GRIP_KEYS[code]) grip += GRIP_KEYS[code];
  }
  move[0] += padMove[0]; move[1] += padMove[1];
  gamepadMove.forEach((v, i) => { move[i] += v; });
  const clamp = (v) => Math.max(-1, Math.min(1, v));
  return { type: "input", move: move.map(clamp), grip: clamp(grip),
           clutch: held.has("Space") || clutchButton || gamepadClutch, present };
}

function sendControls(press) {
  const message = controls();
  const text = JSON.stringify(message);
  if (press === undefined && text === lastSent && performance.now() - lastSentAt < INPUT_REFRESH_MS)
    return;
  lastSent = text;
  lastSentAt = performance.now();
  if (press !== undefined) message.press = press;
  send(message);
}

function togglePresent() {
  present = !present;
  $("present-toggle").classList.toggle("on", present);
  sendControls();
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "SELECT") return;
  const code = event.code;
  if (!(code in MOVE_KEYS || code in GRIP_KEYS || code === "Space" || code === "KeyP")) return;
  event.preventDefault();
  if (event.repeat) return;
  if (code === "KeyP") { togglePresent(); return; }
  held.add(code);
  if (code in MOVE_KEYS) {
    pressNumber += 1;
    pressedAt.set(pressNumber, performance.now());
    sendControls(pressNumber);
  } else {
    sendControls();
  }
});
document.addEventListener("keyup", (event) => {
  if (held.delete(event.code)) { event.preventDefault(); sendControls(); }
});
function releaseAll() {  // focus or the tab lost: nothing stays pressed
  held.clear(); padMove = [0, 0]; clutchButton = false;
  sendControls();
}
window.addEventListener("blur", releaseAll);
document.addEventListener("visibilitychange", () => { if (document.hidden) releaseAll(); });

$("present-toggle").addEventListener("click", togglePresent);
const clutch = $("clutch-hold");
clutch.addEventListener("pointerdown", () => { clutchButton = true; sendControls(); });
for (const name of ["pointerup", "pointerleave"]) {
  clutch.addEventListener(name, () => { clutchButton = false; sendControls(); });
}

const pad = $("pad");
let padStart = null;
pad.addEventListener("pointerdown", (event) => {
  padStart = [event.clientX, event.clientY];
  pad.setPointerCapture(event.pointerId);
});
pad.addEventListener("pointermove", (event) => {
  if (!padStart) return;
  const scale = pad.clientWidth / 2;
  padMove = [(event.clientX - padStart[0]) / scale, -(event.clientY - padStart[1]) / scale]
    .map((v) => Math.max(-1, Math.min(1, v)));
  sendControls();
});
for (const name of ["pointerup", "pointercancel"]) {
  pad.addEventListener(name, () => { padStart = null; padMove = [0, 0]; sendControls(); });
}

for (const command of ["enable", "pause", "resume", "disable"]) {
  $(`cmd-${command}`).addEventListener("click", () => {
    $("answer").textContent = `${command}: sent`;
    send({ type: "command", command });
  });
}
$("view-mode").addEventListener("change", () => requestAnimationFrame(draw));

const DEAD_ZONE = 0.15;
function pollGamepad() {
  const pads = navigator.getGamepads ? navigator.getGamepads() : [];
  const gamepad = [...pads].find((p) => p && p.connected);
  if (gamepad) {
    const axis = (i) => (Math.abs(gamepad.axes[i] || 0) < DEAD_ZONE ? 0 : gamepad.axes[i]);
    const button = (i) => (gamepad.buttons[i] ? gamepad.buttons[i].value : 0);
    gamepadMove = [axis(0), -axis(1), -axis(3)];
    gamepadGrip = button(7) - button(6);
    gamepadClutch = button(4) > 0.5;
    const presentPressed = button(0) > 0.5;
    if (presentPressed && !gamepadPresentWas) togglePresent();
    gamepadPresentWas = presentPressed;
  } else {
    gamepadMove = [0, 0, 0]; gamepadGrip = 0; gamepadClutch = false;
  }
  sendControls();
  requestAnimationFrame(pollGamepad);
}

// The controls' state at least every INPUT_REFRESH_MS (rAF stops in a hidden tab: then the
// node hears nothing and releases the pedal, as it should).
setInterval(() => sendControls(), INPUT_REFRESH_MS);
setInterval(() => {
  if (captureToDisplay.length || keyToMotion.length) {
    send({ type: "latency", capture_to_display_ms: captureToDisplay,
           key_to_motion_ms: keyToMotion });
    captureToDisplay = []; keyToMotion = [];
  }
}, 1000);

// What the page shows must not pass for the present: a picture that stopped changing, a state
// that stopped coming (whatever stopped: the links, the node, the connection).
let videoSources = null;  // the site's video publishers, as the node last counted them
function checkStaleness() {
  const t = now();
  if (videoSources === 0 && !lastFrameAt) {
    $("video-stale").textContent = "no endoscope video at this site (a session without video: " +
      "telesurg demo --video, or video:=true)";
  } else {
    $("video-stale").textContent = lastFrameAt && t - lastFrameAt > STALE_VIDEO_MS ?
      `NO NEW PICTURE FOR ${((t - lastFrameAt) / 1000).toFixed(1)} s` : "";
  }
  if (stateAt && t - stateAt > STALE_STATE_MS) {
    $("connection").textContent = `NO STATE FOR ${((t - stateAt) / 1000).toFixed(1)} s: ` +
      "what this page shows is old";
    $("connection").className = "stale";
  } else {
    $("connection").className = "small";
  }
}
setInterval(checkStaleness, 250);

connect();
requestAnimationFrame(pollGamepad);
