// Input: held keys, look angles and the coalesced, idempotent input snapshots sent to the server.

import { drawMinimap, renderHud } from "./hud_minimap.js";
import { $, ARROW_RATE_DEG_S, DRAG_CLICK_PX, HANDLED_CODES, HEARTBEAT_FOR_MS, HEARTBEAT_MS, KEY, MAX_PENDING_INPUTS, MAX_TICK_S, MOVE_CODES, ROLL_RATE_DEG_S, SEND_INTERVAL_MS, SHIFT_CODES, state } from "./page_state.js";
import { round, wrapDegrees } from "./page_util.js";
import { sayGoodbye, sendVisibility, toggleSettings } from "./stage_controls.js";
import { sendJSON } from "./transport.js";

export function keyMask() {
  let mask = 0;
  for (const code of state.held) {
    if (code in MOVE_CODES) mask |= MOVE_CODES[code];
    else if (SHIFT_CODES.has(code)) mask |= state.settings.fly ? KEY.DOWN : KEY.SPRINT;
    else if (code === "Space" && state.settings.fly) mask |= KEY.UP;
  }
  return mask;
}

export function sendInput(now) {
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

export function tick(now) {
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

export function integrateHeldAngles(dt) {
  const held = state.held;
  const axis = (plus, minus) => (held.has(plus) ? 1 : 0) - (held.has(minus) ? 1 : 0);
  const yawRate = axis("ArrowRight", "ArrowLeft") * ARROW_RATE_DEG_S;
  const pitchRate = axis("ArrowUp", "ArrowDown") * ARROW_RATE_DEG_S;
  const rollRate = axis("KeyE", "KeyQ") * ROLL_RATE_DEG_S;
  if (yawRate || pitchRate || rollRate) setAngles(state.yaw + yawRate * dt, state.pitch + pitchRate * dt, state.roll + rollRate * dt);
}

export function setAngles(yaw, pitch, roll) {
  state.yaw = wrapDegrees(yaw);
  state.pitch = Math.max(-state.pitchLimit, Math.min(state.pitchLimit, pitch));
  state.roll = wrapDegrees(roll);
}

export function addLook(dx, dy) {
  if (!Number.isFinite(dx) || !Number.isFinite(dy)) return;
  const s = state.settings.sensitivity;
  const sign = state.settings.invertY ? -1 : 1;
  setAngles(state.yaw + s * dx, state.pitch - sign * s * dy, state.roll);
  if (!state.synced) {
    state.lookDx += dx;
    state.lookDy += sign * dy;
  }
}

export function keyDown(code) {
  if (!HANDLED_CODES.has(code) || state.held.has(code)) return;
  state.held.add(code);
  markKey(code, true);
}

export function keyUp(code) {
  if (!state.held.delete(code)) return;
  markKey(code, false);
}

// Also sends the release at once: on blur or a hidden tab animation frames stop, and the server would
// otherwise keep walking on the last snapshot.
export function releaseAll() {
  if (state.held.size === 0) return;
  for (const code of [...state.held]) keyUp(code);
  if (state.transport !== "none" && state.session !== null) sendInput(performance.now());
}

export function markKey(code, down) {
  const el = document.querySelector(`#keys [data-key="${code}"]`);
  if (el) el.classList.toggle("down", down);
}

export function isTyping(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName) && target.type !== "checkbox");
}

export function bindInput() {
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
export async function requestLock(element) {
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
