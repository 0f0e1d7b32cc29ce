// personsearch page: pick a probe picture, drag a box around the person, browse ranked scenes.
// Plain JS, no build step. Talks only to this server's /api (see /docs).
"use strict";

const TOP_K_CHOICES = [5, 10, 20, 50, 100];
const THUMB_SIZE = 320;
const GALLERY_THUMB_SIZE = 160;
const GALLERY_PAGE = 48;
const MIN_BOX_PIXELS = 4; // a drag shorter than this (in image pixels) is a click
const URL_CACHE_LIMIT = 400;

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const state = {
  token: sessionStorage.getItem("personsearch-token") || "",
  stats: null,
  probe: null, // {kind: "upload"|"indexed", image, width, height, file?, imageId?, boxes?}
  box: null, // [x1, y1, x2, y2] in probe image pixels
  drag: null,
  hit: null, // the result shown in the scene dialog
  galleryNext: 0,
};

// ---- talking to the API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// A busy server (its decode budget full) answers 503 with Retry-After: wait and ask again a few
// times before showing the error. The request body (FormData or JSON text) can be sent again.
const BUSY_RETRIES = 3;
const BUSY_WAIT_MAX_S = 10;

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let response;
  for (let attempt = 0; ; attempt += 1) {
    try {
      response = await fetch(path, { ...options, headers });
    } catch (error) {
      throw new ApiError(0, `cannot reach the server (${error.message})`);
    }
    const wait = Number(response.headers.get("Retry-After"));
    if (response.status !== 503 || attempt >= BUSY_RETRIES || !(wait >= 0)) break;
    const seconds = Math.min(wait, BUSY_WAIT_MAX_S);
    setStatus(`the server is busy: trying again in ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.message) message = body.message;
    } catch (_) {
      // not JSON: keep the status line
    }
    if (response.status === 401) $("token-form").hidden = false;
    throw new ApiError(response.status, message);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

// Images come as blobs so that the token travels in a header, never in a URL.
const imageUrls = new Map();
function imageUrl(path) {
  if (!imageUrls.has(path)) {
    const made = api(path).then(async (r) => URL.createObjectURL(await r.blob()));
    made.catch(() => imageUrls.delete(path));
    imageUrls.set(path, made);
    if (imageUrls.size > URL_CACHE_LIMIT) {
      const [oldest, url] = imageUrls.entries().next().value;
      imageUrls.delete(oldest);
      url.then(URL.revokeObjectURL, () => {});
    }
  }
  return imageUrls.get(path);
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- index statistics, top-k and camera controls -----------------------------------------

async function loadStats() {
  try {
    const stats = await apiJson("/api/stats");
    state.stats = stats;
    $("token-form").hidden = true;
    const failed = stats.failed_images ? ` (${stats.failed_images} unreadable)` : "";
    const videos = stats.videos ? ` (${stats.videos} of them videos)` : "";
    $("stats").textContent =
      `${stats.images} images${videos}${failed} · ${stats.persons} persons · ` +
      `index “${stats.index}” · model ${stats.model}`;
    fillTopK(stats.limits.max_top_k);
    fillCameras(stats.cameras);
  } catch (error) {
    $("stats").textContent = error.status === 401 ? "an access token is needed" : "";
    setStatus(error.message, true);
  }
}

function fillTopK(max) {
  const select = $("topk");
  select.replaceChildren();
  for (const k of TOP_K_CHOICES.filter((k) => k <= max)) {
    const option = el("option", "", String(k));
    option.value = String(k);
    option.selected = k === 10;
    select.append(option);
  }
}

function fillCameras(cameras) {
  const list = $("camera-list");
  list.replaceChildren();
  $("cameras").hidden = cameras.length < 2;
  for (const camera of cameras) {
    const label = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.value = String(camera);
    box.checked = true;
    label.append(box, ` ${camera}`);
    list.append(label);
  }
}

// null: no filter (all cameras); otherwise the checked camera ids
function selectedCameras() {
  const boxes = [...$("camera-list").querySelectorAll("input")];
  if ($("cameras").hidden || boxes.every((b) => b.checked)) return null;
  return boxes.filter((b) => b.checked).map((b) => Number(b.value));
}

// ---- the probe: loading, drawing, box dragging -------------------------------------------

async function loadUpload(file) {
  const limits = state.stats && state.stats.limits;
  if (limits && file.size > limits.max_upload_bytes) {
    setStatus(`${file.name} is larger than ${(limits.max_upload_bytes / 1048576).toFixed(0)} MB`, true);
    return;
  }
  let image;
  try {
    image = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    setStatus(`${file.name} is not an image this browser can show`, true);
    return;
  }
  setProbe({ kind: "upload", file, image, width: image.width, height: image.height });
}

// An indexed image, or the frame of an indexed video at `timeS` seconds, as the probe.
async function loadIndexedProbe(imageId, box = null, timeS = null) {
  const at = timeS === null ? "" : `?t=${timeS}`;
  const detail = await apiJson(`/api/images/${imageId}${at}`);
  const video = detail.kind === "video";
  const frameTime = video ? detail.time_s ?? timeS ?? 0 : null;
  const image = new Image();
  image.src = await imageUrl(
    video ? `/api/images/${imageId}/frame?t=${frameTime}` : `/api/images/${imageId}/scene`
  );
  await image.decode();
  setProbe({
    kind: "indexed",
    imageId,
    timeS: frameTime,
    image,
    width: detail.width,
    height: detail.height,
    name: detail.name,
    boxes: detail.boxes.map((b) => b.box),
  });
  if (box) selectBox(box);
}

function setProbe(probe) {
  state.probe = probe;
  state.box = null;
  $("canvas-wrap").classList.add("has-image");
  layoutCanvas();
  updateSearchButton();
  const source = probe.kind === "upload" ? probe.file.name : probe.name;
  setStatus(
    probe.kind === "indexed" && probe.boxes.length
      ? `${source}: click a detected person (dashed) or drag a box.`
      : `${source}: drag a box around the person.`
  );
}

function layoutCanvas() {
  const probe = state.probe;
  if (!probe) return;
  const wrap = $("canvas-wrap");
  const scale = Math.min(wrap.clientWidth / probe.width, (window.innerHeight * 0.6) / probe.height);
  const width = Math.max(1, Math.round(probe.width * scale));
  const height = Math.max(1, Math.round(probe.height * scale));
  const ratio = window.devicePixelRatio || 1;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  draw();
}

function draw() {
  const probe = state.probe;
  if (!probe) return;
  // Draw in image pixel coordinates; one screen pixel is `px` image pixels.
  ctx.setTransform(canvas.width / probe.width, 0, 0, canvas.height / probe.height, 0, 0);
  const px = probe.width / parseFloat(canvas.style.width);
  ctx.clearRect(0, 0, probe.width, probe.height);
  ctx.drawImage(probe.image, 0, 0, probe.width, probe.height);
  const shown = state.drag ? dragBox(state.drag) : state.box;
  if (probe.boxes) {
    ctx.setLineDash([5 * px, 4 * px]);
    ctx.lineWidth = 1.5 * px;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
    for (const [x1, y1, x2, y2] of probe.boxes) ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.setLineDash([]);
  }
  if (!shown) return;
  const [x1, y1, x2, y2] = shown;
  ctx.fillStyle = "rgba(15, 20, 30, 0.45)"; // dim everything but the person
  ctx.beginPath();
  ctx.rect(0, 0, probe.width, probe.height);
  ctx.rect(x1, y1, x2 - x1, y2 - y1);
  ctx.fill("evenodd");
  ctx.lineWidth = 2.5 * px;
  ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--probe");
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
}

function toImage(event) {
  const rect = canvas.getBoundingClientRect();
  const probe = state.probe;
  const x = ((event.clientX - rect.left) / rect.width) * probe.width;
  const y = ((event.clientY - rect.top) / rect.height) * probe.height;
  return [Math.min(Math.max(x, 0), probe.width), Math.min(Math.max(y, 0), probe.height)];
}

function dragBox({ x0, y0, x1, y1 }) {
  return [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
}

canvas.addEventListener("pointerdown", (event) => {
  if (!state.probe || event.button !== 0) return;
  canvas.setPointerCapture(event.pointerId);
  const [x, y] = toImage(event);
  state.drag = { x0: x, y0: y, x1: x, y1: y };
  event.preventDefault();
});

canvas.addEventListener("pointermove", (event) => {
  if (!state.drag) return;
  [state.drag.x1, state.drag.y1] = toImage(event);
  draw();
});

function endDrag(event) {
  if (!state.drag) return;
  const box = dragBox(state.drag);
  state.drag = null;
  if (box[2] - box[0] >= MIN_BOX_PIXELS && box[3] - box[1] >= MIN_BOX_PIXELS) {
    selectBox(box);
  } else if (event.type === "pointerup") {
    clickAt(box[0], box[1]);
  } else {
    draw();
  }
}
canvas.addEventListener("pointerup", endDrag);
canvas.addEventListener("pointercancel", endDrag);

// A click picks the smallest detected person under it (indexed images show their detections).
function clickAt(x, y) {
  const under = (state.probe.boxes || []).filter(
    ([x1, y1, x2, y2]) => x >= x1 && x <= x2 && y >= y1 && y <= y2
  );
  const area = ([x1, y1, x2, y2]) => (x2 - x1) * (y2 - y1);
  under.sort((a, b) => area(a) - area(b));
  if (under.length) selectBox(under[0]);
  else draw();
}

function selectBox(box) {
  state.box = box.map((v) => Math.round(v * 10) / 10);
  draw();
  updateSearchButton();
  const [x1, y1, x2, y2] = state.box.map(Math.round);
  setStatus(`Person at ${x1},${y1} – ${x2},${y2} (${x2 - x1} × ${y2 - y1} px). Press Search.`);
}

function updateSearchButton() {
  $("search").disabled = !(state.probe && state.box);
}

// ---- searching and showing ranked scenes -------------------------------------------------

async function search() {
  const probe = state.probe;
  if (!probe || !state.box) return;
  const cameras = selectedCameras();
  if (cameras && cameras.length === 0) {
    setStatus("Choose at least one camera.", true);
    return;
  }
  const topK = Number($("topk").value) || 10;
  $("search").disabled = true;
  setStatus("Searching…");
  try {
    let result;
    if (probe.kind === "upload") {
      const form = new FormData();
      form.append("file", probe.file);
      form.append("box", state.box.join(","));
      form.append("top_k", String(topK));
      for (const camera of cameras || []) form.append("camera", String(camera));
      result = await apiJson("/api/search/upload", { method: "POST", body: form });
    } else {
      result = await apiJson("/api/search/indexed", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          image_id: probe.imageId,
          time_s: probe.timeS,
          box: state.box,
          top_k: topK,
          cameras,
        }),
      });
    }
    showResults(result);
    setStatus(`${result.results.length} persons ranked in ${Math.round(result.took_ms)} ms.`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    updateSearchButton();
  }
}

// A scene picture with the person's box drawn over it, sized by the image's aspect ratio.
function sceneView(image, box, path) {
  const frame = el("div", "thumb");
  frame.style.aspectRatio = `${image.width} / ${image.height}`;
  const img = el("img");
  img.alt = image.name;
  frame.append(img);
  if (box) {
    const [x1, y1, x2, y2] = box;
    const mark = el("div", "box");
    mark.style.left = `${(100 * x1) / image.width}%`;
    mark.style.top = `${(100 * y1) / image.height}%`;
    mark.style.width = `${(100 * (x2 - x1)) / image.width}%`;
    mark.style.height = `${(100 * (y2 - y1)) / image.height}%`;
    frame.append(mark);
  }
  imageUrl(path).then(
    (url) => { img.src = url; },
    () => { img.alt = `${image.name} (cannot be loaded)`; }
  );
  return frame;
}

function showResults(result) {
  const grid = $("results");
  grid.replaceChildren();
  $("results-note").textContent = result.results.length
    ? "Click a scene to see it whole."
    : "No persons found: the index is empty, or none match the camera filter.";
  for (const hit of result.results) {
    const card = el("button", "card");
    card.type = "button";
    card.dataset.rank = String(hit.rank);
    card.dataset.imageId = String(hit.image.id);
    card.dataset.name = hit.image.name;
    card.dataset.similarity = String(hit.similarity);
    const path = hit.video
      ? `/api/images/${hit.image.id}/frame?t=${hit.video.time_s}&size=${THUMB_SIZE}`
      : `/api/images/${hit.image.id}/thumbnail?size=${THUMB_SIZE}`;
    const line = el("div", "card-line");
    line.append(el("span", "rank", `#${hit.rank}`), el("span", "sim", hit.similarity.toFixed(3)));
    const bar = el("div", "simbar");
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, hit.similarity)) * 100}%`;
    bar.append(fill);
    const camera = hit.image.camera >= 0 ? ` · camera ${hit.image.camera}` : "";
    const place = hit.video ? ` at ${clock(hit.video.time_s)}` : "";
    card.append(
      sceneView(hit.image, hit.box, path),
      line,
      bar,
      el("div", "sub", hit.image.name + place + camera)
    );
    card.title = `${hit.image.name}${place}: similarity ${hit.similarity.toFixed(3)}`;
    card.addEventListener("click", () => openScene(hit));
    grid.append(card);
  }
}

// Seconds as m:ss.s
function clock(seconds) {
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - 60 * minutes).toFixed(1).padStart(4, "0")}`;
}

