// Whole-dataset evaluation of a model version (a background job): its means per class, the
// images it used with their scores, and which of those images the version was trained or
// validated on (scores on them flatter the model). Optionally only on images it never saw.

import * as api from "./api";
import { $, $input, $select, esc, fmt, guard, notify, when } from "./ui";
import type { Evaluation, ImageRecord, ModelVersion } from "./api";
import { S } from "./app";

type Role = "train" | "validation";

let items: Evaluation[] = [];
let shownId = "";

/** The images a model version was trained on and validated on (from its record). */
export function versionRoles(model: string, version: number | null | undefined): Map<string, Role> {
  const out = new Map<string, Role>();
  const m = S.models.find((x) => x.name === model);
  const v: ModelVersion | undefined = m?.versions.find((x) => x.version === (version ?? m.current_version));
  if (!v) return out;
  const pairs = (v.trained_on ?? []) as Array<[string, number]>;
  const val = new Set(((v.metrics?.val_images ?? []) as Array<[string, number]>).map((p) => p[0]));
  for (const [id] of pairs) out.set(id, val.has(id) ? "validation" : "train");
  return out;
}

export async function loadDatasetEvaluations(show?: string): Promise<void> {
  const r = await api.get<{ items: Evaluation[] }>("/evaluations?kind=model-dataset&limit=20");
  items = r.items;
  if (show) shownId = show;
  if (!items.some((e) => e.id === shownId)) shownId = items[0]?.id ?? "";
  $select("#dev-list").innerHTML = items.map((e) =>
    `<option value="${esc(e.id)}">${esc(`${e.params.model} v${e.params.version}`)} · ${esc(when(e.created_at))}</option>`).join("")
    || `<option value="">none yet</option>`;
  $select("#dev-list").value = shownId;
  renderDatasetEvaluation();
}

function renderDatasetEvaluation(): void {
  const ev = items.find((e) => e.id === shownId);
  const box = $("#dev-result");
  if (!ev) {
    box.innerHTML = `<p class="muted">No whole-dataset evaluation yet.</p>`;
    return;
  }
  const res = ev.result;
  const classes = (res.classes ?? []) as string[];
  const perImage = (res.per_image ?? []) as Array<{ image_id: string; name: string; revision: number; classes: Record<string, Record<string, number | null>> }>;
  const mean = (res.mean ?? {}) as Record<string, Record<string, number | null>>;
  const roles = versionRoles(String(ev.params.model), Number(ev.params.version));
  const seen = perImage.filter((p) => roles.has(p.image_id));
  const trained = seen.filter((p) => roles.get(p.image_id) === "train").length;
  const note = seen.length
    ? `<p class="warn" id="dev-seen">${seen.length} of ${perImage.length} images were used to build v${esc(ev.params.version)} (${trained} trained on, ${seen.length - trained} validated on): their scores flatter the model.</p>`
    : `<p class="ok" id="dev-seen">None of these ${perImage.length} images was used to train or validate v${esc(ev.params.version)}.</p>`;
  box.innerHTML = `<p>${esc(ev.params.model)} v${esc(ev.params.version)} on ${perImage.length} image(s) with a final label,
      ${ev.params.image_ids ? "chosen images" : "all of them"} · mean Dice <b id="dev-mean">${fmt(res.mean_dice)}</b></p>${note}
    <table class="grid" id="dev-means"><thead><tr><th>Class</th><th>Dice</th><th>IoU</th><th>HD95 (mm)</th></tr></thead><tbody>
    ${classes.map((c) => `<tr><td>${esc(c)}</td><td class="num">${fmt(mean[c]?.dice)}</td><td class="num">${fmt(mean[c]?.iou)}</td><td class="num">${fmt(mean[c]?.hd95, 1)}</td></tr>`).join("")}
    </tbody></table>
    <div class="scroll small-table"><table class="grid" id="dev-images"><thead><tr><th>Image</th><th title="what building this model version used the image for">Used</th>${classes.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>
    ${perImage.map((p) => {
      const role = roles.get(p.image_id);
      return `<tr data-id="${esc(p.image_id)}" data-role="${role ?? "unseen"}"><td class="name" title="${esc(p.name)}, revision ${p.revision}">${esc(p.name)}</td>
        <td>${role ? `<span class="badge ${role === "train" ? "draft" : "none"}" title="${role === "train" ? "trained on" : "validated on (chose the best epoch)"}">${role === "train" ? "train" : "val"}</span>` : ""}</td>
        ${classes.map((c) => `<td class="num">${fmt(p.classes[c]?.dice)}</td>`).join("")}</tr>`;
    }).join("")}</tbody></table></div>`;
}

/** Every image with a final label (the pool a whole-dataset evaluation draws from). */
async function finalImages(): Promise<ImageRecord[]> {
  const out: ImageRecord[] = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await api.get<{ items: ImageRecord[]; total: number }>(`/images?label_state=final&offset=${offset}&limit=1000`);
    out.push(...page.items);
    if (!page.items.length || out.length >= page.total) return out;
  }
}

async function startJob(): Promise<void> {
  if (!S.model) throw new Error("choose a model first");
  const body: Record<string, unknown> = {};
  let what = "every final label";
  if ($input("#dev-unseen").checked) {
    const m = S.models.find((x) => x.name === S.model);
    const roles = versionRoles(S.model, m?.current_version);
    const ids = (await finalImages()).map((im) => im.id).filter((id) => !roles.has(id));
    if (!ids.length) throw new Error(`every image with a final label was used to train or validate ${S.model}; label more images first`);
    body.image_ids = ids;
    what = `${ids.length} image(s) it never saw`;
  }
  const job = await api.post<{ id: string }>(`/models/${encodeURIComponent(S.model)}/evaluate`, body);
  document.body.dataset.datasetEvalJob = job.id;
  notify(`Evaluation of ${S.model} on ${what} started; the result appears below when it is done.`, "ok");
}

/** A finished evaluation job: show its result (called from the live events and the job list). */
export function onEvaluateJobDone(job: { result?: Record<string, unknown> | null }): void {
  const id = job.result?.evaluation_id;
  void guard("Loading the evaluation", () => loadDatasetEvaluations(typeof id === "string" ? id : undefined));
}

$("#ev-model-job").addEventListener("click", () => void guard("Starting the evaluation job", startJob));
$select("#dev-list").addEventListener("change", () => {
  shownId = $select("#dev-list").value;
  renderDatasetEvaluation();
});
