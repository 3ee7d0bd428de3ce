// The start picker: scene cards, photo upload and the prompt field.

import { $, MAX_UPLOAD_BYTES, params } from "./page_state.js";
import { connect } from "./transport.js";

export async function loadScenes() {
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
export function walkPrompt() {
  const field = $("prompt-input");
  return field && !$("prompt-row").hidden ? field.value.trim() : "";
}

// GET /api/model: a model that takes prompts gets the prompt field, with the server's default as its placeholder.
export async function loadModel() {
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

export function sceneCard(scene) {
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

export async function uploadImage(file) {
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

export function showPickerError(message) {
  const el = $("picker-error");
  el.textContent = message;
  el.hidden = false;
}
