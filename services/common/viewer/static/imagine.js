// The imagine panel: a start frame (a bundled example or an upload, resized to the world
// model's frame size) and N candidate chunks (generated here or from a JSON file) go to
// POST /v1/imagine with PNG frames back; each candidate's future plays side by side with the
// judge's confidence, the verdict and the best candidate.

import { describeError, float32Tensor, frameTensor, frameUrls, request } from "./api.js";
import { Player, el } from "./player.js";

const $ = (id) => document.getElementById(id);

// A small seeded generator (mulberry32), so "random" candidates are reproducible by seed.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Directions for "one direction per candidate": +-x, +-y, +-z, gripper closed / open.
const DIRECTIONS = [
  [1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, -1, 0, 0],
  [0, 0, 1, 0], [0, 0, -1, 0], [0, 0, 0, 1], [0, 0, 0, -1],
];

function generated(kind, n, chunks, k, seed) {
  const next = rng(seed);
  const values = [];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < chunks * k; j++) {
      for (let d = 0; d < 4; d++) {
        if (kind === "random") values.push(next() * 2 - 1);
        else if (kind === "sweep") values.push(DIRECTIONS[i % DIRECTIONS.length][d]);
        else values.push(0);
      }
    }
  }
  return float32Tensor(values, [n, chunks, k, 4]);
}

// (N, C, K, 4) or (N, K, 4) nested arrays (or {"candidates": ...}) -> a float32 tensor.
function fromJson(value) {
  const data = value && !Array.isArray(value) ? value.candidates : value;
  const shape = [];
  for (let level = data; Array.isArray(level); level = level[0]) shape.push(level.length);
  if (shape.length !== 3 && shape.length !== 4) {
    throw new Error(`candidates JSON: expected nested arrays of shape (N, C, K, 4) or (N, K, 4), got ${shape.length} levels`);
  }
  const flat = data.flat(shape.length - 1);
  const expected = shape.reduce((a, b) => a * b, 1);
  if (flat.length !== expected || flat.some((v) => typeof v !== "number" || !Number.isFinite(v))) {
    throw new Error(`candidates JSON: not a rectangular array of finite numbers of shape (${shape.join(", ")})`);
  }
  return float32Tensor(flat, shape);
}

export class ImaginePanel {
  constructor(config, showError) {
    this.config = config;
    this.showError = showError;
    this.size = config.image_size;
    this.player = new Player($("imagine-player"));
    this.candidatesJson = null;
    const canvas = $("start-canvas");
    canvas.width = canvas.height = this.size;
    this.canvas = canvas;

    const select = $("example");
    select.replaceChildren();
    for (const ex of config.examples || []) {
      select.append(el("option", { value: ex.url, dataset: { instruction: ex.instruction } }, ex.task));
    }
    select.append(el("option", { value: "" }, "uploaded frame"));
    select.addEventListener("change", () => this.pickExample());
    $("frame-file").addEventListener("change", (e) => this.upload(e.target.files[0]));
    $("kind").addEventListener("change", () => {
      $("candidates-file-label").hidden = $("kind").value !== "json";
    });
    $("candidates-file").addEventListener("change", (e) => this.readCandidates(e.target.files[0]));
    $("chunks").max = String(config.max_chunks || 8);
    // Verify only where the simulator has a judge to ask.
    $("verify").checked = Boolean(config.verify);
    $("verify").disabled = !config.verify;
    if (!config.verify) $("verify").parentElement.title = "this simulator has no judge (WMPO_JUDGE_URL)";
    $("imagine-run").addEventListener("click", () => this.run());
    if (select.options.length > 1) this.pickExample();
  }

