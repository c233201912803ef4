// Models and their versions, the training form, jobs with live curves.

import * as api from "./api";
import { $, $input, $select, drawChart, esc, fmt, guard, notify, type Series } from "./ui";
import type { Job, ModelRecord } from "./api";
import { S, shortTime } from "./app";
import { fillOverlayChoices } from "./overlays";
import { onEvaluateJobDone } from "./dataset_eval";
import { checkFit } from "./fit";
import { showTab } from "./keys";

export async function loadModels(): Promise<void> {
  S.models = (await api.get<{ items: ModelRecord[] }>("/models")).items;
  const trained = S.models.filter((m) => m.current_version);
  if (!S.model || !trained.some((m) => m.name === S.model)) S.model = trained[0]?.name ?? "";
  $select("#model").innerHTML = trained.length
    ? trained.map((m) => `<option value="${esc(m.name)}">${esc(m.name)} v${m.current_version}</option>`).join("")
    : `<option value="">no trained model</option>`;
  $select("#model").value = S.model;
  renderModels();
  fillOverlayChoices();
  void checkFit(); // a new version may have been trained on other images
}

export function versionDice(v: Record<string, unknown>): string {
  const m = (v.metrics ?? {}) as Record<string, unknown>;
  const d = m.val_dice ?? m.dice ?? m.mean_dice;
  if (typeof d === "number") return fmt(d);
  if (d && typeof d === "object") {
    const vals = Object.values(d as Record<string, number>).filter((x) => typeof x === "number");
    return vals.length ? fmt(vals.reduce((a, b) => a + b, 0) / vals.length) : "–";
  }
  return "–";
}

export function renderModels(): void {
  $("#models").innerHTML = S.models.map((m) => {
    const rows = [...m.versions].reverse().map((v) => `<tr class="${v.version === m.current_version ? "sel" : ""}">
        <td class="num">v${v.version}</td><td title="${esc(v.created_at)}">${shortTime(v.created_at)}</td><td class="num" title="${esc(JSON.stringify(v.metrics ?? {}))}">${versionDice(v)}</td>
        <td>${v.version === m.current_version ? "✓ in use" : `<button class="small sel-v" data-model="${esc(m.name)}" data-version="${v.version}">Use</button>`}</td></tr>`).join("");
    return `<div class="model"><div class="mhead"><b>${esc(m.name)}</b> ${m.training_job ? '<span class="badge draft">training</span>' : ""}
      <button class="small rollback" data-model="${esc(m.name)}" ${m.versions.length < 2 ? "disabled" : ""}>Roll back</button></div>
      <table class="grid"><thead><tr><th>Version</th><th>Created</th><th title="validation Dice (mean over classes)">Val. Dice</th><th></th></tr></thead><tbody>${rows}</tbody></table></div>`;
  }).join("") || `<p class="muted">No models yet. Train one below.</p>`;
  $("#models").querySelectorAll<HTMLButtonElement>(".sel-v").forEach((b) => b.addEventListener("click", () =>
    void guard("Selecting the version", async () => {
      await api.post(`/models/${encodeURIComponent(b.dataset.model!)}/select`, { version: Number(b.dataset.version) });
      await loadModels();
    })));
  $("#models").querySelectorAll<HTMLButtonElement>(".rollback").forEach((b) => b.addEventListener("click", () =>
    void guard("Rolling back", async () => {
      await api.post(`/models/${encodeURIComponent(b.dataset.model!)}/rollback`);
      await loadModels();
    })));
}

export async function loadArchitectures(): Promise<void> {
  const r = await api.get<{ items: Array<{ name: string }> }>("/architectures");
  $select("#tr-arch").innerHTML = r.items.map((a) => `<option>${esc(a.name)}</option>`).join("");
  if (r.items.some((a) => a.name === "unet")) $select("#tr-arch").value = "unet";
}

