// roam page: start picker, WebRTC (or websocket) session, keyboard/mouse input, HUD and minimap.
//
// The server owns the pose. The page integrates absolute yaw/pitch/roll in degrees and sends idempotent
// input snapshots (docs/protocol.md), so a lost packet on the unreliable `input` channel does no harm:
// the next snapshot carries the whole state again. Snapshots are coalesced per animation frame (at most
// 60 Hz). After a change the unchanged state is re-sent every HEARTBEAT_MS for HEARTBEAT_FOR_MS, in
// case the change was lost; then the page falls silent, so the server can tell the camera stands still
// and pause generation (a fresh seq counts as new input there).
//
// Motion-to-photon latency: every snapshot that changes the input is remembered as (seq, time sent).
// When a frame whose input_seq >= seq is presented, the sample is presented_time - time_sent, both on
// the page's clock. Websocket frames carry input_seq in their header; WebRTC frames are matched to the
// newest telemetry that arrived before the frame was received (telemetry is sent with each frame).
//
// Liveness (docs/protocol.md): the page pings every PING_INTERVAL_MS and tells the server when it is
// hidden, so a server that hears nothing for a few seconds frees the slot. On pagehide it says goodbye
// twice: a `close` note on the control channel and a beacon with the session's close token.
//
// Modules (web/js/): page_state (constants, state), transport, input, stage_controls, stage_view,
// hud_minimap, scene_picker, page_util, campaign_view; this file wires them together and exposes the test hook.

import { campaignState, loadCampaign } from "./js/campaign_view.js";
import { addLook, bindInput, keyDown, keyMask, keyUp, releaseAll, tick } from "./js/input.js";
import { $, state } from "./js/page_state.js";
import { median } from "./js/page_util.js";
import { loadModel, loadScenes, uploadImage } from "./js/scene_picker.js";
import { bindButtons } from "./js/stage_controls.js";
import { connect, inboundVideoStats } from "./js/transport.js";

// Test hook: the browser tests drive the page through this instead of real pointer lock.
window.__roam = {
  state: () => ({
    transport: state.transport,
    sessionId: state.session?.session_id ?? null,
    session: state.session,
    framesDecoded: state.framesDecoded,
    framesPresented: state.framesPresented,
    lastTelemetry: state.lastTelemetry,
    telemetryCount: state.telemetryCount,
    latencyMs: median(state.latencies),
    lastLatencyMs: state.lastLatencyMs,
    latencySamples: [...state.latencies],
    seq: state.seq,
    yaw: state.yaw, pitch: state.pitch, roll: state.roll,
    keys: keyMask(),
    path: state.path.map((p) => [...p]),
    error: state.error,
    closeBeacon: state.closeBeacon,
  }),
  connect,
  press: keyDown,
  release: keyUp,
  releaseAll,
  look: addLook,
  // The inbound video's getStats() counters, read fresh (WebRTC only; null otherwise).
  stats: inboundVideoStats,
  // The campaign view's participant, task and whether recording is bound (campaign mode only).
  campaign: campaignState,
};

bindInput();
bindButtons();
$("upload-input").addEventListener("change", (event) => uploadImage(event.target.files[0]));
loadModel();
loadScenes();
loadCampaign();
requestAnimationFrame(tick);
