// Opening an image, the editable label's revision, and the revision history.

import * as api from "./api";
import { gunzipIfNeeded } from "./nifti";
import { $, $select, esc, guard, notify } from "./ui";
import type { ImageRecord, Revision } from "./api";
import { S, viewer, editor, marks, labelLut, fetchLabel, shortTime, setStatus } from "./app";
import { renderRulers } from "./tools";
import { renderWorklist } from "./worklist";
import { fillOverlayChoices, showOverlay, clearOverlays } from "./overlays";
import { showWindow, syncUrl } from "./display";
import { renderEditState } from "./session";
import { renderExport, renderSendPacs } from "./export";
import { loadEvaluations, clearEvaluation } from "./evaluation";
import { checkFit } from "./fit";

export async function closeSession(): Promise<void> {
  const s = S.session;
  S.session = null;
  if (s) await api.request("DELETE", `/sessions/${s.id}`).catch(() => undefined);
}

export function confirmDiscard(): boolean {
  return !editor.dirty || window.confirm("Your changes to this label are not saved. Discard them?");
}

const PREVIEW_WAIT_MS = 300; // the longest a PACS series waits for its middle slice to be shown
let opening = 0; // the latest openImage call: an earlier one that is still loading gives way
let showing: Promise<void> = Promise.resolve();

export async function openImage(id: string, force = false): Promise<void> {
  if (!force && !confirmDiscard()) return;
  const mine = ++opening;
  await guard("Opening the image", async () => {
    const t0 = performance.now();
    setStatus(`Loading ${id}…`);
    await closeSession();
    // the record, the volume and the latest label at once: the first slices come with their label
    const recP = api.get<ImageRecord>(`/images/${encodeURIComponent(id)}`);
    const labelP = recP.then((r) => (r.latest_revision ? fetchLabel(r.id, r.latest_revision) : null));
    // A PACS series not fetched yet ("dw-" ids; the record says): its middle slice comes first (small
    // requests, drawn at once) and the series is asked for when it is in, or after PREVIEW_WAIT_MS at
    // most. On a 2-core server both at once slowed each other: the slice came at 0.29 s instead of
    // 0.10 s and the series 0.2 s later than alone.
    let volumeIn = false;
    let slicePreviewAt: number | null = null;
    const volumeUrl = `/images/${encodeURIComponent(id)}/volume`;
    const volP = (async () => {
      if (id.startsWith("dw-")) {
        const r = await recP.catch(() => null);
        if (r && r.metadata?.fetched === false) {
          const shown = (async () => {
            const p = await api.binary("GET", `/images/${encodeURIComponent(id)}/preview`).catch(() => null);
            if (!p || volumeIn || mine !== opening) return;
            const raw = await gunzipIfNeeded(p.data);
            if (volumeIn || mine !== opening) return;
            if (await viewer.showSlicePreview(raw, $select("#wl-preset").value)) slicePreviewAt = performance.now();
          })().catch(() => undefined);
          await Promise.race([shown, new Promise((r) => setTimeout(r, PREVIEW_WAIT_MS))]);
        }
      }
      return api.binary("GET", volumeUrl);
    })().finally(() => { volumeIn = true; });
    const [listed, vol, mask] = await Promise.all([recP, volP, labelP]);
    // a PACS series not fetched yet is described by its listing (no shape or spacing): now it is here
    const rec = listed.metadata?.fetched === false ? await api.get<ImageRecord>(`/images/${encodeURIComponent(id)}`) : listed;
    const raw = await gunzipIfNeeded(vol.data);
    // one image is put on screen at a time; a call overtaken by a newer one gives way
    const before = showing;
    let release = () => {};
    showing = new Promise<void>((r) => (release = r));
    try {
      await before;
      if (mine !== opening) return;
      await clearOverlays();
      marks.rulers = []; // measurements belong to the image they were made on
      marks.clicks = [];
      const shown = await viewer.loadImage(raw, rec.name, labelLut(), $select("#wl-preset").value, mask);
      showWindow(shown.window);
      S.image = rec;
      clearEvaluation(); // the previous image's result must not stay on screen
      syncUrl({ image: rec.id });
      await viewer.presented(); // the first slices, with their label, are on screen
      viewer.hidePreview();
      S.stats.openMs = Math.round(performance.now() - t0);
      const previewAt = slicePreviewAt ?? shown.previewAt;
      S.stats.previewMs = previewAt === null ? null : Math.round(previewAt - t0);
      await loadRevisionIntoEditor(rec.latest_revision, mask);
      S.stats.opens++;
      document.body.dataset.imageId = rec.id;
      renderRulers();
      document.body.dataset.opens = String(S.stats.opens);
      renderWorklist();
      renderImageInfo();
      void checkFit();
      await Promise.all([loadRevisions(), loadEvaluations()]);
      setStatus(`${rec.name}: ${rec.shape.join("×")} voxels, ${rec.spacing.map((v) => v.toFixed(2)).join("×")} mm — ` +
        `shown with its label in ${S.stats.openMs} ms` + (S.stats.previewMs === null ? "" : ` (a 2-D preview after ${S.stats.previewMs} ms)`));
    } finally {
      release();
    }
  });
}

