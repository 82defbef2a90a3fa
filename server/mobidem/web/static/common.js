// Shared by mobidem's pages (the live view now; the ceremony page later): the server's
// configuration, the camera, the socket, and the status line. Plain modern JavaScript, no library.

export function setStatus(text, kind = "info") {
  const el = document.getElementById("status");
  el.textContent = text;
  el.dataset.kind = kind;  // info | ok | error (style.css colours it)
  el.setAttribute("role", kind === "error" ? "alert" : "status");
}

export class Unreachable extends Error {}

// What the page must know before opening the socket (no secrets): whether a key is needed, the frame rate.
export async function fetchConfig() {
  let response;
  try {
    response = await fetch("config.json", { cache: "no-store" });
  } catch (err) {
    throw new Unreachable(`Cannot reach the mobidem server at ${location.host}: is it running?`);
  }
  if (!response.ok) throw new Unreachable(`The mobidem server at ${location.host} answered ${response.status}.`);
  return response.json();
}

// A message a person can act on for each way getUserMedia fails.
export function cameraProblem(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera access was denied. Allow the camera for this site (the camera icon in the address bar) and reload the page.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera was found on this device.";
    case "NotReadableError":
    case "AbortError":
      return "The camera is in use by another application, or could not be started.";
    default:
      return `The camera could not be opened (${(err && err.name) || err}).`;
  }
}

export async function openCamera(video) {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("This page needs a secure connection (https://) or localhost to use the camera.");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } },
    });
  } catch (err) {
    throw new Error(cameraProblem(err));
  }
  video.srcObject = stream;
  await video.play().catch(() => {});  // autoplay + muted: play() may resolve late; frames come anyway
  return stream;
}

export function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}
