// HUD (fps, chunk time, latency, pose) and the top-down minimap of the walked path.

import { $, DEFAULT_HFOV_DEG, HINT_FADE_MS, IDLE_AFTER_MS, MINIMAP_MIN_EXTENT_M, state } from "./page_state.js";
import { fmt, median, niceStep, round, setText } from "./page_util.js";

export function renderHud(now) {
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
export function drawMinimap() {
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
