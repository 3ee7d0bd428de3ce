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

const CONNECT_TIMEOUT_MS = 4000;
const OFFER_TIMEOUT_MS = 10000;
const ICE_GATHER_TIMEOUT_MS = 2000;
const MAX_UPLOAD_BYTES = 10 * 1024 * 1024;
const SEND_INTERVAL_MS = 1000 / 60;
const HEARTBEAT_MS = 250;
const HEARTBEAT_FOR_MS = 1000;
const IDLE_AFTER_MS = 2500;
// The server ends a shown page's session after 3 s without a message: ping well within that.
const PING_INTERVAL_MS = 1000;
const STATS_INTERVAL_MS = 500;
const TELEMETRY_MATCH_SLACK_MS = 10;
const ARROW_RATE_DEG_S = 90;
const ROLL_RATE_DEG_S = 45;
const MAX_TICK_S = 0.25;
const DRAG_CLICK_PX = 4;
const HINT_FADE_MS = 8000;
const DEFAULT_PITCH_LIMIT_DEG = 60;
const LATENCY_WINDOW = 60;
const MAX_PENDING_INPUTS = 600;
const MAX_PATH_POINTS = 5000;
const MINIMAP_MIN_EXTENT_M = 4;
const DEFAULT_HFOV_DEG = 60;
const REWIND_SECONDS = 3;
const WS_HEADER_BYTES = 32;

// controls.integrator.Key
const KEY = {
  FORWARD: 1, BACK: 2, LEFT: 4, RIGHT: 8, UP: 16, DOWN: 32,
  ROLL_LEFT: 64, ROLL_RIGHT: 128, SPRINT: 256, SLOW: 512,
};

const MOVE_CODES = {
  KeyW: KEY.FORWARD, KeyS: KEY.BACK, KeyA: KEY.LEFT, KeyD: KEY.RIGHT,
  ControlLeft: KEY.SLOW, ControlRight: KEY.SLOW, AltLeft: KEY.SLOW, AltRight: KEY.SLOW,
};
const SHIFT_CODES = new Set(["ShiftLeft", "ShiftRight"]);
// Arrows and Q/E turn the page's absolute angles. Q/E are deliberately not sent as ROLL_LEFT/RIGHT bits:
// the server's integrator would turn its roll target by those bits on top of the absolute roll we send.
const ANGLE_CODES = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "KeyQ", "KeyE"]);
const HANDLED_CODES = new Set([...Object.keys(MOVE_CODES), ...SHIFT_CODES, ...ANGLE_CODES, "Space"]);

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const state = {
  transport: "none", // "webrtc" | "websocket" | "none"
  startId: null,
  session: null, // the server's `session` message
  pc: null,
  input: null, // RTCDataChannel
  control: null, // RTCDataChannel
  ws: null,
  epoch: 0, // bumped on every (re)connect so callbacks of an old connection do nothing
  held: new Set(),
  settings: { sensitivity: 0.1, invertY: false, walkSpeed: 1.4, fly: false },
  pitchLimit: DEFAULT_PITCH_LIMIT_DEG,
  yaw: 0, pitch: 0, roll: 0,
  startAngles: { yaw: 0, pitch: 0, roll: 0 },
  synced: false, // angles adopted from the server's pose; until then snapshots carry look deltas instead
  lookDx: 0, lookDy: 0,
  seq: 0,
  lastSentAt: -Infinity,
  lastSentKey: "",
  lastChangeAt: -Infinity,
  pending: [], // [{seq, t}] input changes not yet seen on screen
  latencies: [],
  lastLatencyMs: null,
  telemetryLog: [], // [{arrival, inputSeq}] for matching WebRTC frames
  lastTelemetry: null,
  telemetryCount: 0,
  framesDecoded: 0, // getStats framesDecoded (WebRTC) or frames drawn (websocket)
  framesPresented: 0,
  framesDroppedClient: 0,
  presentTimes: [],
  lastDrawnFrameId: -1,
  rttMs: null,
  statsFps: null,
  codec: null,
  lastShownAt: null,
  path: [],
  recording: false,
  recordUnavailable: false,
  lastServerError: null,
  error: null,
  lastTick: null,
  timers: [],
  closeBeacon: null, // {url, token}: POSTing the token there ends this WebRTC session (pagehide)
  events: null, // EventSource of the walk's events on a cluster ingress (answer.events), else null
  // The mouse looks around only once the view holds the pointer lock: until the user has taken it
  // once, the hint saying so stays up.
  pointerLockTaken: false,
};

