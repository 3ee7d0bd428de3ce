// Transport: connecting by WebRTC (falling back to the websocket), the server's messages
// (session, telemetry, errors), frame presentation and latency matching, ping and stats timers.

import { $, CONNECT_TIMEOUT_MS, ICE_GATHER_TIMEOUT_MS, LATENCY_WINDOW, MAX_PATH_POINTS, OFFER_TIMEOUT_MS, PING_INTERVAL_MS, STATS_INTERVAL_MS, TELEMETRY_MATCH_SLACK_MS, WS_HEADER_BYTES, params, state } from "./page_state.js";
import { fetchWithTimeout, showToast, withTimeout } from "./page_util.js";
import { walkPrompt } from "./scene_picker.js";
import { sendSettings, sendVisibility } from "./stage_controls.js";
import { failSession, resetSessionState, setAspect, setConnecting, setTransport, showStage } from "./stage_view.js";

export function connect(startId) {
  state.startId = startId;
  resetSessionState();
  showStage();
  if (params.get("transport") === "ws" || typeof RTCPeerConnection === "undefined") {
    return connectWebSocket(startId);
  }
  // connectWebRTC takes the next epoch; a later leave or reconnect bumps it again.
  const epoch = state.epoch + 1;
  return connectWebRTC(startId).catch((error) => {
    if (epoch !== state.epoch) return;
    if (error instanceof ServerRefusal) {
      failSession(error.message);
      return;
    }
    console.warn("roam: WebRTC failed, falling back to the websocket:", error);
    setConnecting("WebRTC unavailable, using the websocket…");
    return connectWebSocket(startId);
  });
}

export class ServerRefusal extends Error {}

export async function connectWebRTC(startId) {
  const epoch = ++state.epoch;
  setConnecting("Connecting over WebRTC…");
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
  preferCodec(transceiver, params.get("codec"));
  state.input = pc.createDataChannel("input", { ordered: false, maxRetransmits: 0 });
  state.control = pc.createDataChannel("control");
  state.control.onmessage = (event) => epoch === state.epoch && onServerText(event.data);
  // The server ended the session (its peer connection closed, which closes the channels).
  state.control.onclose = () => epoch === state.epoch && state.transport === "webrtc" && failSession(state.lastServerError || "the server ended the session");
  pc.ontrack = (event) => epoch === state.epoch && attachTrack(event);

  const connected = new Promise((resolve, reject) => {
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") resolve();
      if (pc.connectionState === "failed") reject(new Error("peer connection failed"));
      if (epoch === state.epoch && state.transport === "webrtc" && ["failed", "closed"].includes(pc.connectionState)) {
        failSession(`connection ${pc.connectionState}`);
      }
    });
  });

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type, start: startId };
    if (params.get("token")) body.token = params.get("token");
    if (walkPrompt()) body.prompt = walkPrompt();
    const response = await fetchWithTimeout("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }, OFFER_TIMEOUT_MS);
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = answer.error || `server answered ${response.status}`;
      // A 5xx other than "full" may be a broken WebRTC stack on the server; the websocket may still work.
      if (response.status < 500 || response.status === 503) throw new ServerRefusal(message);
      throw new Error(message);
    }
    const closeBeacon = { url: `/api/sessions/${encodeURIComponent(answer.session_id)}/close`, token: answer.close_token };
    if (epoch !== state.epoch) {
      // The page left (or reconnected) while the offer was in flight: the server has admitted a
      // session nobody will connect to; end it now instead of letting it hold a slot until its
      // connect deadline.
      navigator.sendBeacon(closeBeacon.url, closeBeacon.token);
      return;
    }
    state.closeBeacon = closeBeacon;
    if (answer.events) watchSessionEvents(answer.events, epoch);
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    await withTimeout(connected, CONNECT_TIMEOUT_MS, "WebRTC did not connect in time");
  } catch (error) {
    if (state.pc === pc) closeTransport();
    throw error;
  }
  if (epoch !== state.epoch) return;
  setTransport("webrtc");
  startTimers(epoch);
}

// Behind a cluster ingress (docs/serving.md) the answer names an event stream on the ingress: the
// replica that runs this walk talks to the page directly, so when it dies only the ingress can say so
// (ICE would notice only after ~30 s). Its one message is the server's own `error`.
function watchSessionEvents(url, epoch) {
  const events = new EventSource(url);
  state.events = events;
  events.onmessage = (event) => {
    if (epoch !== state.epoch) return;
    onServerText(event.data);
    let message = null;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message && message.type === "error") failSession(String(message.message || "the server ended the session"));
  };
}

export function preferCodec(transceiver, codec) {
  if (!codec || !transceiver.setCodecPreferences || !RTCRtpReceiver.getCapabilities) return;
  const mime = `video/${codec.toLowerCase()}`;
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === mime);
  if (wanted.length === 0) {
    console.warn(`roam: this browser cannot receive ${codec}; keeping the default codec`);
    return;
  }
  transceiver.setCodecPreferences([...wanted, ...codecs.filter((c) => c.mimeType.toLowerCase() !== mime)]);
}

