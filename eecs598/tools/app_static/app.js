// The demo page: one upload per photo (the server detects at its low score floor), then the slider filters
// the returned detections here and redraws, without asking the server again.
"use strict";

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
                 "#469990", "#800000", "#808000", "#000075", "#bfef45", "#fabed4", "#ffd8b1", "#dcbeff",
                 "#aaffc3", "#a9a9a9", "#ffe119", "#000000"];
const MAX_CANVAS_WIDTH = 900;

const page = {
  info: null,      // GET /api/info
  result: null,    // the last POST /api/detect answer
  photo: null,     // its preview as an Image
};

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function colourOf(classId) {
  return COLOURS[classId % COLOURS.length];
}

function threshold() {
  return parseFloat($("threshold").value);
}

function visibleDetections() {
  if (!page.result) return [];
  const t = threshold();
  return page.result.detections.filter((d) => d.score > t);  // strictly above, as the detector's threshold
}

function drawPhoto(detections) {
  const canvas = $("canvas");
  const { width, height } = page.result;
  const scale = Math.min(1, MAX_CANVAS_WIDTH / width) * (width < 400 ? 400 / width : 1);
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(page.photo, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2;
  ctx.font = "13px system-ui, sans-serif";
  ctx.textBaseline = "top";
  // Lowest score first, so that the best boxes and their labels end on top.
  for (const d of [...detections].reverse()) {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    ctx.strokeStyle = colourOf(d.class_id);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${d.class} ${d.score.toFixed(2)}`;
    const textWidth = ctx.measureText(label).width + 6;
    const top = y1 >= 17 ? y1 - 17 : y1;
    ctx.fillStyle = colourOf(d.class_id);
    ctx.fillRect(x1, top, textWidth, 17);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x1 + 3, top + 2);
  }
}

function listDetections(detections) {
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  detections.forEach((d, i) => {
    const row = document.createElement("tr");
    row.className = "detection";
    row.dataset.class = d.class;
    row.dataset.classId = String(d.class_id);
    row.dataset.score = String(d.score);
    row.dataset.box = JSON.stringify(d.box);
    const cells = [String(i + 1), null, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")];
    cells.forEach((text, column) => {
      const cell = document.createElement("td");
      if (column === 1) {
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.backgroundColor = colourOf(d.class_id);  // CSSOM: allowed by the page's CSP
        cell.append(swatch, d.class);  // a text node: class names are never parsed as HTML
      } else {
        cell.textContent = text;
      }
      row.append(cell);
    });
    body.append(row);
  });
  $("detections").hidden = detections.length === 0;
  const total = page.result.detections.length;
  $("summary").textContent = `${detections.length} detection${detections.length === 1 ? "" : "s"} with score ` +
    `above ${threshold().toFixed(2)} (${total} above the detector's floor ${page.result.score_floor}).`;
}

function redraw() {
  $("threshold-value").textContent = threshold().toFixed(2);
  if (!page.result || !page.photo) return;
  const detections = visibleDetections();
  drawPhoto(detections);
  listDetections(detections);
}

async function detect(file) {
  showError("");
  if (!file) return;
  if (page.info && file.size > page.info.max_upload_bytes) {
    showError(`The file is ${(file.size / 2 ** 20).toFixed(1)} MiB; this page accepts up to ` +
              `${(page.info.max_upload_bytes / 2 ** 20).toFixed(0)} MiB.`);
    return;
  }
  $("status").textContent = `Detecting objects in ${file.name}\u2026`;
  document.body.dataset.state = "busy";
  try {
    const response = await fetch("api/detect", {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    let answer;
    try {
      answer = await response.json();
    } catch (e) {
      throw new Error(`The server answered ${response.status} without an explanation.`);
    }
    if (!response.ok) throw new Error(answer.error || `The server answered ${response.status}.`);
    const photo = new Image();
    photo.src = answer.image;
    await photo.decode();
    page.result = answer;
    page.photo = photo;
    $("status").textContent = `${file.name}: ${answer.width} x ${answer.height} px, ` +
      `detected in ${answer.elapsed_ms} ms.`;
    redraw();
    document.body.dataset.state = "done";
  } catch (error) {
    $("status").textContent = "";
    showError(error.message || String(error));
    document.body.dataset.state = "error";
  }
}

async function loadInfo() {
  try {
    const response = await fetch("api/info");
    page.info = await response.json();
    const slider = $("threshold");
    slider.min = String(page.info.score_floor);
    slider.value = String(page.info.display_thresh);
    $("backend").textContent = `${page.info.backend}; classes: ${page.info.class_names.join(", ")}; ` +
      `NMS IoU ${page.info.nms_thresh}.`;
    redraw();
    document.body.dataset.ready = "true";
  } catch (error) {
    showError("The detector's server does not answer; is python -m eecs598.app still running?");
  }
}

function setUp() {
  const input = $("file");
  input.addEventListener("change", () => detect(input.files[0]));
  $("threshold").addEventListener("input", redraw);
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    detect(event.dataTransfer.files[0]);
  });
  // A photo dropped anywhere else must not make the browser leave the page to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  loadInfo();
}

setUp();
