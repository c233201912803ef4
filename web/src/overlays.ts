// Overlays: a reference revision, a model's prediction, an evaluation's discrepancy map.

import * as api from "./api";
import { OVERLAY_SLOTS, type LutEntry, type OverlaySlot } from "./viewer";
import { readLabel } from "./nifti";
import { $, $input, $select, esc, guard } from "./ui";
import { S, viewer, lutEntries, fetchLabel, setStatus } from "./app";

export const overlayKey: Record<OverlaySlot, string> = { reference: "", prediction: "", discrepancy: "" }; // what is shown
export const overlayNote: Record<OverlaySlot, string> = { reference: "", prediction: "", discrepancy: "" };
export const overlayCache = new Map<string, { data: Uint8Array; note: string }>(); // per open image

/** The choices of each overlay: revisions, trained models, evaluations with a discrepancy map. */
export function fillOverlayChoices(): void {
  const revs = [...S.revisions].reverse();
  const fill = (slot: OverlaySlot, opts: Array<[string, string]>, fallback: string) => {
    const sel = $select(`#ov-${slot}`);
    const cur = sel.value;
    sel.innerHTML = opts.length ? opts.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join("")
      : `<option value="">${esc(fallback)}</option>`;
    if (opts.some(([v]) => v === cur)) sel.value = cur;
  };
  fill("reference", revs.map((v) => [`rev:${v.revision}`, `r${v.revision} ${v.status} · ${v.author}`]), "no revision");
  const finals = revs.filter((v) => v.status === "final");
  if (!overlayKey.reference && finals.length) $select("#ov-reference").value = `rev:${finals[0].revision}`;
  fill("prediction", S.models.filter((m) => m.current_version).map((m) => [`model:${m.name}`, `${m.name} v${m.current_version}`]), "no trained model");
  if (!overlayKey.prediction && S.model) $select("#ov-prediction").value = `model:${S.model}`;
  fill("discrepancy", S.evaluations.filter((e) => e.discrepancy_url).map((e) => {
    const p = e.params;
    return [`eval:${e.id}`, `${p.model ? `${p.model} v${p.version}` : `r${p.revision}`} vs r${p.reference_revision}`];
  }), "evaluate first");
}

export function tint(mix: number, toward: [number, number, number]): LutEntry[] {
  return lutEntries().map((e) => ({ ...e, color: e.color.map((c, k) => Math.round(c + (toward[k] - c) * mix)) as [number, number, number] }));
}

/** What an overlay choice shows now: a prediction changes with the model's current version. */
export function versioned(key: string): string {
  if (!key.startsWith("model:")) return key;
  const m = S.models.find((x) => x.name === key.slice(6));
  return `${key}@${m?.current_version ?? "?"}`;
}

export async function overlayData(slot: OverlaySlot, key: string): Promise<{ data: Uint8Array; note: string }> {
  const hit = overlayCache.get(versioned(key));
  if (hit) return hit;
  const image = S.image!;
  const arg = key.slice(key.indexOf(":") + 1);
  let out: { data: Uint8Array; note: string };
  if (slot === "reference") {
    const rev = S.revisions.find((r) => r.revision === Number(arg));
    out = { data: await fetchLabel(image.id, Number(arg)), note: `revision ${arg}${rev ? ` (${rev.status}, ${rev.author})` : ""}` };
  } else if (slot === "prediction") {
    const t0 = performance.now();
    const { data, headers } = await api.binary("POST", `/models/${encodeURIComponent(arg)}/infer`, { image_id: image.id });
    out = { data: (await readLabel(data)).data, note: `${arg} v${headers.get("X-Segloop-Version") ?? "?"}, ${Math.round(performance.now() - t0)} ms` };
  } else {
    const { data } = await api.binary("GET", `/evaluations/${encodeURIComponent(arg)}/discrepancy`);
    out = { data: (await readLabel(data)).data, note: "" };
  }
  if (S.image?.id === image.id) overlayCache.set(versioned(key), out);
  return out;
}

export function overlayColors(slot: OverlaySlot, key: string): LutEntry[] {
  if (slot === "reference") return tint(0.55, [255, 255, 255]); // the class colours, lighter
  if (slot === "prediction") return tint(0.45, [255, 230, 0]); // the class colours, towards yellow
  const ev = S.evaluations.find((e) => `eval:${e.id}` === key) ?? S.lastEval;
  return ((ev?.result.legend ?? []) as LutEntry[]).map((l) => ({ value: l.value, name: l.name, color: l.color }));
}

/** Bring one overlay in line with its checkbox and choice. */
export async function updateOverlay(slot: OverlaySlot): Promise<void> {
  const key = $input(`#ov-${slot}-on`).checked ? $select(`#ov-${slot}`).value : "";
  if (!S.image || !key) {
    if (viewer.hasOverlay(slot)) await viewer.setOverlay(slot, null);
    overlayKey[slot] = "";
  } else if (overlayKey[slot] !== versioned(key) || !viewer.hasOverlay(slot)) {
    setStatus(`Loading the ${slot} overlay…`);
    const { data, note } = await overlayData(slot, key);
    if ($select(`#ov-${slot}`).value !== key || !$input(`#ov-${slot}-on`).checked) return; // changed meanwhile
    await viewer.setOverlay(slot, data, overlayColors(slot, key));
    overlayKey[slot] = versioned(key);
    overlayNote[slot] = note;
    setStatus(`${slot} overlay: ${note || key}`);
  }
  renderOverlayLegend();
}

/** Show `key` (rev:N, model:NAME, eval:ID) in an overlay, switching it on. */
export async function showOverlay(slot: OverlaySlot, key: string): Promise<void> {
  fillOverlayChoices();
  $select(`#ov-${slot}`).value = key;
  $input(`#ov-${slot}-on`).checked = true;
  await updateOverlay(slot);
}

export async function clearOverlays(): Promise<void> {
  overlayCache.clear();
  for (const slot of OVERLAY_SLOTS) {
    $input(`#ov-${slot}-on`).checked = false;
    if (viewer.hasOverlay(slot)) await viewer.setOverlay(slot, null);
    overlayKey[slot] = "";
  }
  renderOverlayLegend();
}

export function renderOverlayLegend(): void {
  const sw = (c: [number, number, number]) => `<span class="sw" style="background:rgb(${c.join(",")})"></span>`;
  const lines = OVERLAY_SLOTS.filter((s) => overlayKey[s]).map((s) => {
    const cols = overlayColors(s, overlayKey[s]).filter((e) => e.value !== 0);
    return `<div><b>${s}</b> ${esc(overlayNote[s])}<br>${cols.map((e) => `${sw(e.color)}${esc(e.name)}`).join(" ")}</div>`;
  });
  $("#overlay-legend").innerHTML = lines.join("");
  document.body.dataset.overlays = OVERLAY_SLOTS.filter((s) => overlayKey[s]).join(",");
}

for (const slot of OVERLAY_SLOTS) {
  const run = () => void guard(`Showing the ${slot} overlay`, () => updateOverlay(slot));
  $input(`#ov-${slot}-on`).addEventListener("change", run);
  $select(`#ov-${slot}`).addEventListener("change", () => {
    $input(`#ov-${slot}-on`).checked = true;
    run();
  });
  $input(`#ov-${slot}-opacity`).addEventListener("input", () => viewer.setOverlayOpacity(slot, Number($input(`#ov-${slot}-opacity`).value)));
}
