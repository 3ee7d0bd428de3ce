// Campaign view (`run.py serve --campaign FILE`): the consent text, then one task at a time.
//
// Flow: GET /api/campaign (404: no campaign, the normal picker stays) -> the consent text -> "I agree"
// POSTs /api/campaign/join and gets a pseudonymous participant id, a secret and the first task ->
// each attempt is one session started at the task's start; once the server names the session, the
// page binds it to the participant (POST /api/campaign/bind), which turns recording on server-side.
// Done, Skip, Retry, End and the time limit POST /api/campaign/next, which closes the episode, then
// the page leaves the session and starts the next task (or thanks the participant). Nothing is
// recorded before consent: the Record toggle is hidden and the server records only bound sessions.

import { $, params, state } from "./page_state.js";
import { fetchWithTimeout, showToast } from "./page_util.js";
import { leaveSession } from "./stage_view.js";
import { connect } from "./transport.js";

const REQUEST_TIMEOUT_MS = 10000;
const SESSION_WAIT_MS = 30000;
const TIMER_TICK_MS = 250;

const campaign = {
  active: false,
  participant: null,
  secret: null,
  task: null,
  bound: false,
  deadline: null, // performance.now() at which the task's time limit ends
  timer: null,
  stepping: false,
};

function headers() {
  const out = { "Content-Type": "application/json" };
  if (params.get("token")) out.Authorization = `Bearer ${params.get("token")}`;
  return out;
}

async function post(path, body) {
  const response = await fetchWithTimeout(path, { method: "POST", headers: headers(), body: JSON.stringify(body) }, REQUEST_TIMEOUT_MS);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error ?? `${path}: HTTP ${response.status}`);
  return answer;
}

// Called once at start-up: turns the page into the campaign view when the server runs a campaign.
export async function loadCampaign() {
  let info;
  try {
    const response = await fetchWithTimeout("/api/campaign", { headers: headers() }, REQUEST_TIMEOUT_MS);
    if (response.status === 404) return false;
    info = await response.json();
    if (!response.ok) throw new Error(info.error ?? `HTTP ${response.status}`);
  } catch (error) {
    showToast(`Campaign unavailable: ${error.message}`, true);
    return false;
  }
  campaign.active = true;
  document.body.classList.add("campaign-mode");
  $("picker").hidden = true;
  $("campaign-name").textContent = info.name;
  $("consent-text").textContent = info.consent;
  $("consent").hidden = false;
  $("consent-agree").addEventListener("click", join);
  $("consent-decline").addEventListener("click", () => finish("No problem. Nothing was recorded. You can close this page."));
  $("task-done").addEventListener("click", () => step("done"));
  $("task-skip").addEventListener("click", () => step("skip"));
  $("task-retry").addEventListener("click", () => step("retry"));
  $("task-end").addEventListener("click", () => step("end"));
  return true;
}

async function join() {
  $("consent-agree").disabled = true;
  try {
    const answer = await post("/api/campaign/join", { consent: true });
    campaign.participant = answer.participant;
    campaign.secret = answer.secret;
    $("consent").hidden = true;
    $("participant-id").textContent = answer.participant;
    startTask(answer.task);
  } catch (error) {
    $("consent-agree").disabled = false;
    showToast(`Could not join: ${error.message}`, true);
  }
}

function startTask(task) {
  campaign.task = task;
  campaign.bound = false;
  campaign.deadline = null;
  $("task-panel").hidden = false;
  $("task-instruction").textContent = task.instruction;
  $("task-goal").textContent = task.goal ? `Goal: ${task.goal}` : "";
  $("task-goal").hidden = !task.goal;
  $("task-progress").textContent = `Task ${task.index + 1} of ${task.of}${task.attempt ? ` · attempt ${task.attempt + 1}` : ""}`;
  $("task-timer").textContent = task.time_limit_s ? `${Math.round(task.time_limit_s)} s` : "";
  setButtons(false);
  connect(task.start);
  bindWhenReady(task);
}

// The session id arrives with the server's `session` message; bind it to the participant then.
async function bindWhenReady(task) {
  const until = performance.now() + SESSION_WAIT_MS;
  while (!state.session?.session_id) {
    if (performance.now() > until || campaign.task !== task) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (campaign.task !== task) return;
  try {
    await post("/api/campaign/bind", { participant: campaign.participant, secret: campaign.secret, session_id: state.session.session_id, start_id: task.start });
  } catch (error) {
    showToast(`Recording could not start: ${error.message}`, true);
    return;
  }
  campaign.bound = true;
  $("rec-badge").hidden = false;
  setButtons(true);
  if (task.time_limit_s) {
    campaign.deadline = performance.now() + task.time_limit_s * 1000;
    clearInterval(campaign.timer);
    campaign.timer = setInterval(tickTimer, TIMER_TICK_MS);
  }
}

function tickTimer() {
  if (campaign.deadline === null) return;
  const left = Math.max(0, (campaign.deadline - performance.now()) / 1000);
  $("task-timer").textContent = `${Math.ceil(left)} s left`;
  if (left <= 0) step("time_up");
}

function setButtons(enabled) {
  for (const id of ["task-done", "task-skip", "task-retry", "task-end"]) $(id).disabled = !enabled;
}

async function step(outcome) {
  if (campaign.stepping) return;
  campaign.stepping = true;
  clearInterval(campaign.timer);
  campaign.deadline = null;
  setButtons(false);
  try {
    const answer = await post("/api/campaign/next", { participant: campaign.participant, secret: campaign.secret, outcome });
    leaveSession();
    $("picker").hidden = true;
    $("rec-badge").hidden = true;
    if (answer.finished || !answer.task) {
      finish("Thank you! Your walks were recorded. You can close this page.");
    } else {
      startTask(answer.task);
    }
  } catch (error) {
    showToast(`Could not continue: ${error.message}`, true);
    setButtons(campaign.bound);
  } finally {
    campaign.stepping = false;
  }
}

function finish(message) {
  campaign.task = null;
  $("consent").hidden = true;
  $("task-panel").hidden = true;
  $("stage").hidden = true;
  $("picker").hidden = true;
  $("campaign-done-text").textContent = message;
  $("campaign-done").hidden = false;
}

// For the test hook: where the participant is.
export function campaignState() {
  return { active: campaign.active, participant: campaign.participant, task: campaign.task, bound: campaign.bound };
}