  drawImage(image) {
    // Center-crop to a square, then scale to the model's frame size.
    const side = Math.min(image.naturalWidth || image.width, image.naturalHeight || image.height);
    const sx = ((image.naturalWidth || image.width) - side) / 2;
    const sy = ((image.naturalHeight || image.height) - side) / 2;
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.size, this.size);
    ctx.drawImage(image, sx, sy, side, side, 0, 0, this.size, this.size);
    this.hasFrame = true;
  }

  async loadImage(url) {
    const image = new Image();
    image.src = url;
    await image.decode();
    this.drawImage(image);
  }

  async pickExample() {
    const option = $("example").selectedOptions[0];
    if (!option || !option.value) return;
    $("instruction").value = option.dataset.instruction || "";
    try {
      await this.loadImage(option.value);
    } catch (err) {
      this.showError(`could not load the example frame: ${err.message || err}`);
    }
  }

  async upload(file) {
    if (!file) return;
    const url = URL.createObjectURL(file);
    try {
      await this.loadImage(url);
      $("example").value = "";
    } catch (_) {
      this.showError(`${file.name} is not an image the browser can read`);
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  async readCandidates(file) {
    this.candidatesJson = null;
    if (!file) return;
    try {
      this.candidatesJson = fromJson(JSON.parse(await file.text()));
      $("n").value = String(this.candidatesJson.shape[0]);
    } catch (err) {
      this.showError(`${file.name}: ${err.message}`);
    }
  }

  candidates() {
    const kind = $("kind").value;
    if (kind === "json") {
      if (!this.candidatesJson) throw new Error("choose a candidates JSON file first");
      return this.candidatesJson;
    }
    const n = Number($("n").value);
    const chunks = Number($("chunks").value);
    if (!(n >= 1 && n <= 64) || !(chunks >= 1 && chunks <= (this.config.max_chunks || 64))) {
      throw new Error(`N must be 1..64 and chunks 1..${this.config.max_chunks || 64}`);
    }
    return generated(kind, n, chunks, this.config.chunk_length, Number($("seed").value) || 0);
  }

  async run() {
    const button = $("imagine-run");
    let body;
    try {
      if (!this.hasFrame) throw new Error("pick an example frame or upload one first");
      const ctx = this.canvas.getContext("2d");
      body = {
        start_frames: frameTensor(ctx.getImageData(0, 0, this.size, this.size)),
        instruction: $("instruction").value,
        candidates: this.candidates(),
        seed: Number($("seed").value) || 0,
        verify: $("verify").checked,
        frame_encoding: "png",
      };
    } catch (err) {
      this.showError(err.message);
      return;
    }
    button.disabled = true;
    $("imagine-status").textContent = "imagining…";
    const started = performance.now();
    try {
      const result = await request("v1/imagine", { method: "POST", body });
      this.showError(null);
      this.render(result, this.canvas.toDataURL("image/png"));
      const total = ((performance.now() - started) / 1000).toFixed(2);
      const service = result.timing && result.timing.total != null ? `, service ${result.timing.total.toFixed(2)} s` : "";
      $("imagine-status").textContent = `done in ${total} s${service}, seed ${result.seed}, request ${result.request_id}`;
    } catch (err) {
      $("imagine-status").textContent = "";
      this.showError(describeError(err));
    } finally {
      button.disabled = false;
    }
  }

  render(result, startUrl) {
    const grid = $("imagine-results");
    grid.replaceChildren();
    this.player.clear();
    const verified = result.verdict != null;
    const summary = $("imagine-summary");
    summary.replaceChildren();
    if (verified) {
      summary.append(
        el("span", { className: `badge verdict ${result.verdict}` }, `verdict: ${result.verdict}`),
        el("span", {}, ` best candidate: ${result.best_candidate}`),
      );
    } else {
      summary.append(el("span", { className: "muted" }, "not verified: no judge confidences"));
    }
    summary.dataset.verdict = result.verdict || "";
    for (const cand of result.candidates) {
      const best = verified && cand.index === result.best_candidate;
      const figure = el("figure", { className: "candidate" + (best ? " best" : "") });
      const caption = el("figcaption", {}, el("strong", {}, `candidate ${cand.index}`), best ? " ★ best" : "");
      figure.append(caption);
      if (cand.confidence != null) {
        const confidence = el("div", { className: "confidence" },
          el("meter", { min: 0, max: 1, value: cand.confidence }),
          el("span", { className: "confidence-value" }, cand.confidence.toFixed(3)));
        figure.append(confidence);
      }
      grid.append(figure);
      // Frame 0 is the start frame as sent; then the imagined frames.
      this.player.add(figure, [startUrl, ...frameUrls(cand.frames)]);
    }
    this.player.play();
  }
}
