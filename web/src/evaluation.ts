// Evaluation of the open image: Dice / IoU / HD95 per class, history, discrepancy map.

import * as api from "./api";
import { $, $input, $select, esc, fmt, guard, when } from "./ui";
import type { Evaluation } from "./api";
import { S } from "./app";
import { loadRevisions } from "./image";
import { fillOverlayChoices, showOverlay } from "./overlays";

export async function evaluate(): Promise<void> {
  if (!S.image) throw new Error("open an image first");
  const pred = $select("#ev-pred").value;
  const ref = $select("#ev-ref").value;
  const body: Record<string, unknown> = { image_id: S.image.id };
  if (pred.startsWith("model:")) body.model = pred.slice(6);
  else body.revision = Number(pred);
  if (ref) body.reference_revision = Number(ref);
  const ev = await api.post<Evaluation>("/evaluations", body);
  S.lastEval = ev;
  renderEvaluation(ev);
  await loadEvaluations();
  await loadRevisions();
  if ($input("#ev-show").checked && ev.discrepancy_url) await showOverlay("discrepancy", `eval:${ev.id}`);
}
/** No result shown (another image is open). */
export function clearEvaluation(): void {
  S.lastEval = null;
  $("#ev-result").innerHTML = "";
}
export function renderEvaluation(ev: Evaluation): void {
  const classes = (ev.result.classes ?? {}) as Record<string, Record<string, number | null>>;
  const mean = (ev.result.mean ?? {}) as Record<string, number | null>;
  const p = ev.params;
  const what = p.model ? `model ${p.model} v${p.version}` : `revision ${p.revision}`;
  $("#ev-result").innerHTML = `<p>${esc(what)} against revision ${esc(p.reference_revision)}</p>
    <table class="grid" id="ev-table"><thead><tr><th>Class</th><th>Dice</th><th>IoU</th><th>HD95 (mm)</th><th>Voxels (pred/ref)</th></tr></thead><tbody>
    ${Object.entries(classes).map(([k, c]) => `<tr><td>${esc(k)}</td><td class="num">${fmt(c.dice)}</td><td class="num">${fmt(c.iou)}</td><td class="num">${fmt(c.hd95, 1)}</td><td class="num">${fmt(c.pred_voxels, 0)}/${fmt(c.ref_voxels, 0)}</td></tr>`).join("")}
    <tr class="mean"><td>mean</td><td class="num">${fmt(mean.dice)}</td><td class="num">${fmt(mean.iou)}</td><td class="num">${fmt(mean.hd95, 1)}</td><td></td></tr></tbody></table>`;
}
export async function loadEvaluations(): Promise<void> {
  if (!S.image) return;
  const r = await api.get<{ items: Evaluation[] }>(`/evaluations?image_id=${encodeURIComponent(S.image.id)}&limit=20`);
  S.evaluations = r.items;
  fillOverlayChoices();
  $("#ev-history tbody").innerHTML = r.items.map((e) => {
    const p = e.params;
    return `<tr data-eval="${e.id}"><td>${when(e.created_at)}</td><td>${esc(p.model ? `${p.model} v${p.version}` : `r${p.revision}`)}</td>
      <td>r${esc(p.reference_revision)}</td><td class="num">${fmt((e.result.mean ?? {}).dice)}</td><td><button class="small show-ev">Show</button></td></tr>`;
  }).join("") || `<tr><td colspan="5" class="empty">No evaluations of this image yet.</td></tr>`;
  $("#ev-history tbody").querySelectorAll<HTMLButtonElement>(".show-ev").forEach((b) => b.addEventListener("click", () =>
    void guard("Showing the evaluation", async () => {
      const id = (b.closest("tr") as HTMLElement).dataset.eval!;
      const ev = r.items.find((x) => x.id === id)!;
      S.lastEval = ev;
      renderEvaluation(ev);
      await loadRevisions();
      if (ev.discrepancy_url) await showOverlay("discrepancy", `eval:${ev.id}`);
    })));
}
$("#ev-run").addEventListener("click", () => void guard("Evaluating", evaluate));
