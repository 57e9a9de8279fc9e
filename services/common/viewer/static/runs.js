// The recorded-runs panel: episode datasets under the simulator's runs directory
// (GET /v1/runs...); an imagined episode plays next to the real one it replays.

import { describeError, frameUrls, request } from "./api.js";
import { Player, el } from "./player.js";

const $ = (id) => document.getElementById(id);

export class RunsPanel {
  constructor(config, showError) {
    this.showError = showError;
    this.player = new Player($("runs-player"));
    $("run-select").addEventListener("change", () => this.loadEpisodes());
    $("episode-select").addEventListener("change", () => this.loadEpisode());
    $("runs-refresh").addEventListener("click", () => this.loadRuns());
    this.loadRuns();
  }

  async loadRuns() {
    const select = $("run-select");
    select.replaceChildren();
    try {
      const out = await request("v1/runs");
      if (!out.configured) {
        $("runs-info").textContent =
          "This simulator has no runs directory: start it with WMPO_RUNS_DIR=DIR (episode datasets under DIR).";
        return;
      }
      if (!out.runs.length) {
        $("runs-info").textContent = "No recorded runs in the runs directory yet.";
        return;
      }
      for (const run of out.runs) {
        const paired = run.real_run ? ` vs ${run.real_run}` : "";
        select.append(el("option", { value: run.name },
          `${run.name} (${run.kind}${paired}, ${run.episodes} episodes)`));
      }
      // First shown: an imagined run with its real run here (the side-by-side view), if any.
      const paired = out.runs.find((run) => run.real_run);
      if (paired) select.value = paired.name;
      await this.loadEpisodes();
    } catch (err) {
      this.showError(describeError(err));
    }
  }

  async loadEpisodes() {
    const run = $("run-select").value;
    const select = $("episode-select");
    select.replaceChildren();
    if (!run) return;
    try {
      const out = await request(`v1/runs/episodes?run=${encodeURIComponent(run)}`);
      for (const ep of out.episodes) {
        const outcome = ep.succeeded ? "success" : "failure";
        select.append(el("option", { value: String(ep.index) },
          `#${ep.index} ${ep.task} seed ${ep.seed ?? "?"}, ${ep.length} steps, ${outcome}`));
      }
      $("runs-info").textContent = out.kind === "imagined"
        ? (out.real_run ? `imagined replays of ${out.real_run}` : "imagined replays (their real run is not in the runs directory)")
        : "real episodes";
      await this.loadEpisode();
    } catch (err) {
      this.showError(describeError(err));
    }
  }

  async loadEpisode() {
    const run = $("run-select").value;
    const index = $("episode-select").value;
    if (!run || index === "") return;
    try {
      const out = await request(`v1/runs/episode?run=${encodeURIComponent(run)}&index=${index}`);
      this.showError(null);
      this.render(out);
    } catch (err) {
      this.showError(describeError(err));
    }
  }

  render(out) {
    const grid = $("runs-results");
    grid.replaceChildren();
    this.player.clear();
    const ep = out.episode;
    const imagined = out.real !== null;
    const label = imagined ? "imagined" : "recorded";
    const main = el("figure", { className: "clip" },
      el("figcaption", {}, el("strong", {}, `${label}: ${out.run} #${ep.index}`),
        ` ${ep.instruction || ep.task}`));
    grid.append(main);
    this.player.add(main, frameUrls(out.frames), out.success);
    if (out.real) {
      const real = el("figure", { className: "clip" },
        el("figcaption", {}, el("strong", {}, `real: ${out.real.run} #${out.real.index}`),
          ` every ${ep.frame_stride} steps`));
      grid.append(real);
      this.player.add(real, frameUrls(out.real.frames), out.real.success);
    }
    this.player.play();
  }
}