/** Show a revision (or an empty label) as the editable label; drops history and session. */
export async function loadRevisionIntoEditor(rev: number | null, fetched: Uint8Array | null = null): Promise<void> {
  if (!S.image) return;
  await closeSession();
  const mask = fetched ?? (rev ? await fetchLabel(S.image.id, rev) : new Uint8Array(viewer.voxels));
  S.shownRevision = rev;
  S.viewRevision = rev;
  S.baseRevision = S.image.latest_revision;
  editor.reset(mask);
  renderEditState();
}

export function renderImageInfo(): void {
  renderExport();
  const im = S.image;
  $("#image-info").innerHTML = im
    ? `<b>${esc(im.name)}</b> · ${esc(im.modality ?? "")} · ${im.shape.join("×")} · label: <span class="badge ${im.label_state}">${im.label_state}</span>`
    : "No image open";
}

// --- revisions ------------------------------------------------------------------------------------

export async function loadRevisions(): Promise<void> {
  if (!S.image) return;
  const r = await api.get<{ items: Revision[] }>(`/images/${encodeURIComponent(S.image.id)}/labels`);
  S.revisions = r.items;
  const rows = [...r.items].reverse().map((v) => `<tr data-rev="${v.revision}" class="${v.revision === S.viewRevision ? "sel" : ""}">
      <td>r${v.revision} <span class="badge ${v.status}">${v.status}</span></td>
      <td class="who" title="${esc(v.author)} · ${esc(v.source)}">${esc(v.author)}<br><small>${esc(v.source)}</small></td><td title="${esc(v.created_at)}">${shortTime(v.created_at)}</td>
      <td class="btns"><button class="small load">Load</button><button class="small cmp" title="Show as the comparison layer">Overlay</button></td></tr>`);
  $("#revisions tbody").innerHTML = rows.join("") || `<tr><td colspan="6" class="empty">No label yet.</td></tr>`;
  fillOverlayChoices();
  // evaluation form choices
  const revOpts = [...r.items].reverse().map((v) => `<option value="${v.revision}">r${v.revision} · ${v.status} · ${esc(v.author)}</option>`).join("");
  $select("#ev-pred").innerHTML = revOpts + S.models.filter((m) => m.current_version).map((m) => `<option value="model:${esc(m.name)}">model ${esc(m.name)} v${m.current_version}</option>`).join("");
  $select("#ev-ref").innerHTML = `<option value="">latest final revision</option>` + revOpts;
  if (r.items.length > 1) $select("#ev-pred").value = String(r.items[r.items.length - 1].revision);
  renderSendPacs(); // the shown revision's status decides whether it can go to the PACS
}

$("#revisions tbody").addEventListener("click", (e) => {
  const t = e.target as HTMLElement;
  const tr = t.closest("tr[data-rev]") as HTMLElement | null;
  if (!tr) return;
  const rev = Number(tr.dataset.rev);
  if (t.classList.contains("load")) {
    if (!confirmDiscard()) return;
    void guard(`Loading revision ${rev}`, async () => {
      await loadRevisionIntoEditor(rev);
      await loadRevisions();
      notify(`Revision ${rev} loaded. Saving will create a new revision on top of r${S.baseRevision}.`, "info");
    });
  } else if (t.classList.contains("cmp")) {
    void guard("Showing the revision", () => showOverlay("reference", `rev:${rev}`));
  }
});