export function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    // Without STUN servers gathering ends quickly; never hang on it.
    setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
  });
}

export function attachTrack(event) {
  const video = $("video");
  video.srcObject = event.streams[0] || new MediaStream([event.track]);
  if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
  video.hidden = false;
  $("canvas").hidden = true;
  video.play().catch(() => {});
  const epoch = state.epoch;
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (now, meta) => {
      if (epoch !== state.epoch) return;
      onWebRTCFramePresented(meta);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
}

export function onWebRTCFramePresented(meta) {
  const received = meta.receiveTime ?? meta.presentationTime ?? performance.now();
  const shown = meta.expectedDisplayTime ?? meta.presentationTime ?? performance.now();
  let inputSeq = null;
  for (const entry of state.telemetryLog) {
    if (entry.arrival > received + TELEMETRY_MATCH_SLACK_MS) break;
    inputSeq = entry.inputSeq;
  }
  onFramePresented(inputSeq, shown);
}

export function connectWebSocket(startId) {
  const epoch = ++state.epoch;
  setConnecting("Connecting over the websocket…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const token = params.get("token");
  const ws = new WebSocket(`${scheme}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  const canvas = $("canvas");
  canvas.hidden = false;
  $("video").hidden = true;
  ws.onopen = () => {
    const hello = { type: "hello", start: startId };
    if (token) hello.token = token;
    if (walkPrompt()) hello.prompt = walkPrompt();
    ws.send(JSON.stringify(hello));
    setTransport("websocket");
    startTimers(epoch);
  };
  ws.onmessage = (event) => {
    if (epoch !== state.epoch) return;
    if (typeof event.data === "string") onServerText(event.data);
    else onWebSocketFrame(event.data);
  };
  ws.onclose = (event) => {
    if (epoch !== state.epoch) return;
    // A refusing server (full, bad token) says why in an `error` message before it closes.
    failSession(event.reason || state.lastServerError || `websocket closed (${event.code})`);
  };
  ws.onerror = () => console.warn("roam: websocket error");
}

export async function onWebSocketFrame(buffer) {
  const header = parseFrameHeader(buffer);
  if (header === null) {
    state.framesDroppedClient += 1;
    return;
  }
  const epoch = state.epoch;
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, header.headerLen)], { type: "image/jpeg" }));
  } catch (error) {
    console.warn("roam: undecodable frame", header.frameId, error);
  }
  if (epoch !== state.epoch) return;
  // Ack even a frame we cannot show, or the server would stall with two frames in flight.
  sendJSON({ type: "ack", frame_id: header.frameId }, "control");
  if (bitmap === null) {
    state.framesDroppedClient += 1;
    return;
  }
  // Decodes finish out of order; never draw an older frame over a newer one.
  if (header.frameId <= state.lastDrawnFrameId) {
    state.framesDroppedClient += 1;
    bitmap.close();
    return;
  }
  state.lastDrawnFrameId = header.frameId;
  const canvas = $("canvas");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    setAspect(bitmap.width, bitmap.height);
  }
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  state.framesDecoded += 1;
  onFramePresented(header.inputSeq, performance.now());
}

export function parseFrameHeader(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < WS_HEADER_BYTES) return null;
  const view = new DataView(buffer);
  const magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2), view.getUint8(3));
  const headerLen = view.getUint16(6, true);
  if (magic !== "ROAM" || view.getUint16(4, true) !== 1 || headerLen < WS_HEADER_BYTES || headerLen >= buffer.byteLength) {
    console.warn("roam: bad frame header", magic, headerLen);
    return null;
  }
  return {
    headerLen,
    frameId: view.getUint32(8, true),
    inputSeq: view.getUint32(12, true),
    serverT: view.getFloat64(16, true),
    width: view.getUint16(24, true),
    height: view.getUint16(26, true),
  };
}

export function onServerText(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    console.warn("roam: malformed message from the server", text);
    return;
  }
  if (message.type === "telemetry") onTelemetry(message);
  else if (message.type === "session") onSession(message);
  else if (message.type === "pong") state.rttMs = performance.now() - message.t;
  else if (message.type === "error") onServerError(String(message.message || "server error"));
}

export function onServerError(text) {
  state.lastServerError = text;
  showToast(text, true);
  // Until recording lands (issue 7) the server notes the consent but records nothing: no REC badge then.
  if (/record/i.test(text) && /not available/i.test(text)) {
    state.recordUnavailable = true;
    $("rec-badge").hidden = true;
  }
}

export function onSession(message) {
  state.session = message;
  if (Number.isFinite(message.pitch_limit)) state.pitchLimit = message.pitch_limit;
  if (message.width && message.height) setAspect(message.width, message.height);
  if (message.model) {
    $("model-name").textContent = message.model;
    $("model-name").hidden = false;
  }
  if (message.prompt) $("model-name").title = `Prompt: ${message.prompt}`;
  if (message.transport && message.transport !== state.transport) setTransport(message.transport);
  // The session message came on the control channel, so it is open: the server now expects pings.
  sendVisibility();
  setConnecting("Generating the first frames…");
}

export function onTelemetry(message) {
  const now = performance.now();
  state.lastTelemetry = message;
  state.telemetryCount += 1;
  if (Number.isFinite(message.input_seq)) {
    state.telemetryLog.push({ arrival: now, inputSeq: message.input_seq });
    if (state.telemetryLog.length > 256) state.telemetryLog.splice(0, state.telemetryLog.length - 256);
  }
  if (!state.synced) syncAngles(message);
  if (Array.isArray(message.position) && message.position.length === 3) {
    const [x, , z] = message.position;
    const last = state.path[state.path.length - 1];
    if (!last || Math.hypot(last[0] - x, last[1] - z) > 0.005) state.path.push([x, z]);
    if (state.path.length > MAX_PATH_POINTS) state.path = state.path.filter((_, i) => i % 2 === 0);
  }
  // Without requestVideoFrameCallback the telemetry's arrival is the best "on screen" time we have.
  if (state.transport === "webrtc" && !("requestVideoFrameCallback" in HTMLVideoElement.prototype)) {
    onFramePresented(message.input_seq, now);
  }
  $("connecting").hidden = true;
}

// The page's absolute angles start from the server's pose (the start pose, or where a rewind went), so
// the first absolute snapshot does not snap the camera to yaw 0. Before that, snapshots carry keys and
// look deltas only.
export function syncAngles(telemetry) {
  for (const axis of ["yaw", "pitch", "roll"]) {
    if (Number.isFinite(telemetry[axis])) state[axis] = telemetry[axis];
  }
  if (state.telemetryCount === 1) state.startAngles = { yaw: state.yaw, pitch: state.pitch, roll: state.roll };
  state.synced = true;
  state.lookDx = 0;
  state.lookDy = 0;
}

export function onFramePresented(inputSeq, shownAt) {
  state.framesPresented += 1;
  state.presentTimes.push(shownAt);
  while (state.presentTimes.length && state.presentTimes[0] < shownAt - 1000) state.presentTimes.shift();
  if (!Number.isFinite(inputSeq)) return;
  while (state.pending.length && state.pending[0].seq <= inputSeq) {
    const { t } = state.pending.shift();
    const sample = shownAt - t;
    if (sample < 0) continue;
    state.lastLatencyMs = sample;
    state.latencies.push(sample);
    if (state.latencies.length > LATENCY_WINDOW) state.latencies.shift();
  }
}

export function sendJSON(message, channel) {
  const text = JSON.stringify(message);
  if (state.transport === "websocket") {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(text);
    return;
  }
  const dc = channel === "input" ? state.input : state.control;
  if (!dc || dc.readyState !== "open") return;
  // Snapshots are idempotent: when the channel backs up, skip this one, the next carries everything.
  if (channel === "input" && dc.bufferedAmount > 64 * 1024) return;
  dc.send(text);
}

export function startTimers(epoch) {
  stopTimers();
  sendSettings();
  if (state.recording) sendJSON({ type: "record", on: true }, "control");
  state.timers.push(setInterval(() => epoch === state.epoch && sendJSON({ type: "ping", t: performance.now() }, "control"), PING_INTERVAL_MS));
  if (state.transport === "webrtc") state.timers.push(setInterval(() => epoch === state.epoch && pollStats(), STATS_INTERVAL_MS));
}

export function stopTimers() {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
}

export async function pollStats() {
  const report = await inboundVideoStats();
  if (report === null) return;
  state.framesDecoded = report.framesDecoded;
  state.framesDroppedClient = report.framesDropped;
  state.statsFps = report.framesPerSecond;
  state.codec = report.codec;
}

// The inbound video's getStats() counters (null without a peer connection or before media flows).
export async function inboundVideoStats() {
  if (!state.pc) return null;
  const stats = await state.pc.getStats();
  let found = null;
  stats.forEach((report) => {
    if (report.type !== "inbound-rtp" || report.kind !== "video") return;
    found = {
      framesDecoded: report.framesDecoded ?? 0,
      framesDropped: report.framesDropped ?? 0,
      framesPerSecond: report.framesPerSecond ?? null,
      codec: stats.get(report.codecId)?.mimeType?.replace("video/", "") ?? null,
    };
  });
  return found;
}

export function closeTransport() {
  stopTimers();
  // Closing a connected peer connection tells the server; closing one that never connected tells
  // it nothing, and the session would hold its slot until the server's connect deadline.
  if (state.closeBeacon && state.transport !== "webrtc") {
    navigator.sendBeacon(state.closeBeacon.url, state.closeBeacon.token);
  }
  state.closeBeacon = null;
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  if (state.pc) {
    state.pc.close();
    state.pc = null;
    state.input = null;
    state.control = null;
  }
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
    state.ws = null;
  }
  $("video").srcObject = null;
}
