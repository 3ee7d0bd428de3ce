// The stage's toolbar and settings panel: reset, rewind, record, leave; visibility and goodbye notes.

import { setAngles } from "./input.js";
import { $, REWIND_SECONDS, state } from "./page_state.js";
import { failSession, leaveSession } from "./stage_view.js";
import { sendJSON } from "./transport.js";

export function bindButtons() {
  $("reset-button").addEventListener("click", () => {
    sendJSON({ type: "reset" }, "control");
    const { yaw, pitch, roll } = state.startAngles;
    setAngles(yaw, pitch, roll);
    state.path = [];
  });
  $("rewind-button").addEventListener("click", () => {
    sendJSON({ type: "rewind", seconds: REWIND_SECONDS }, "control");
    // The server turns the camera back too: adopt its angles again instead of overriding them.
    state.synced = false;
  });
  $("record-toggle").addEventListener("change", (event) => {
    state.recording = event.target.checked;
    $("rec-badge").hidden = !state.recording || state.recordUnavailable;
    sendJSON({ type: "record", on: state.recording }, "control");
  });
  $("leave-button").addEventListener("click", leaveSession);
  $("settings-button").addEventListener("click", () => toggleSettings($("settings").hidden));
  const onSettings = () => {
    const settings = state.settings;
    settings.sensitivity = Number($("sensitivity").value);
    settings.walkSpeed = Number($("speed").value);
    settings.invertY = $("invert-y").checked;
    settings.fly = $("fly").checked;
    $("sensitivity-value").textContent = settings.sensitivity.toFixed(2);
    $("speed-value").textContent = settings.walkSpeed.toFixed(1);
    sendSettings();
  };
  for (const id of ["sensitivity", "speed", "invert-y", "fly"]) $(id).addEventListener("input", onSettings);
  // Space (fly up) must not press the last clicked button again: hand the focus back to the view.
  for (const id of ["reset-button", "rewind-button", "record-toggle"]) $(id).addEventListener("click", () => $("viewport").focus());
}

export function toggleSettings(open) {
  $("settings").hidden = !open;
  $("settings-button").setAttribute("aria-expanded", String(open));
}

export function sendSettings() {
  const { walkSpeed, sensitivity, fly } = state.settings;
  sendJSON({ type: "settings", walk_speed: walkSpeed, look_sensitivity: sensitivity, fly }, "control");
}

// The first note also tells the server this page pings, so its silence means it is gone.
export function sendVisibility() {
  sendJSON({ type: "visibility", hidden: document.hidden }, "control");
}

// pagehide (tab closed, navigation, bfcache): end the session now rather than when the server notices.
// A data channel message may not leave an unloading page; a beacon does.
// (Mid-connect, failSession's closeTransport sends the beacon.)
export function sayGoodbye() {
  if (state.transport === "none" && !state.pc && !state.ws) return;
  sendJSON({ type: "close" }, "control");
  if (state.closeBeacon && state.transport === "webrtc") {
    navigator.sendBeacon(state.closeBeacon.url, state.closeBeacon.token);
  }
  failSession("left the page");
}