function openScene(hit) {
  state.hit = hit;
  const frame = $("scene-frame");
  const id = hit.image.id;
  const path = hit.video ? `/api/images/${id}/frame?t=${hit.video.time_s}` : `/api/images/${id}/scene`;
  const view = sceneView(hit.image, hit.box, path);
  const { width, height } = hit.image;
  view.style.width = `min(100%, calc(70vh * ${width} / ${height}))`;
  frame.replaceChildren(view);
  let place = "";
  if (hit.video) {
    const v = hit.video;
    place = ` at ${clock(v.time_s)} (frame ${v.frame})`;
    if (v.track_start_s !== null && v.track_start_s !== undefined) {
      place += ` · in view ${clock(v.track_start_s)}–${clock(v.track_end_s)}`;
    }
    frame.append(videoPlayer(id, v.time_s, width, height));
  }
  $("scene-title").textContent = `#${hit.rank} · ${hit.image.name}${place}`;
  const camera = hit.image.camera >= 0 ? ` · camera ${hit.image.camera}` : "";
  $("scene-caption").textContent =
    `similarity ${hit.similarity.toFixed(3)} · detection ${hit.det_score.toFixed(2)}` +
    `${camera} · ${width} × ${height} px`;
  $("scene-dialog").showModal();
}

// The video, ready to play from the hit's moment. Its URL carries a short-lived ticket for
// this one video (never the token: a <video> element cannot send headers), and the browser
// fetches it with range requests, so it seeks without downloading the file.
function videoPlayer(imageId, timeS, width, height) {
  const player = el("video", "player");
  player.controls = true;
  player.preload = "metadata";
  player.style.aspectRatio = `${width} / ${height}`;
  apiJson(`/api/images/${imageId}/video-ticket`, { method: "POST" }).then(
    (ticket) => {
      player.src = `${ticket.url}#t=${timeS}`;
    },
    (error) => {
      player.replaceWith(el("p", "note", `the video cannot be played: ${error.message}`));
    }
  );
  return player;
}

