// The liveness ceremony page: the one-time token from the link's fragment (#token=...) opens the
// ceremony socket; the camera opens once the server has accepted it and sent the first challenge;
// frames go up at a steady FPS, each stamped with its capture time, prompts and the outcome come down.
// The server decides on capture times and needs frames without gaps (at least 8 a second), so frames
// are captured on time even while the server is behind; at most MAX_UNANSWERED wait to be decided (then
// frames are skipped: a gap the server reports). Plain modern JavaScript, no library.
import { fetchConfig, openCamera, setStatus, socketUrl, Unreachable } from "./common.js";

const FPS = 12;
const MAX_UNANSWERED = 96;  // 8 s of frames (a loaded server catches up; capture times stay true)
const MAX_SIDE = 640;
const JPEG_QUALITY = 0.85;

// The token is read once, then taken out of the address bar and the history (no bookmark, no shared
// screenshot of the URL carries it). A fragment is never sent in HTTP requests: no server log has it.
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
if (location.hash) history.replaceState(null, "", location.pathname + location.search);

const $ = (id) => document.getElementById(id);
const video = $("preview");
const capture = document.createElement("canvas");
let ws = null;
let camera = null;
let timer = null;
let unanswered = 0;
let encoding = false;
let lastSent = 0;
let fps = FPS;
let framesSent = 0;
let finished = false;

function stopCamera() {
  if (timer) clearInterval(timer);
  timer = null;
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
}

const TITLES = {
  UNAUTHENTICATED: "This link cannot be used",
  RESOURCE_EXHAUSTED: "Too many attempts",
  NOT_FOUND: "This check cannot be run",
  FAILED_PRECONDITION: "This check cannot be run",
};

function showError(title, message) {
  finished = true;
  stopCamera();
  $("intro").hidden = true;
  $("ceremony").hidden = true;
  $("outcome").hidden = true;
  $("error").hidden = false;
  $("error-heading").textContent = title;
  $("error-message").textContent = message;
  $("error-note").textContent = framesSent
    ? "The check was stopped before it could decide."
    : "Nothing was checked and no camera image was sent.";
  document.title = `mobidem: ${title}`;
  setStatus(title, "error");
  $("error-heading").focus();
}

function showPrompt(p) {
  $("prompt").textContent = p.text;
  $("progress").max = p.count;
  $("progress").value = p.index;
  $("progress-text").textContent = `Challenge ${p.index + 1} of ${p.count}`;
  setStatus(`Challenge ${p.index + 1} of ${p.count}: ${p.text}`, "info");
}

function showOutcome(o) {
  finished = true;
  stopCamera();
  const passed = o.decision === "PASS";
  const count = Number($("progress").max);
  $("progress").value = passed ? count : $("progress").value;
  $("ceremony").hidden = true;
  $("outcome").hidden = false;
  $("outcome").dataset.decision = o.decision;
  $("decision").textContent = passed ? "PASS: the check succeeded" : "FAIL: the check did not succeed";
  $("reasons").replaceChildren(...o.reasons.map((r) => {
    const li = document.createElement("li");
    li.textContent = r;
    return li;
  }));
  $("ceremony-id").textContent = o.ceremony_id;
  $("evidence-row").hidden = !o.evidence_record_id;
  $("evidence-id").textContent = o.evidence_record_id || "";
  setStatus(passed ? "Done: you may return to the service you are signing with." : "The check did not succeed.",
            passed ? "ok" : "error");
  $("decision").focus();
}

function sendFrame() {
  if (finished || encoding || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (video.readyState < 2 || !video.videoWidth) return;
  const now = performance.now();
  if (now - lastSent < 1000 / fps - 4 || unanswered >= MAX_UNANSWERED) return;
  lastSent = now;
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  capture.width = Math.round(video.videoWidth * scale);
  capture.height = Math.round(video.videoHeight * scale);
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  const header = new ArrayBuffer(8);
  new DataView(header).setFloat64(0, performance.timeOrigin + now, false);  // capture time, ms since the epoch
  encoding = true;
  capture.toBlob((blob) => {
    encoding = false;
    if (!blob || finished || !ws || ws.readyState !== WebSocket.OPEN) return;
    unanswered += 1;
    framesSent += 1;
    ws.send(new Blob([header, blob]));
  }, "image/jpeg", JPEG_QUALITY);
}

async function startCamera() {
  try {
    camera = await openCamera(video);
  } catch (err) {
    if (ws) ws.close(1000, "no camera");
    showError("The camera could not be opened", err.message);
    return;
  }
  $("intro").hidden = true;
  $("ceremony").hidden = false;
  timer = setInterval(sendFrame, 15);
}

function begin() {
  $("start").disabled = true;
  setStatus(`Connecting to ${location.host}…`);
  ws = new WebSocket(socketUrl("/ws/ceremony"));
  ws.onopen = () => ws.send(JSON.stringify(token ? { type: "start", token } : { type: "start" }));
  ws.onmessage = (event) => {
    let m;
    try { m = JSON.parse(event.data); } catch { return; }
    if (m.type === "prompt") {
      if (!camera && !timer) startCamera();  // the first prompt: the token was accepted
      showPrompt(m);
    } else if (m.type === "progress") {
      unanswered = Math.max(0, unanswered - 1);
    } else if (m.type === "outcome") {
      showOutcome(m);
    } else if (m.type === "error") {
      showError(TITLES[m.code] || "The check stopped", `${m.message} (${m.code})`);
    }
  };
  ws.onclose = (event) => {
    ws = null;
    if (!finished) {
      showError("The connection was lost",
                `The connection to ${location.host} closed (code ${event.code}) before the check finished. ` +
                "Ask the service you are signing with for a new link.");
    }
  };
}

async function main() {
  let config;
  try {
    config = await fetchConfig();
  } catch (err) {
    showError("The server cannot be reached", err.message + (err instanceof Unreachable ? " Reload the page to try again." : ""));
    return;
  }
  fps = Math.min(config.max_fps || FPS, FPS);  // web_max_fps below 8 leaves gaps: ceremonies then fail
  if (config.key_required && !token) {
    showError("This page needs a ceremony link",
              "Open the link that the service you are signing with gave you: it ends in #token=…");
    return;
  }
  $("start").hidden = false;
  $("start").addEventListener("click", begin, { once: true });
  setStatus("Press “Start the check” when you are ready.");
}

main();
