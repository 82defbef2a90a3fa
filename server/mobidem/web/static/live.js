// The live view: the camera's frames go to the server as JPEG (at most `maxFps` a second and at most
// MAX_UNANSWERED at once; the frame sent is always the newest: latest-frame-wins), and each result is
// drawn over the preview and written as text, one line per face.
import { fetchConfig, openCamera, setStatus, socketUrl, Unreachable } from "./common.js";

const MAX_UNANSWERED = 2;   // frames sent and not yet answered
const MAX_SIDE = 640;       // frames are scaled down to this longest side before encoding
const JPEG_QUALITY = 0.8;
const RETRY_MS = 3000;
const FATAL = new Set(["UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"]);

const video = document.getElementById("preview");
const overlay = document.getElementById("overlay");
const facesList = document.getElementById("faces");
const announce = document.getElementById("announce");
const fpsEl = document.getElementById("fps");
const latencyEl = document.getElementById("latency");
const frameEl = document.getElementById("frame");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const toggle = document.getElementById("toggle");

const capture = document.createElement("canvas");
let config = null;
let ws = null;
let apiKey = "";
let running = true;
let encoding = false;
let sequence = 0;
let lastSent = 0;
const sentAt = new Map();   // sequence -> performance.now() when sent
const answered = [];        // performance.now() of recent OK results (frame rate)
const latencies = [];       // recent round trips, ms
let lastSummary = "";
let firstAnswer = null;     // performance.now() of this connection's first OK result

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : 0;
}

function faceLine(face, index) {
  const who = face.name || "face";
  const expression = face.smoothed_expression || face.expression || "expression unknown";
  const track = face.track_id ? ` (track ${face.track_id})` : "";
  return `Face ${index + 1}: ${who}, ${expression}${track}`;
}

function showFaces(result) {
  const lines = result.faces.map(faceLine);
  facesList.replaceChildren(...lines.map((text, i) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (result.faces[i].track_id) li.dataset.track = result.faces[i].track_id;
    li.dataset.box = result.faces[i].box.join(",");  // image pixels (tests check the overlay there)
    return li;
  }));
  frameEl.textContent = `frame ${result.sequence}: ${result.faces.length} face(s)`;
  // screen readers hear a change, not every frame
  const summary = lines.length ? lines.join("; ") : "No face in view.";
  if (summary !== lastSummary) {
    lastSummary = summary;
    announce.textContent = summary;
  }
}

function sizeOverlay() {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(video.clientWidth * dpr), h = Math.round(video.clientHeight * dpr);
  if (overlay.width !== w || overlay.height !== h) {
    overlay.width = w;
    overlay.height = h;
  }
  return dpr;
}

function drawBoxes(result) {
  const dpr = sizeOverlay();
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  if (!result.width || !result.height) return;
  const sx = overlay.width / result.width, sy = overlay.height / result.height;
  ctx.lineWidth = 3 * dpr;
  ctx.font = `${Math.round(14 * dpr)}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  for (const face of result.faces) {
    const [x0, y0, x1, y1] = face.box;
    const colour = face.known ? "#19c37d" : "#ffb020";
    ctx.strokeStyle = colour;
    ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
    const label = [face.name || "face", face.smoothed_expression || face.expression,
                   face.track_id ? `#${face.track_id}` : ""].filter(Boolean).join(" · ");
    const tw = ctx.measureText(label).width + 8 * dpr, th = 20 * dpr;
    const tx = Math.max(0, Math.min(x0 * sx, overlay.width - tw));  // the label stays in view
    const ty = Math.max(th, y0 * sy);
    ctx.fillStyle = colour;
    ctx.fillRect(tx, ty - th, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(label, tx + 4 * dpr, ty - 3 * dpr);
  }
}

// Results a second over the last two seconds (or since the first result, when that is sooner).
function showStats() {
  const now = performance.now();
  while (answered.length && now - answered[0] > 2000) answered.shift();
  const span = Math.min(2000, now - firstAnswer) / 1000;
  if (span >= 0.5) fpsEl.textContent = `${(answered.length / span).toFixed(1)} frames/s`;
  latencyEl.textContent = `${Math.round(median(latencies))} ms`;
}