$("search-this").addEventListener("click", async () => {
  const hit = state.hit;
  $("scene-dialog").close();
  try {
    await loadIndexedProbe(hit.image.id, hit.box, hit.video ? hit.video.time_s : null);
    await search();
  } catch (error) {
    setStatus(error.message, true);
  }
});

// ---- picking a gallery image -------------------------------------------------------------

async function loadGalleryPage() {
  const grid = $("gallery-grid");
  try {
    const page = await apiJson(`/api/images?offset=${state.galleryNext}&limit=${GALLERY_PAGE}`);
    for (const image of page.images) {
      const card = el("button", "card");
      card.type = "button";
      card.dataset.imageId = String(image.id);
      const path = `/api/images/${image.id}/thumbnail?size=${GALLERY_THUMB_SIZE}`;
      const camera = image.camera >= 0 ? ` · camera ${image.camera}` : "";
      const persons =
        `${image.persons} ${image.persons === 1 ? "person" : "persons"}` +
        (image.kind === "video" ? ` · video, ${clock(image.duration_s || 0)}` : "");
      card.append(
        sceneView(image, null, path),
        el("div", "sub", image.name),
        el("div", "sub", persons + camera)
      );
      card.addEventListener("click", async () => {
        $("gallery-dialog").close();
        try {
          await loadIndexedProbe(image.id);
        } catch (error) {
          setStatus(error.message, true);
        }
      });
      grid.append(card);
    }
    state.galleryNext = page.offset + page.images.length;
    $("gallery-count").textContent = `${state.galleryNext} of ${page.total} images`;
    $("gallery-more").hidden = state.galleryNext >= page.total;
  } catch (error) {
    $("gallery-count").textContent = error.message;
  }
}

$("pick").addEventListener("click", () => {
  $("gallery-dialog").showModal();
  if (state.galleryNext === 0) loadGalleryPage();
});
$("gallery-more").addEventListener("click", loadGalleryPage);

// ---- wiring ------------------------------------------------------------------------------

$("file").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) loadUpload(file);
  event.target.value = ""; // choosing the same file again still fires "change"
});
$("search").addEventListener("click", search);
for (const button of document.querySelectorAll("[data-close]")) {
  button.addEventListener("click", () => button.closest("dialog").close());
}
for (const dialog of document.querySelectorAll("dialog")) {
  // a click on the backdrop (outside the dialog's box) closes it
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
}
window.addEventListener("resize", layoutCanvas);

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token-input").value.trim();
  sessionStorage.setItem("personsearch-token", state.token);
  imageUrls.clear();
  loadStats();
});

// `personsearch serve --token` prints a link ending in #token=...: the fragment never reaches
// the server (or its logs); keep the token for this tab and take it out of the address bar.
const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromLink) {
  state.token = fromLink;
  sessionStorage.setItem("personsearch-token", fromLink);
  history.replaceState(null, "", location.pathname + location.search);
}
loadStats();
