// The page's constants, its one mutable `state` object and the `$` element lookup.
//
// Every module reads and writes the same `state` (a single object, so imports see one live value).

export const CONNECT_TIMEOUT_MS = 4000;
export const OFFER_TIMEOUT_MS = 10000;
export const ICE_GATHER_TIMEOUT_MS = 2000;
export const MAX_UPLOAD_BYTES = 10 * 1024 * 1024;
export const SEND_INTERVAL_MS = 1000 / 60;
export const HEARTBEAT_MS = 250;
export const HEARTBEAT_FOR_MS = 1000;
export const IDLE_AFTER_MS = 2500;
// The server ends a shown page's session after 3 s without a message: ping well within that.
export const PING_INTERVAL_MS = 1000;
export const STATS_INTERVAL_MS = 500;
export const TELEMETRY_MATCH_SLACK_MS = 10;
export const ARROW_RATE_DEG_S = 90;
export const ROLL_RATE_DEG_S = 45;
export const MAX_TICK_S = 0.25;
export const DRAG_CLICK_PX = 4;
export const HINT_FADE_MS = 8000;
export const DEFAULT_PITCH_LIMIT_DEG = 60;
export const LATENCY_WINDOW = 60;
export const MAX_PENDING_INPUTS = 600;
export const MAX_PATH_POINTS = 5000;
export const MINIMAP_MIN_EXTENT_M = 4;
export const DEFAULT_HFOV_DEG = 60;
export const REWIND_SECONDS = 3;
export const WS_HEADER_BYTES = 32;

// controls.integrator.Key
export const KEY = {
  FORWARD: 1, BACK: 2, LEFT: 4, RIGHT: 8, UP: 16, DOWN: 32,
  ROLL_LEFT: 64, ROLL_RIGHT: 128, SPRINT: 256, SLOW: 512,
};

export const MOVE_CODES = {
  KeyW: KEY.FORWARD, KeyS: KEY.BACK, KeyA: KEY.LEFT, KeyD: KEY.RIGHT,
  ControlLeft: KEY.SLOW, ControlRight: KEY.SLOW, AltLeft: KEY.SLOW, AltRight: KEY.SLOW,
};
export const SHIFT_CODES = new Set(["ShiftLeft", "ShiftRight"]);
// Arrows and Q/E turn the page's absolute angles. Q/E are deliberately not sent as ROLL_LEFT/RIGHT bits:
// the server's integrator would turn its roll target by those bits on top of the absolute roll we send.
export const ANGLE_CODES = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "KeyQ", "KeyE"]);
export const HANDLED_CODES = new Set([...Object.keys(MOVE_CODES), ...SHIFT_CODES, ...ANGLE_CODES, "Space"]);

export const params = new URLSearchParams(location.search);
export const $ = (id) => document.getElementById(id);

export const state = {
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
