// The stage's lifecycle on screen: entering, leaving and failing a session, the transport chip,
// the connecting overlay and the view's aspect ratio.

import { releaseAll } from "./input.js";
import { $, state } from "./page_state.js";
import { closeTransport } from "./transport.js";

export function leaveSession() {
  state.epoch += 1;
  closeTransport();
  releaseAll();
  setTransport("none");
  state.session = null;
  if (document.pointerLockElement) document.exitPointerLock();
  $("stage").hidden = true;
  $("picker").hidden = false;
}

export function failSession(message) {
  state.error = message;
  closeTransport();
  releaseAll();
  setTransport("none");
  state.session = null;
  const el = $("stage-error");
  el.textContent = `Disconnected: ${message}`;
  el.hidden = false;
  setConnecting(`Disconnected: ${message}`, true);
}

export function resetSessionState() {
  Object.assign(state, {
    session: null, synced: false, lookDx: 0, lookDy: 0, seq: 0, lastSentAt: -Infinity, lastSentKey: "", lastChangeAt: -Infinity,
    pending: [], latencies: [], lastLatencyMs: null, telemetryLog: [], lastTelemetry: null, telemetryCount: 0,
    framesDecoded: 0, framesPresented: 0, framesDroppedClient: 0, presentTimes: [], lastDrawnFrameId: -1,
    rttMs: null, path: [], error: null, closeBeacon: null, lastServerError: null, yaw: 0, pitch: 0, roll: 0, statsFps: null, codec: null, lastShownAt: null,
  });
  $("stage-error").hidden = true;
}

export function setTransport(transport) {
  state.transport = transport;
  const chip = $("transport-chip");
  chip.dataset.transport = transport;
  chip.textContent = { webrtc: "WebRTC", websocket: "websocket", none: "offline" }[transport] ?? transport;
  $("hud-transport").textContent = chip.textContent;
}

export function showStage() {
  $("picker").hidden = true;
  $("stage").hidden = false;
  $("viewport").focus();
}

export function setConnecting(text, stuck = false) {
  $("connecting").hidden = false;
  $("connecting-text").textContent = text;
  $("connecting").querySelector(".spinner").hidden = stuck;
}

export function setAspect(width, height) {
  $("stage").style.setProperty("--aspect", `${width} / ${height}`);
  $("stage").style.setProperty("--ratio", String(width / height));
}