function connect(startId) {
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

class ServerRefusal extends Error {}

async function connectWebRTC(startId) {
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
    if (epoch !== state.epoch) return;
    state.closeBeacon = { url: `/api/sessions/${encodeURIComponent(answer.session_id)}/close`, token: answer.close_token };
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

function preferCodec(transceiver, codec) {
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

function iceGatheringComplete(pc) {
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

function attachTrack(event) {
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

function onWebRTCFramePresented(meta) {
  const received = meta.receiveTime ?? meta.presentationTime ?? performance.now();
  const shown = meta.expectedDisplayTime ?? meta.presentationTime ?? performance.now();
  let inputSeq = null;
  for (const entry of state.telemetryLog) {
    if (entry.arrival > received + TELEMETRY_MATCH_SLACK_MS) break;
    inputSeq = entry.inputSeq;
  }
  onFramePresented(inputSeq, shown);
}

function connectWebSocket(startId) {
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

async function onWebSocketFrame(buffer) {
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

function parseFrameHeader(buffer) {
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

function onServerText(text) {
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

function onServerError(text) {
  state.lastServerError = text;
  showToast(text, true);
  // Until recording lands (issue 7) the server notes the consent but records nothing: no REC badge then.
  if (/record/i.test(text) && /not available/i.test(text)) {
    state.recordUnavailable = true;
    $("rec-badge").hidden = true;
  }
}

function onSession(message) {
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

function onTelemetry(message) {
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
function syncAngles(telemetry) {
  for (const axis of ["yaw", "pitch", "roll"]) {
    if (Number.isFinite(telemetry[axis])) state[axis] = telemetry[axis];
  }
  if (state.telemetryCount === 1) state.startAngles = { yaw: state.yaw, pitch: state.pitch, roll: state.roll };
  state.synced = true;
  state.lookDx = 0;
  state.lookDy = 0;
}

function onFramePresented(inputSeq, shownAt) {
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

function sendJSON(message, channel) {
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

function keyMask() {
  let mask = 0;
  for (const code of state.held) {
    if (code in MOVE_CODES) mask |= MOVE_CODES[code];
    else if (SHIFT_CODES.has(code)) mask |= state.settings.fly ? KEY.DOWN : KEY.SPRINT;
    else if (code === "Space" && state.settings.fly) mask |= KEY.UP;
  }
  return mask;
}

function sendInput(now) {
  const snapshot = { type: "input", seq: state.seq + 1, t: now, keys: keyMask() };
  if (state.synced) {
    Object.assign(snapshot, { yaw: round(state.yaw, 3), pitch: round(state.pitch, 3), roll: round(state.roll, 3) });
  } else if (state.lookDx || state.lookDy) {
    Object.assign(snapshot, { dx: round(state.lookDx, 2), dy: round(state.lookDy, 2) });
  }
  const key = `${snapshot.keys}|${snapshot.yaw}|${snapshot.pitch}|${snapshot.roll}|${snapshot.dx}|${snapshot.dy}`;
  const changed = key !== state.lastSentKey;
  if (!changed && (now - state.lastSentAt < HEARTBEAT_MS || now - state.lastChangeAt > HEARTBEAT_FOR_MS)) return;
  state.seq = snapshot.seq;
  sendJSON(snapshot, "input");
  state.lastSentAt = now;
  state.lastSentKey = key;
  state.lookDx = 0;
  state.lookDy = 0;
  if (changed) {
    state.lastChangeAt = now;
    state.pending.push({ seq: snapshot.seq, t: now });
    if (state.pending.length > MAX_PENDING_INPUTS) state.pending.shift();
  }
}

function tick(now) {
  requestAnimationFrame(tick);
  // A stalled tab must not spin the view by a whole stall's worth of held arrow keys.
  const dt = state.lastTick === null ? 0 : Math.min((now - state.lastTick) / 1000, MAX_TICK_S);
  state.lastTick = now;
  integrateHeldAngles(dt);
  if (state.transport !== "none" && state.session !== null) {
    if (now - state.lastSentAt >= SEND_INTERVAL_MS - 1) sendInput(now);
  }
  renderHud(now);
  drawMinimap();
}

function integrateHeldAngles(dt) {
  const held = state.held;
  const axis = (plus, minus) => (held.has(plus) ? 1 : 0) - (held.has(minus) ? 1 : 0);
  const yawRate = axis("ArrowRight", "ArrowLeft") * ARROW_RATE_DEG_S;
  const pitchRate = axis("ArrowUp", "ArrowDown") * ARROW_RATE_DEG_S;
  const rollRate = axis("KeyE", "KeyQ") * ROLL_RATE_DEG_S;
  if (yawRate || pitchRate || rollRate) setAngles(state.yaw + yawRate * dt, state.pitch + pitchRate * dt, state.roll + rollRate * dt);
}

function setAngles(yaw, pitch, roll) {
  state.yaw = wrapDegrees(yaw);
  state.pitch = Math.max(-state.pitchLimit, Math.min(state.pitchLimit, pitch));
  state.roll = wrapDegrees(roll);
}

function addLook(dx, dy) {
  if (!Number.isFinite(dx) || !Number.isFinite(dy)) return;
  const s = state.settings.sensitivity;
  const sign = state.settings.invertY ? -1 : 1;
  setAngles(state.yaw + s * dx, state.pitch - sign * s * dy, state.roll);
  if (!state.synced) {
    state.lookDx += dx;
    state.lookDy += sign * dy;
  }
}

function keyDown(code) {
  if (!HANDLED_CODES.has(code) || state.held.has(code)) return;
  state.held.add(code);
  markKey(code, true);
}

function keyUp(code) {
  if (!state.held.delete(code)) return;
  markKey(code, false);
}

// Also sends the release at once: on blur or a hidden tab animation frames stop, and the server would
// otherwise keep walking on the last snapshot.
function releaseAll() {
  if (state.held.size === 0) return;
  for (const code of [...state.held]) keyUp(code);
  if (state.transport !== "none" && state.session !== null) sendInput(performance.now());
}

function markKey(code, down) {
  const el = document.querySelector(`#keys [data-key="${code}"]`);
  if (el) el.classList.toggle("down", down);
}

function isTyping(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName) && target.type !== "checkbox");
}

function bindInput() {
  window.addEventListener("keydown", (event) => {
    if (event.code === "Escape" && !$("settings").hidden) toggleSettings(false);
    if (state.transport === "none" || isTyping(event.target) || !HANDLED_CODES.has(event.code)) return;
    event.preventDefault();
    if (!event.repeat) keyDown(event.code);
  });
  window.addEventListener("keyup", (event) => {
    if (!HANDLED_CODES.has(event.code)) return;
    keyUp(event.code);
  });
  window.addEventListener("blur", releaseAll);
  // Ctrl (slow) + W closes the tab in most browsers and a page cannot stop it; ask before leaving a walk.
  window.addEventListener("beforeunload", (event) => {
    if (state.transport === "none") return;
    event.preventDefault();
    event.returnValue = "";
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) releaseAll();
    sendVisibility();
  });
  window.addEventListener("pagehide", sayGoodbye);

  const viewport = $("viewport");
  let dragging = false;
  let dragged = 0; // px moved by the current or last drag
  // A plain click locks the pointer; the click that ends a drag-to-look does not.
  viewport.addEventListener("click", () => dragged < DRAG_CLICK_PX && requestLock(viewport));
  viewport.addEventListener("pointerdown", (event) => {
    if (document.pointerLockElement === viewport || event.button !== 0) return;
    dragging = true;
    dragged = 0;
    viewport.setPointerCapture?.(event.pointerId);
  });
  viewport.addEventListener("pointerup", () => { dragging = false; });
  viewport.addEventListener("pointercancel", () => { dragging = false; });
  viewport.addEventListener("pointermove", (event) => {
    if (dragging) dragged += Math.abs(event.movementX) + Math.abs(event.movementY);
    if (document.pointerLockElement === viewport || dragging) addLook(event.movementX, event.movementY);
  });
  document.addEventListener("pointerlockchange", () => {
    const locked = document.pointerLockElement === viewport;
    viewport.classList.toggle("locked", locked);
    if (locked) {
      state.pointerLockTaken = true;
    } else {
      dragging = false;
      // Released (Esc): the hint shows again for a while, then fades.
      state.hintShownAt = null;
      $("hint").classList.remove("faded");
    }
  });
}

// Raw (unaccelerated) mouse movement where the browser supports it; some refuse the option, so retry.
async function requestLock(element) {
  if (state.transport === "none" || document.pointerLockElement === element || !element.requestPointerLock) return;
  try {
    await element.requestPointerLock({ unadjustedMovement: true });
  } catch {
    try {
      await element.requestPointerLock();
    } catch (error) {
      console.info("roam: pointer lock unavailable, drag to look instead", error);
    }
  }
}

function bindButtons() {
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

function toggleSettings(open) {
  $("settings").hidden = !open;
  $("settings-button").setAttribute("aria-expanded", String(open));
}

function sendSettings() {
  const { walkSpeed, sensitivity, fly } = state.settings;
  sendJSON({ type: "settings", walk_speed: walkSpeed, look_sensitivity: sensitivity, fly }, "control");
}

// The first note also tells the server this page pings, so its silence means it is gone.
function sendVisibility() {
  sendJSON({ type: "visibility", hidden: document.hidden }, "control");
}

// pagehide (tab closed, navigation, bfcache): end the session now rather than when the server notices.
// A data channel message may not leave an unloading page; a beacon does.
function sayGoodbye() {
  if (state.transport === "none") return;
  sendJSON({ type: "close" }, "control");
  if (state.closeBeacon && state.transport === "webrtc") {
    navigator.sendBeacon(state.closeBeacon.url, state.closeBeacon.token);
  }
  failSession("left the page");
}

function startTimers(epoch) {
  stopTimers();
  sendSettings();
  if (state.recording) sendJSON({ type: "record", on: true }, "control");
  state.timers.push(setInterval(() => epoch === state.epoch && sendJSON({ type: "ping", t: performance.now() }, "control"), PING_INTERVAL_MS));
  if (state.transport === "webrtc") state.timers.push(setInterval(() => epoch === state.epoch && pollStats(), STATS_INTERVAL_MS));
}

function stopTimers() {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
}

async function pollStats() {
  const report = await inboundVideoStats();
  if (report === null) return;
  state.framesDecoded = report.framesDecoded;
  state.framesDroppedClient = report.framesDropped;
  state.statsFps = report.framesPerSecond;
  state.codec = report.codec;
}

// The inbound video's getStats() counters (null without a peer connection or before media flows).
async function inboundVideoStats() {
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

function closeTransport() {
  stopTimers();
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

function leaveSession() {
  state.epoch += 1;
  closeTransport();
  releaseAll();
  setTransport("none");
  state.session = null;
  if (document.pointerLockElement) document.exitPointerLock();
  $("stage").hidden = true;
  $("picker").hidden = false;
}

function failSession(message) {
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

function resetSessionState() {
  Object.assign(state, {
    session: null, synced: false, lookDx: 0, lookDy: 0, seq: 0, lastSentAt: -Infinity, lastSentKey: "", lastChangeAt: -Infinity,
    pending: [], latencies: [], lastLatencyMs: null, telemetryLog: [], lastTelemetry: null, telemetryCount: 0,
    framesDecoded: 0, framesPresented: 0, framesDroppedClient: 0, presentTimes: [], lastDrawnFrameId: -1,
    rttMs: null, path: [], error: null, closeBeacon: null, lastServerError: null, yaw: 0, pitch: 0, roll: 0, statsFps: null, codec: null, lastShownAt: null,
  });
  $("stage-error").hidden = true;
}

function setTransport(transport) {
  state.transport = transport;
  const chip = $("transport-chip");
  chip.dataset.transport = transport;
  chip.textContent = { webrtc: "WebRTC", websocket: "websocket", none: "offline" }[transport] ?? transport;
  $("hud-transport").textContent = chip.textContent;
}

function showStage() {
  $("picker").hidden = true;
  $("stage").hidden = false;
  $("viewport").focus();
}

function setConnecting(text, stuck = false) {
  $("connecting").hidden = false;
  $("connecting-text").textContent = text;
  $("connecting").querySelector(".spinner").hidden = stuck;
}

function setAspect(width, height) {
  $("stage").style.setProperty("--aspect", `${width} / ${height}`);
  $("stage").style.setProperty("--ratio", String(width / height));
}

function renderHud(now) {
  if (state.transport === "none" && state.session === null && state.lastTelemetry === null) return;
  const t = state.lastTelemetry;
  if (state.presentTimes.length) state.lastShownAt = state.presentTimes[state.presentTimes.length - 1];
  while (state.presentTimes.length && state.presentTimes[0] < now - 1000) state.presentTimes.shift();
  const fps = state.presentTimes.length >= 2 ? state.presentTimes.length : state.statsFps;
  // The server pauses a standing camera (nothing new to show); say so rather than "0 fps".
  const lastShown = state.lastShownAt ?? -Infinity;
  const idle = state.framesPresented > 0 && state.held.size === 0 && now - lastShown > IDLE_AFTER_MS && now - state.lastChangeAt > IDLE_AFTER_MS;
  setText("hud-fps", idle ? "idle" : fps == null ? "–" : `${fps}`);
  setText("hud-chunk", t && Number.isFinite(t.chunk_ms) ? `${Math.round(t.chunk_ms)} ms` : "–");
  const latency = median(state.latencies);
  const latencyEl = $("hud-latency");
  setText("hud-latency", latency === null ? "–" : `${Math.round(latency)} ms`);
  latencyEl.className = "hud-value " + (latency === null ? "" : latency < 300 ? "good" : "slow");
  setText("hud-rtt", state.rttMs === null ? "–" : `${state.rttMs.toFixed(1)} ms`);
  const serverDrops = t && Number.isFinite(t.drops) ? t.drops : 0;
  setText("hud-drops", `${serverDrops + state.framesDroppedClient}`);
  setText("hud-codec", state.transport === "websocket" ? "JPEG" : state.codec ?? "–");
  if (t && Array.isArray(t.position)) {
    setText("hud-x", fmt(t.position[0], 2));
    setText("hud-y", fmt(t.position[1], 2));
    setText("hud-z", fmt(t.position[2], 2));
  }
  setText("hud-yaw", fmt(t?.yaw ?? state.yaw, 1));
  setText("hud-pitch", fmt(t?.pitch ?? state.pitch, 1));
  setText("hud-roll", fmt(t?.roll ?? state.roll, 1));
  if (state.pointerLockTaken && now - (state.hintShownAt ??= now) > HINT_FADE_MS) $("hint").classList.add("faded");
}

// Top-down view of the x/z plane (+z, the start heading, points up the map); yaw > 0 turns right.
function drawMinimap() {
  const canvas = $("minimap");
  const ctx = canvas.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  const size = canvas.clientWidth || 180;
  if (canvas.width !== Math.round(size * dpr)) {
    canvas.width = Math.round(size * dpr);
    canvas.height = Math.round(size * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, size, size);
  const path = state.path;
  const current = path[path.length - 1] ?? [0, 0];
  let minX = current[0], maxX = current[0], minZ = current[1], maxZ = current[1];
  for (const [x, z] of path) {
    minX = Math.min(minX, x); maxX = Math.max(maxX, x);
    minZ = Math.min(minZ, z); maxZ = Math.max(maxZ, z);
  }
  const extent = Math.max(MINIMAP_MIN_EXTENT_M, maxX - minX, maxZ - minZ) * 1.25;
  const scale = size / extent; // px per metre
  const cx = (minX + maxX) / 2, cz = (minZ + maxZ) / 2;
  const toScreen = ([x, z]) => [size / 2 + (x - cx) * scale, size / 2 - (z - cz) * scale];

  const gridM = niceStep(extent / 4);
  ctx.strokeStyle = "rgba(255,255,255,0.06)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let g = Math.floor((cx - extent) / gridM) * gridM; g <= cx + extent; g += gridM) {
    const [sx] = toScreen([g, 0]);
    ctx.moveTo(sx, 0); ctx.lineTo(sx, size);
  }
  for (let g = Math.floor((cz - extent) / gridM) * gridM; g <= cz + extent; g += gridM) {
    const [, sy] = toScreen([0, g]);
    ctx.moveTo(0, sy); ctx.lineTo(size, sy);
  }
  ctx.stroke();
  $("minimap-scale").textContent = `grid ${gridM} m`;

  if (path.length > 1) {
    const gradient = ctx.createLinearGradient(...toScreen(path[0]), ...toScreen(current));
    gradient.addColorStop(0, "rgba(129,140,248,0.5)");
    gradient.addColorStop(1, "rgba(94,234,212,1)");
    ctx.strokeStyle = gradient;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    path.forEach((p, i) => (i === 0 ? ctx.moveTo(...toScreen(p)) : ctx.lineTo(...toScreen(p))));
    ctx.stroke();
  }
  if (path.length > 0) {
    const [sx0, sy0] = toScreen(path[0]);
    ctx.fillStyle = "rgba(129,140,248,0.9)";
    ctx.beginPath();
    ctx.arc(sx0, sy0, 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  const heading = ((state.lastTelemetry?.yaw ?? state.yaw) * Math.PI) / 180;
  const [sx, sy] = toScreen(current);
  ctx.save();
  ctx.translate(sx, sy);
  ctx.rotate(heading);
  // The view cone (the stream's horizontal field of view when known) makes the heading easy to read.
  const halfFov = ((state.session?.hfov_deg ?? DEFAULT_HFOV_DEG) * Math.PI) / 360;
  const cone = ctx.createRadialGradient(0, 0, 0, 0, 0, 46);
  cone.addColorStop(0, "rgba(94,234,212,0.35)");
  cone.addColorStop(1, "rgba(94,234,212,0)");
  ctx.fillStyle = cone;
  ctx.beginPath();
  ctx.moveTo(0, 0);
  ctx.arc(0, 0, 46, -Math.PI / 2 - halfFov, -Math.PI / 2 + halfFov);
  ctx.closePath();
  ctx.fill();
  ctx.fillStyle = "#5eead4";
  ctx.shadowColor = "rgba(94,234,212,0.8)";
  ctx.shadowBlur = 8;
  ctx.beginPath();
  ctx.moveTo(0, -11);
  ctx.lineTo(7, 7);
  ctx.lineTo(0, 3);
  ctx.lineTo(-7, 7);
  ctx.closePath();
  ctx.fill();
  ctx.restore();
}

async function loadScenes() {
  const grid = $("scene-grid");
  const skeletons = [0, 1, 2].map(() => {
    const el = document.createElement("div");
    el.className = "card skeleton";
    grid.prepend(el);
    return el;
  });
  try {
    const response = await fetch("/api/scenes");
    if (!response.ok) throw new Error(`GET /api/scenes answered ${response.status}`);
    const scenes = await response.json();
    if (!Array.isArray(scenes)) throw new Error("GET /api/scenes did not return a list");
    const upload = grid.querySelector(".upload-card");
    for (const scene of scenes) grid.insertBefore(sceneCard(scene), upload);
  } catch (error) {
    showPickerError(`Could not load the start scenes: ${error.message}`);
  } finally {
    skeletons.forEach((el) => el.remove());
    grid.setAttribute("aria-busy", "false");
  }
}

// The prompt typed on the page (a model with a text encoder); "" lets the server use the scene's own.
function walkPrompt() {
  const field = $("prompt-input");
  return field && !$("prompt-row").hidden ? field.value.trim() : "";
}

// GET /api/model: a model that takes prompts gets the prompt field, with the server's default as its placeholder.
async function loadModel() {
  try {
    const response = await fetch("/api/model");
    if (!response.ok) return;
    const model = await response.json();
    if (!model.prompt || !model.prompt.enabled) return;
    const field = $("prompt-input");
    field.maxLength = model.prompt.max_chars || field.maxLength;
    field.placeholder = model.prompt.default || "Empty: each scene's own prompt (hover a scene to see it)";
    $("prompt-row").hidden = false;
  } catch (error) {
    console.warn("roam: GET /api/model failed:", error);
  }
}

function sceneCard(scene) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "card scene-card";
  card.dataset.sceneId = scene.id;
  const img = document.createElement("img");
  img.alt = "";
  img.loading = "lazy";
  img.src = scene.thumbnail;
  const body = document.createElement("span");
  body.className = "card-body";
  const title = document.createElement("span");
  title.className = "card-title";
  title.textContent = scene.name ?? scene.id;
  const sub = document.createElement("span");
  sub.className = "card-sub";
  sub.textContent = scene.id;
  body.append(title, sub);
  card.append(img, body);
  if (scene.prompt) card.title = `Prompt: ${scene.prompt}`;
  card.addEventListener("click", () => connect(scene.id));
  return card;
}

async function uploadImage(file) {
  $("picker-error").hidden = true;
  if (!file) return;
  if (!file.type.startsWith("image/")) return showPickerError(`${file.name} is not an image (${file.type || "unknown type"}).`);
  if (file.size > MAX_UPLOAD_BYTES) {
    return showPickerError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${MAX_UPLOAD_BYTES / 1048576} MB.`);
  }
  const card = document.querySelector(".upload-card");
  card.classList.add("busy");
  try {
    const headers = { "Content-Type": file.type };
    if (params.get("token")) headers.Authorization = `Bearer ${params.get("token")}`;
    const response = await fetch("/api/upload", { method: "POST", headers, body: file });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok || typeof answer.id !== "string") throw new Error(answer.error || `upload answered ${response.status}`);
    connect(answer.id);
  } catch (error) {
    showPickerError(`Upload failed: ${error.message}`);
  } finally {
    card.classList.remove("busy");
    $("upload-input").value = "";
  }
}

function showPickerError(message) {
  const el = $("picker-error");
  el.textContent = message;
  el.hidden = false;
}

let toastTimer = null;
function showToast(message, bad = false) {
  const el = $("toast");
  el.textContent = message;
  el.classList.toggle("bad", bad);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

function fetchWithTimeout(url, options, ms) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ms);
  return fetch(url, { ...options, signal: controller.signal }).finally(() => clearTimeout(timer));
}

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(message)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function wrapDegrees(deg) {
  return ((((deg + 180) % 360) + 360) % 360) - 180;
}

function round(value, digits) {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

function fmt(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function median(values) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit < 1.5 ? 1 : unit < 3.5 ? 2 : unit < 7.5 ? 5 : 10) * power;
}

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
};

bindInput();
bindButtons();
$("upload-input").addEventListener("change", (event) => uploadImage(event.target.files[0]));
loadModel();
loadScenes();
requestAnimationFrame(tick);