// No stale boxes or lines once the stream is gone.
function clearView() {
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  facesList.replaceChildren();
  frameEl.textContent = "–";
  fpsEl.textContent = "–";
  latencyEl.textContent = "–";
  answered.length = 0;
  latencies.length = 0;
  firstAnswer = null;
}

function onResult(result) {
  const started = sentAt.get(result.sequence);
  sentAt.delete(result.sequence);
  if (started !== undefined) {
    latencies.push(performance.now() - started);
    if (latencies.length > 20) latencies.shift();
  }
  if (result.status === "OK") {
    answered.push(performance.now());
    if (firstAnswer === null) firstAnswer = performance.now();
    drawBoxes(result);
    showFaces(result);
    showStats();
    setStatus("Live: streaming to the server.", "ok");
  } else if (result.status === "FAILED") {
    setStatus(`Frame ${result.sequence} failed (${result.code}): ${result.error}`, "error");
  }
  // DROPPED: the server kept a newer frame instead; nothing to show
}

function sendFrame() {
  if (!running || encoding || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (video.readyState < 2 || !video.videoWidth) return;
  const now = performance.now();
  if (now - lastSent < 1000 / (config.max_fps || 10) || sentAt.size >= MAX_UNANSWERED) return;
  lastSent = now;
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  capture.width = Math.round(video.videoWidth * scale);
  capture.height = Math.round(video.videoHeight * scale);
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  encoding = true;
  capture.toBlob((blob) => {
    encoding = false;
    if (!blob || !ws || ws.readyState !== WebSocket.OPEN) return;
    sequence += 1;
    sentAt.set(sequence, performance.now());
    ws.send(blob);
  }, "image/jpeg", JPEG_QUALITY);
}

function connect() {
  const url = socketUrl("/ws/stream");
  let opened = false;
  let fatal = false;
  sequence = 0;
  sentAt.clear();
  setStatus(`Connecting to ${location.host}…`);
  ws = new WebSocket(url);
  ws.onopen = () => {
    opened = true;
    const options = { type: "options", tracking: true };
    if (apiKey) options.api_key = apiKey;
    ws.send(JSON.stringify(options));
    setStatus("Connected: waiting for the first result…");
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    if (message.type === "result") onResult(message);
    else if (message.type === "error") {
      fatal = FATAL.has(message.code);
      setStatus(`The server ended the stream (${message.code}): ${message.message}`, "error");
      if (message.code === "UNAUTHENTICATED" || message.code === "PERMISSION_DENIED") keyForm.hidden = false;
    }
  };
  ws.onclose = (event) => {
    ws = null;
    clearView();
    if (fatal) return;  // the message says what to fix; retrying would fail the same way
    if (!opened) {
      setStatus(`Cannot reach the mobidem server at ${location.host}: is it running? Retrying in ${RETRY_MS / 1000} s…`, "error");
    } else if (event.code === 1009) {
      setStatus("A frame was too large for the server (web_max_message_bytes). Reconnecting…", "error");
    } else if (event.code !== 1000) {
      setStatus(`Connection to the server lost (code ${event.code}${event.reason ? ": " + event.reason : ""}). Reconnecting in ${RETRY_MS / 1000} s…`, "error");
    }
    if (running) setTimeout(connect, RETRY_MS);
  };
}

async function main() {
  try {
    config = await fetchConfig();
  } catch (err) {
    setStatus(err.message + (err instanceof Unreachable ? " Reload the page to try again." : ""), "error");
    return;
  }
  try {
    setStatus("Opening the camera…");
    await openCamera(video);
  } catch (err) {
    setStatus(err.message, "error");
    return;
  }
  toggle.hidden = false;
  toggle.addEventListener("click", () => {
    running = !running;
    toggle.textContent = running ? "Pause" : "Resume";
    toggle.setAttribute("aria-pressed", String(!running));
    if (running && !ws) connect();
    else if (!running && ws) ws.close(1000, "paused");
    if (!running) setStatus("Paused.");
  });
  window.addEventListener("resize", sizeOverlay);
  setInterval(sendFrame, 15);
  if (config.key_required) {
    keyForm.hidden = false;
    setStatus("This server needs an API key with the 'stream' role.");
    keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      apiKey = keyInput.value.trim();
      keyForm.hidden = true;
      if (ws) ws.close(1000, "new key");
      else connect();
    });
    return;
  }
  connect();
}

main();
