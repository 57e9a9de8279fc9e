// The trainer panel: a GRPO job's progress and per-step metrics as plots (uPlot), filled from
// the job's record and then live from its NDJSON event stream (GET /v1/jobs/{id}/events).

import uPlot from "./vendor/uPlot.esm.js";
import { describeError, ndjson, request } from "./api.js";
import { el } from "./player.js";

const $ = (id) => document.getElementById(id);

// Each plot: a title and its series, a series reading one number from a step's metrics.
const PLOTS = [
  { title: "reward (mean over the step's groups)", series: [["reward", (m) => m.reward]] },
  { title: "imagined success", series: [["imagined success", (m) => m.imagined_success]] },
  {
    title: "informative groups",
    series: [
      ["kept (informative)", (m) => m.groups_kept],
      ["imagined", (m) => m.groups_imagined],
      ["discarded (DNV)", (m) => m.groups_discarded],
    ],
  },
  {
    title: "step time (s)",
    series: [
      ["step", (m) => m.seconds && m.seconds.step],
      ["imagine", (m) => m.seconds && m.seconds.imagine],
      ["judge", (m) => m.seconds && m.seconds.judge],
      ["update", (m) => m.seconds && m.seconds.update],
    ],
  },
];
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

export class JobsPanel {
  constructor(config, showError, fragment) {
    this.showError = showError;
    this.wanted = fragment.get("job");
    this.abort = null;
    this.jobId = null;
    this.steps = []; // metrics of every step shown, by step
    this.streamed = 0;
    this.plots = [];
    $("job-select").addEventListener("change", () => this.follow($("job-select").value));
    $("jobs-refresh").addEventListener("click", () => this.loadJobs());
    this.loadJobs();
  }

  async loadJobs() {
    const select = $("job-select");
    try {
      const out = await request("v1/jobs?limit=100");
      const current = this.jobId || this.wanted;
      select.replaceChildren();
      for (const job of out.jobs) {
        const tasks = (job.config.tasks || []).join(", ");
        select.append(el("option", { value: job.job_id }, `${job.job_id} (${job.state}, ${tasks})`));
      }
      if (!out.jobs.length) {
        select.append(el("option", { value: "" }, "no jobs yet"));
        return;
      }
      const pick = out.jobs.some((j) => j.job_id === current) ? current : out.jobs[0].job_id;
      select.value = pick;
      if (pick !== this.jobId) await this.follow(pick);
    } catch (err) {
      this.showError(describeError(err));
    }
  }

  makePlots() {
    const box = $("job-plots");
    box.replaceChildren();
    const width = Math.max(320, Math.min(560, (box.clientWidth || 1100) / 2 - 16));
    this.plots = PLOTS.map((spec) => {
      const holder = el("div", { className: "plot" });
      box.append(holder);
      const opts = {
        title: spec.title,
        width,
        height: 220,
        scales: { x: { time: false } },
        // Whole steps on the x axis.
        axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
        series: [
          { label: "step" },
          ...spec.series.map(([label], i) => ({ label, stroke: COLORS[i], width: 2, points: { size: 6 } })),
        ],
      };
      return new uPlot(opts, [[], ...spec.series.map(() => [])], holder);
    });
  }

  redraw() {
    const steps = this.steps.filter(Boolean);
    const xs = steps.map((m) => m.step);
    PLOTS.forEach((spec, p) => {
      this.plots[p].setData([xs, ...spec.series.map(([, read]) => steps.map((m) => number(read(m))))]);
    });
    const box = $("job-plots");
    box.dataset.steps = String(steps.length);
    box.dataset.streamed = String(this.streamed);
  }

  addStep(metrics) {
    if (!metrics || typeof metrics.step !== "number") return;
    this.steps[metrics.step] = metrics;
    const progress = $("job-progress");
    if (metrics.step > progress.value) {
      progress.value = metrics.step;
      $("job-step").textContent = `step ${metrics.step} of ${progress.max}`;
    }
    this.redraw();
  }

  showJob(job) {
    const state = $("job-state");
    state.textContent = job.state;
    state.className = `badge state-${job.state}`;
    $("job-plots").dataset.state = job.state;
    $("job-step").textContent = `step ${job.step} of ${job.steps}`;
    $("job-progress").max = job.steps || 1;
    $("job-progress").value = job.step;
    $("job-error").textContent = job.error ? `error: ${job.error}` : "";
    const option = [...$("job-select").options].find((o) => o.value === job.job_id);
    if (option) option.textContent = option.textContent.replace(/\((\w+),/, `(${job.state},`);
  }

  async follow(jobId) {
    if (this.abort) this.abort.abort();
    this.jobId = jobId;
    this.steps = [];
    this.streamed = 0;
    this.makePlots();
    this.redraw();
    if (!jobId) return;
    const controller = new AbortController();
    this.abort = controller;
    try {
      const job = await request(`v1/jobs/${encodeURIComponent(jobId)}`, { signal: controller.signal });
      this.showJob(job);
      for (const m of job.metrics) this.addStep(m);
      // Then live: every step after those, state changes, and the end.
      const events = ndjson(`v1/jobs/${encodeURIComponent(jobId)}/events?after_step=${job.metrics.length}`,
        { signal: controller.signal });
      for await (const event of events) {
        if (controller.signal.aborted) return;
        if (event.event === "step") {
          this.streamed += 1;
          this.addStep(event.metrics);
        } else if (event.event === "state" || event.event === "end") {
          this.showJob(event.job);
        } else if (event.event === "error") {
          this.showError(`the job's event stream failed: ${event.error.message}`);
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") this.showError(describeError(err));
    }
  }
}
