// Review page (/review): the episode table, one episode's video beside a top-down plot of its path,
// the input timeline under them, and the accept / reject buttons that write reviews.json.
//
// Every request carries the page's ?token= (a Bearer header for fetches, a query for <video> and
// <img>), which the server requires on a non-loopback bind. The path plot and the timeline follow the
// video: the marker sits at the frame the video shows (currentTime x fps).

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);
// Bits of controls.integrator.Key, bottom to top in the timeline.
const KEY_ROWS = ["forward", "back", "left", "right", "up", "down", "roll_left", "roll_right", "sprint", "slow"];
const TIMELINE_LEFT_PX = 70;
const PATH_MARGIN_PX = 16;
const REFRESH_MS = 5000;

const view = { episodes: [], open: null, detail: null };

function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ?? `${path}: HTTP ${response.status}`);
  return body;
}

function showError(message) {
  $("review-error").textContent = message;
  $("review-error").hidden = !message;
}

async function loadList() {
  let answer;
  try {
    answer = await api("/api/review/episodes");
  } catch (error) {
    showError(error.message);
    return;
  }
  showError("");
  view.episodes = answer.episodes;
  if (answer.campaign) $("review-campaign").textContent = ` · campaign ${answer.campaign}`;
  renderProgress(answer.progress);
  renderRows();
}

function renderProgress(p) {
  const el = $("review-progress");
  el.replaceChildren();
  for (const [label, value] of [["participants", p.participants], ["episodes", p.episodes], ["minutes", p.minutes], ["accepted", p.accepted], ["rejected", p.rejected]]) {
    const b = document.createElement("b");
    b.textContent = String(value);
    el.append(b, ` ${label}  `);
  }
}

function renderRows() {
  const body = $("episode-rows");
  body.replaceChildren();
  $("review-empty").hidden = view.episodes.length > 0;
  for (const ep of view.episodes) {
    const row = document.createElement("tr");
    row.dataset.name = ep.name;
    const cells = [];
    const thumb = document.createElement("td");
    if (!ep.error) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = "";
      img.src = withToken(`/api/review/episodes/${encodeURIComponent(ep.name)}/thumbnail.jpg`);
      thumb.append(img);
    }
    cells.push(thumb);
    for (const text of [ep.name, ep.participant ?? "–", ep.task ?? "–", ep.error ? "–" : ep.seconds.toFixed(1)]) {
      const td = document.createElement("td");
      td.textContent = text;
      cells.push(td);
    }
    const flags = document.createElement("td");
    if (ep.error) {
      flags.append(flag(ep.error, true));
    } else {
      if (!ep.complete) flags.append(flag("incomplete", true));
      for (const [name, value] of Object.entries(ep.flags)) flags.append(flag(`${name} ${value}`));
    }
    cells.push(flags);
    const decision = document.createElement("td");
    decision.className = ep.decision ? `decision-${ep.decision}` : "muted";
    decision.textContent = ep.decision ?? "pending";
    cells.push(decision);
    row.append(...cells);
    if (!ep.error) {
      row.classList.add("episode");
      row.addEventListener("click", () => openEpisode(ep.name));
    }
    if (view.open === ep.name) row.classList.add("selected");
    body.append(row);
  }
}

function flag(text, bad = false) {
  const span = document.createElement("span");
  span.className = bad ? "flag bad" : "flag";
  span.textContent = text;
  return span;
}

async function openEpisode(name) {
  view.open = name;
  renderRows();
  let detail;
  try {
    detail = await api(`/api/review/episodes/${encodeURIComponent(name)}`);
  } catch (error) {
    showError(error.message);
    return;
  }
  view.detail = detail;
  const summary = view.episodes.find((e) => e.name === name) ?? {};
  $("episode-view").hidden = false;
  $("episode-title").textContent = name;
  const m = detail.meta;
  $("episode-meta").textContent = [
    m.participant && `participant ${m.participant}`, m.task && `task ${m.task}`, m.scene && `scene ${m.scene}`,
    m.outcome && `outcome ${m.outcome}`, `${detail.frames} frames at ${detail.fps} fps`, detail.complete ? null : "incomplete (recording cut short)",
  ].filter(Boolean).join(" · ");
  $("review-note").value = summary.note ?? "";
  const video = $("episode-video");
  video.src = withToken(`/api/review/episodes/${encodeURIComponent(name)}/video.mp4`);
  drawPath(0);
  drawTimeline(0);
}

function currentFrame() {
  const d = view.detail;
  if (!d) return 0;
  return Math.min(d.frames - 1, Math.max(0, Math.floor($("episode-video").currentTime * d.fps)));
}