export function trainConfig(): Record<string, unknown> {
  const num = (id: string) => $input(id).value.trim();
  const cfg: Record<string, unknown> = { arch: $select("#tr-arch").value };
  const ints: Array<[string, string]> = [["epochs", "#tr-epochs"], ["batch_size", "#tr-batch"], ["steps_per_epoch", "#tr-steps"]];
  for (const [k, id] of ints) {
    const v = num(id);
    if (!v) continue;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${k.replace(/_/g, " ")} must be a whole number of at least 1`);
    cfg[k] = n;
  }
  const lr = Number(num("#tr-lr"));
  if (!(lr > 0 && lr < 1)) throw new Error("learning rate must be between 0 and 1 (e.g. 0.002)");
  cfg.lr = lr;
  const vs = Number(num("#tr-val"));
  if (!(vs >= 0 && vs < 1)) throw new Error("validation fraction must be between 0 and 1 (e.g. 0.2)");
  cfg.val_split = vs;
  if (num("#tr-minutes")) {
    const mm = Number(num("#tr-minutes"));
    if (!(mm > 0)) throw new Error("time limit must be a positive number of minutes");
    cfg.max_minutes = mm;
  }
  return cfg;
}

$("#train-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void guard("Starting training", async () => {
    const name = $input("#tr-name").value.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name)) throw new Error("model name: letters, digits, '.', '_' or '-'");
    const body: Record<string, unknown> = { config: trainConfig() };
    const existing = S.models.find((m) => m.name === name);
    if ($input("#tr-finetune").checked && existing?.current_version) body.fine_tune = existing.current_version;
    const job = await api.post<Job>(`/models/${encodeURIComponent(name)}/train`, body);
    watchJob(job.id, []);
    notify(`Training of ${name} started.`, "ok");
    await loadJobs();
  });
});

// --- jobs and live curves -------------------------------------------------------------------------

export async function loadJobs(): Promise<void> {
  S.jobs = (await api.get<{ items: Job[] }>("/jobs?limit=8")).items;
  if (!S.watchedJob) {
    const train = S.jobs.find((j) => j.kind === "train");
    if (train) {
      const full = await api.get<Job>(`/jobs/${train.id}`);
      watchJob(train.id, full.metrics ?? []);
    }
  }
  renderJobs();
}

export function watchJob(id: string, metrics: Array<Record<string, unknown>>): void {
  S.watchedJob = id;
  S.jobMetrics = metrics;
  renderChart();
}

export function renderJobs(): void {
  $("#jobs").innerHTML = S.jobs.map((j) => {
    const active = j.state === "queued" || j.state === "running";
    const p = j.progress ?? 0;
    return `<div class="job ${j.id === S.watchedJob ? "sel" : ""}" data-job="${j.id}" data-state="${j.state}">
      <div><b>${esc(j.kind)}</b> ${esc(String(j.params.model ?? ""))} <span class="badge ${j.state}">${j.state}</span>
      ${active ? `<button class="small cancel" data-job="${j.id}">Cancel</button>` : ""}
      ${j.kind === "train" ? `<button class="small watch" data-job="${j.id}">Curves</button>` : ""}
      ${j.kind === "evaluate" && j.state === "done" ? `<button class="small ev-result" data-job="${j.id}" title="Show the means and the images used (Evaluate tab)">Result</button>` : ""}</div>
      <progress max="1" value="${p}"></progress> <small>${Math.round(p * 100)}% ${esc(j.message ?? "")}</small>
      ${j.error ? `<div class="err">${esc(j.error.split("\n")[0])} <button class="link jdetail">Details</button><pre hidden>${esc(j.error)}</pre></div>` : ""}</div>`;
  }).join("") || `<p class="muted">No jobs yet.</p>`;
  $("#jobs").querySelectorAll<HTMLButtonElement>(".cancel").forEach((b) => b.addEventListener("click", () =>
    void guard("Cancelling", async () => {
      await api.post(`/jobs/${b.dataset.job}/cancel`);
      await loadJobs();
    })));
  $("#jobs").querySelectorAll<HTMLButtonElement>(".watch").forEach((b) => b.addEventListener("click", () =>
    void guard("Loading the curves", async () => {
      const full = await api.get<Job>(`/jobs/${b.dataset.job}`);
      watchJob(full.id, full.metrics ?? []);
      renderJobs();
    })));
  $("#jobs").querySelectorAll<HTMLButtonElement>(".ev-result").forEach((b) => b.addEventListener("click", () => {
    const job = S.jobs.find((x) => x.id === b.dataset.job);
    if (!job) return;
    showTab("evaluate");
    onEvaluateJobDone(job);
  }));
  $("#jobs").querySelectorAll<HTMLButtonElement>(".jdetail").forEach((b) => b.addEventListener("click", () => {
    const pre = b.parentElement!.querySelector("pre")!;
    pre.hidden = !pre.hidden;
  }));
}

export function renderChart(): void {
  const loss: Array<[number, number]> = [];
  const dice: Array<[number, number]> = [];
  S.jobMetrics.forEach((m, i) => {
    const x = typeof m.step === "number" ? m.step : typeof m.epoch === "number" ? m.epoch : i;
    if (typeof m.loss === "number") loss.push([x, m.loss]);
    const vd = m.val_dice;
    if (typeof vd === "number") dice.push([x, vd]);
    else if (vd && typeof vd === "object") {
      const vals = Object.values(vd as Record<string, number>).filter((v) => typeof v === "number");
      if (vals.length) dice.push([x, vals.reduce((a, b) => a + b, 0) / vals.length]);
    }
  });
  const series: Series[] = [{ name: "loss", color: "#f0a030", points: loss }, { name: "val Dice", color: "#50c0f0", points: dice }];
  drawChart($("#chart") as HTMLCanvasElement, series, "step");
  $("#chart-title").textContent = S.watchedJob ? `job ${S.watchedJob.slice(0, 8)}` : "";
}