// Top-down x/z plot (+z, the start heading, points up); the marker is the video's current frame.
function drawPath(frame) {
  const d = view.detail;
  const canvas = $("episode-path");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!d || !d.x.length) return;
  const xs = d.x, zs = d.z;
  const minX = Math.min(...xs), maxX = Math.max(...xs), minZ = Math.min(...zs), maxZ = Math.max(...zs);
  const extent = Math.max(maxX - minX, maxZ - minZ, 1);
  const scale = (canvas.width - 2 * PATH_MARGIN_PX) / extent;
  const cx = (minX + maxX) / 2, cz = (minZ + maxZ) / 2;
  const px = (x) => canvas.width / 2 + (x - cx) * scale;
  const pz = (z) => canvas.height / 2 - (z - cz) * scale;
  ctx.strokeStyle = "#5eead4";
  ctx.lineWidth = 2;
  ctx.beginPath();
  xs.forEach((x, i) => (i ? ctx.lineTo(px(x), pz(zs[i])) : ctx.moveTo(px(x), pz(zs[i]))));
  ctx.stroke();
  ctx.fillStyle = "#818cf8";
  ctx.beginPath();
  ctx.arc(px(xs[0]), pz(zs[0]), 4, 0, 2 * Math.PI);
  ctx.fill();
  const yaw = d.yaw[frame];
  const mx = px(xs[frame]), mz = pz(zs[frame]);
  ctx.fillStyle = "#f87171";
  ctx.beginPath();
  ctx.arc(mx, mz, 5, 0, 2 * Math.PI);
  ctx.fill();
  ctx.strokeStyle = "#f87171";
  ctx.beginPath();
  ctx.moveTo(mx, mz);
  ctx.lineTo(mx + 14 * Math.sin(yaw), mz - 14 * Math.cos(yaw));
  ctx.stroke();
  ctx.fillStyle = "#8a93a8";
  ctx.font = "11px monospace";
  ctx.fillText(`${extent.toFixed(1)} m`, 6, canvas.height - 6);
}

// Held keys per frame (one row per key bit) and the raw input events and control messages as ticks.
function drawTimeline(frame) {
  const d = view.detail;
  const canvas = $("episode-timeline");
  canvas.width = canvas.clientWidth || canvas.width;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!d || !d.frames) return;
  const seconds = d.frames / d.fps;
  const width = canvas.width - TIMELINE_LEFT_PX - 6;
  const tx = (t) => TIMELINE_LEFT_PX + (t / seconds) * width;
  const rows = 6; // forward, back, left, right, up, down: what walking uses
  const rowH = (canvas.height - 24) / rows;
  ctx.font = "10px monospace";
  for (let r = 0; r < rows; r++) {
    const y = 4 + r * rowH;
    ctx.fillStyle = "#8a93a8";
    ctx.fillText(KEY_ROWS[r], 4, y + rowH - 3);
    ctx.fillStyle = "#5eead4";
    d.keys.forEach((keys, i) => {
      if (keys & (1 << r)) ctx.fillRect(tx(i / d.fps), y + 1, Math.max(1, width / d.frames), rowH - 2);
    });
  }
  const eventsY = canvas.height - 18;
  ctx.fillStyle = "#8a93a8";
  ctx.fillText("events", 4, eventsY + 10);
  for (const event of d.events) {
    if (event.t < 0 || event.t > seconds) continue;
    ctx.fillStyle = event.control ? "#fbbf24" : "#818cf8";
    ctx.fillRect(tx(event.t), eventsY, event.control ? 2 : 1, 12);
  }
  ctx.fillStyle = "#f87171";
  ctx.fillRect(tx(frame / d.fps), 0, 2, canvas.height);
}

async function decide(decision) {
  if (!view.open) return;
  try {
    await api(`/api/review/episodes/${encodeURIComponent(view.open)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ decision, note: $("review-note").value }),
    });
  } catch (error) {
    showError(error.message);
    return;
  }
  await loadList();
}

$("review-accept").addEventListener("click", () => decide("accept"));
$("review-reject").addEventListener("click", () => decide("reject"));
$("review-clear").addEventListener("click", () => decide(null));
$("episode-video").addEventListener("timeupdate", () => {
  const frame = currentFrame();
  drawPath(frame);
  drawTimeline(frame);
});
loadList();
setInterval(loadList, REFRESH_MS);

// Test hook: what the page shows.
window.__review = { episodes: () => view.episodes, open: openEpisode, detail: () => view.detail };
