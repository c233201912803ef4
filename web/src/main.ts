// segloop web app: worklist and upload, viewer, correction (clicks, brush), save with conflict
// handling, revision history, models and training with live curves, evaluation, export.

import "./style.css";
import * as api from "./api";
import type { Evaluation, ImageRecord, Job, LabelClass, ModelRecord, Revision, Schema } from "./api";
import { Editor, type ClickGroup, type ServerMask, type SessionBackend } from "./editor";
import { gunzipIfNeeded, gzip, readLabel, writeLabel } from "./nifti";
import { $, $input, $select, drawChart, esc, fmt, guard, notify, showError, when, type Series } from "./ui";
import { OVERLAY_SLOTS, PRESETS, Viewer, type LutEntry, type OverlaySlot, type ViewMode } from "./viewer";
import { HELP, SHELL } from "./shell";

type Tool = "navigate" | "positive" | "negative" | "brush" | "eraser" | "fill";

interface Session {
  id: string; model: string; version: number; initial: number | null;
  /** The mask of one step of the session as the server sent it: later responses send only the
   * box that changed since (`?since=`), applied here in place. */
  held?: { step: number; mask: Uint8Array };
}

const S = {
  me: { name: "", role: "annotator" },
  schema: { classes: [] as LabelClass[] } as Schema,
  images: [] as ImageRecord[],
  total: 0,
  offset: 0,
  pageSize: 100,
  filter: "" as "" | "none" | "draft" | "final",
  strategy: "",
  modelStrategies: new Set<string>(), // strategies that rank with the chosen model (GET /next?model=)
  queueNote: "",
  queue: new Map<string, { rank: number; score: number | null }>(),
  image: null as ImageRecord | null,
  revisions: [] as Revision[],
  shownRevision: null as number | null, // the revision whose mask is the editor's base
  viewRevision: null as number | null, // the revision the view equals (loaded or just saved)
  baseRevision: null as number | null, // the latest revision when editing began (for 409)
  models: [] as ModelRecord[],
  model: "",
  session: null as Session | null,
  tool: "navigate" as Tool,
  classValue: 1,
  brush: 3,
  sphere: false,
  watchedJob: null as string | null,
  jobMetrics: [] as Array<Record<string, unknown>>,
  jobs: [] as Job[],
  lastEval: null as Evaluation | null,
  evaluations: [] as Evaluation[], // of the open image, newest first
  features: { putLabel: false, redo: false, dicomSeg: false, sendPacs: false }, // optional server routes, from its OpenAPI schema
  pacs: null as { dicomweb: boolean; url: string | null; ephemeral: boolean } | null, // GET /pacs, when offered
  sending: false, // a "send to PACS" is on its way
  sent: new Map<string, { at: string; sop: string }>(), // "image:revision" -> sent from this browser (or seen in the events)
  scoringJob: null as string | null,
  stats: {
    openMs: 0, previewMs: null as number | null, opens: 0, clickServerMs: 0, clickShownMs: 0, clicks: 0, pushMs: 0, pushes: 0,
    clickLog: [] as Array<Record<string, number>>,
  },
};
(window as unknown as { segloop: unknown }).segloop = S;

document.querySelector("#app")!.innerHTML = SHELL;
const canvas = $("#gl") as HTMLCanvasElement;
const viewer = new Viewer(canvas, $("#preview") as HTMLCanvasElement);
const editor = new Editor(viewer);
// read-only hooks for the browser tests and for debugging in the console
(window as unknown as { segloopDebug: unknown }).segloopDebug = {
  counts(): Record<number, number> {
    const out: Record<number, number> = {};
    for (const v of editor.current()) out[v] = (out[v] ?? 0) + 1;
    return out;
  },
  value(i: number, j: number, k: number): number {
    const [nx, ny] = viewer.dims;
    return editor.current()[i + nx * (j + ny * k)];
  },
  dirty: () => editor.dirty,
  /** The file voxel under a page position (clientX, clientY), or null. */
  voxelAt(x: number, y: number): number[] | null {
    return viewer.voxelAt(new MouseEvent("mousemove", { clientX: x, clientY: y }))?.vox ?? null;
  },
  viewer,
};

// --- helpers --------------------------------------------------------------------------------------

function lutEntries(): LutEntry[] {
  return S.schema.classes.map((c) => ({ value: c.value, name: c.name, color: c.color }));
}
function foreground(): LabelClass[] {
  return S.schema.classes.filter((c) => c.value !== 0);
}
function className(v: number): string {
  return S.schema.classes.find((c) => c.value === v)?.name ?? String(v);
}
function can(role: string): boolean {
  const order = ["annotator", "reviewer", "admin"];
  return order.indexOf(S.me.role) >= order.indexOf(role);
}
async function fetchLabel(imageId: string, rev: number | "latest"): Promise<Uint8Array> {
  const { data } = await api.binary("GET", `/images/${encodeURIComponent(imageId)}/labels/${rev}`);
  return (await readLabel(data)).data;
}
function shortTime(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
function setStatus(text: string): void {
  $("#status").textContent = text;
}
function download(blob: Blob, name: string): void {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  setTimeout(() => {
    URL.revokeObjectURL(a.href);
    a.remove();
  }, 1000);
}

// --- worklist -------------------------------------------------------------------------------------

interface NextItem { image: ImageRecord; score: number | null; rank?: number }
interface NextPage { items: NextItem[]; remaining_unlabeled: number; model?: string; version?: number }

/** GET /next: the ranked queue, or null while the server scores the pool (202 with a job). */
async function fetchNext(strategy: string, count: number): Promise<NextPage | null> {
  const q = new URLSearchParams({ strategy, count: String(count) });
  if (S.modelStrategies.has(strategy)) {
    if (!S.model) throw new Error(`The ${strategy} ranking needs a trained model; choose one in the model list.`);
    q.set("model", S.model);
  }
  const res = await api.request("GET", `/next?${q}`);
  const body = (await res.json()) as Record<string, any>;
  if (res.status === 202) {
    const job = (body.job ?? body) as Partial<Job>;
    const id = String(body.job_id ?? job.id ?? "");
    if (id) watchScoring(id, job, strategy);
    return null;
  }
  return body as NextPage;
}

async function loadWorklist(): Promise<void> {
  const q = new URLSearchParams({ offset: String(S.offset), limit: String(S.pageSize) });
  if (S.filter) q.set("label_state", S.filter);
  const page = await api.get<{ items: ImageRecord[]; total: number }>(`/images?${q}`);
  S.images = page.items;
  S.total = page.total;
  S.queue = new Map();
  S.queueNote = "";
  if (S.strategy) {
    const next = await fetchNext(S.strategy, 100);
    if (next) {
      S.queue = new Map(next.items.map((it, i) => [it.image.id, { rank: it.rank ?? i + 1, score: it.score }]));
      // the queue is the worklist while a strategy is chosen: ranked unlabeled images first
      S.images = next.items.map((it) => it.image);
      S.total = next.remaining_unlabeled;
      S.queueNote = next.model ? ` with ${next.model}${next.version ? ` v${next.version}` : ""}` : "";
    } else {
      S.queueNote = " (scoring…)";
    }
  }
  renderWorklist();
}

/** A scoring job runs before a model-based ranking can be shown: its progress above the list. */
function watchScoring(id: string, job: Partial<Job>, strategy: string): void {
  const first = S.scoringJob !== id;
  S.scoringJob = id;
  $("#scoring").hidden = false;
  document.body.dataset.scoring = id;
  renderScoring(job.progress ?? 0, job.message || `Scoring the unlabeled images for ${strategy}…`);
  if (!first) return;
  const poll = async (): Promise<void> => {
    if (S.scoringJob !== id) return;
    const j = await api.get<Job>(`/jobs/${encodeURIComponent(id)}?metrics=false`).catch(() => null);
    if (j && S.scoringJob === id) onScoringState(j);
    if (S.scoringJob === id) window.setTimeout(() => void poll(), 1500);
  };
  window.setTimeout(() => void poll(), 1500);
}

function renderScoring(progress: number, message: string): void {
  ($("#scoring-bar") as HTMLProgressElement).value = progress;
  $("#scoring-text").textContent = `${message} ${Math.round(progress * 100)}%`;
}

function onScoringState(j: Partial<Job>): void {
  if (j.id !== S.scoringJob) return;
  if (j.state === "queued" || j.state === "running") {
    renderScoring(j.progress ?? 0, j.message || "Scoring the unlabeled images…");
    return;
  }
  S.scoringJob = null;
  $("#scoring").hidden = true;
  delete document.body.dataset.scoring;
  if (j.state === "done") void guard("Loading the queue", loadWorklist);
  else notify(`Scoring the images for the queue ${j.state}.`, "error", j.error ?? undefined);
}

function renderWorklist(): void {
  const rows = S.images.map((im) => {
    const q = S.queue.get(im.id);
    const cls = im.id === S.image?.id ? "sel" : "";
    return `<tr class="${cls}" data-id="${esc(im.id)}" tabindex="0">
      ${S.strategy ? `<td class="num">${q?.rank ?? ""}</td>` : ""}
      <td class="name" title="${esc(im.name)}">${esc(im.name)}</td>
      <td><span class="badge ${im.label_state}">${im.label_state}</span></td>
      <td class="author">${esc(im.latest_author ?? "")}</td>
      ${S.strategy ? `<td class="num">${q?.score === null || q?.score === undefined ? "–" : fmt(q.score)}</td>` : ""}</tr>`;
  });
  $("#worklist thead").innerHTML = `<tr>${S.strategy ? "<th>#</th>" : ""}<th>Image</th><th>Label</th><th>By</th>${S.strategy ? "<th>Score</th>" : ""}</tr>`;
  $("#worklist tbody").innerHTML = rows.join("") || `<tr><td colspan="5" class="empty">No images. Drop NIfTI files, DICOM folders or zips here.</td></tr>`;
  const end = Math.min(S.offset + S.images.length, S.total);
  $("#wl-count").textContent = S.strategy ? `${S.total} without a final label, ranked by ${S.strategy}${S.queueNote}` : `${S.total ? S.offset + 1 : 0}–${end} of ${S.total}`;
  ($("#wl-prev") as HTMLButtonElement).disabled = !!S.strategy || S.offset === 0;
  ($("#wl-next") as HTMLButtonElement).disabled = !!S.strategy || end >= S.total;
}

$("#worklist tbody").addEventListener("click", (e) => {
  const tr = (e.target as HTMLElement).closest("tr[data-id]") as HTMLElement | null;
  if (tr) void openImage(tr.dataset.id!);
});
$("#worklist tbody").addEventListener("keydown", (e) => {
  const tr = (e.target as HTMLElement).closest("tr[data-id]") as HTMLElement | null;
  if (tr && e.key === "Enter") void openImage(tr.dataset.id!);
});
$select("#wl-filter").addEventListener("change", () => {
  S.filter = $select("#wl-filter").value as typeof S.filter;
  S.offset = 0;
  void guard("Loading the worklist", loadWorklist);
});
$select("#strategy").addEventListener("change", () => {
  S.strategy = $select("#strategy").value;
  if (!S.modelStrategies.has(S.strategy)) {
    S.scoringJob = null; // a running score job goes on, but this page no longer waits for it
    $("#scoring").hidden = true;
    delete document.body.dataset.scoring;
  }
  void guard("Loading the queue", loadWorklist);
});
$("#wl-prev").addEventListener("click", () => {
  S.offset = Math.max(0, S.offset - S.pageSize);
  void guard("Loading the worklist", loadWorklist);
});
$("#wl-next").addEventListener("click", () => {
  S.offset += S.pageSize;
  void guard("Loading the worklist", loadWorklist);
});

async function nextImage(): Promise<void> {
  const strategy = S.strategy || "sequential";
  const r = await fetchNext(strategy, 1);
  if (!r) {
    notify("The images are being scored for this queue; the next image can be chosen when the progress bar above the worklist is full.", "info");
    return;
  }
  if (!r.items.length) {
    notify("Every image has a label. Nothing left in the queue.", "ok");
    return;
  }
  await openImage(r.items[0].image.id);
}
$("#next").addEventListener("click", () => void guard("Finding the next image", nextImage));

// --- upload ---------------------------------------------------------------------------------------

interface UploadUnit { name: string; files: File[] }

async function unitsFromDrop(dt: DataTransfer): Promise<UploadUnit[]> {
  const units: UploadUnit[] = [];
  const entries = Array.from(dt.items).map((it) => it.webkitGetAsEntry?.()).filter((x): x is FileSystemEntry => !!x);
  if (!entries.length) return Array.from(dt.files).map((f) => ({ name: f.name, files: [f] }));
  const readAll = async (dir: FileSystemDirectoryEntry): Promise<File[]> => {
    const out: File[] = [];
    const walk = async (d: FileSystemDirectoryEntry): Promise<void> => {
      const reader = d.createReader();
      for (;;) {
        const batch = await new Promise<FileSystemEntry[]>((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) {
          if (e.isDirectory) await walk(e as FileSystemDirectoryEntry);
          else out.push(await new Promise<File>((res, rej) => (e as FileSystemFileEntry).file(res, rej)));
        }
      }
    };
    await walk(dir);
    return out;
  };
  for (const e of entries) {
    if (e.isDirectory) units.push({ name: `${e.name}/`, files: await readAll(e as FileSystemDirectoryEntry) });
    else units.push({ name: e.name, files: [await new Promise<File>((res, rej) => (e as FileSystemFileEntry).file(res, rej))] });
  }
  return units;
}

async function uploadUnits(units: UploadUnit[]): Promise<void> {
  if (!can("reviewer")) {
    notify("Uploading images needs the reviewer role; ask an administrator.", "error");
    return;
  }
  const list = $("#uploads");
  let added = 0;
  for (const u of units) {
    const row = document.createElement("div");
    row.className = "upload";
    row.innerHTML = `<div class="uname" title="${esc(u.name)}">${esc(u.name)} <small>(${u.files.length} file${u.files.length > 1 ? "s" : ""})</small></div>
      <progress max="1" value="0"></progress><div class="ustate">waiting</div>`;
    list.prepend(row);
    const bar = row.querySelector("progress")!;
    const st = row.querySelector(".ustate") as HTMLElement;
    const form = new FormData();
    for (const f of u.files) form.append("file", f, (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name);
    try {
      st.textContent = "uploading";
      const res = await api.upload("/images", form, (p) => {
        bar.value = p;
        if (p >= 1) st.textContent = "checking on the server…";
      });
      bar.value = 1;
      const n = (res?.images ?? []).length;
      added += n;
      const skipped = (res?.skipped ?? []) as Array<{ file: string; reason: string }>;
      st.className = "ustate ok";
      st.textContent = `added ${n} image${n === 1 ? "" : "s"}` + (skipped.length ? `; ${skipped.length} file(s) skipped` : "");
      if (skipped.length) st.title = skipped.map((s) => `${s.file}: ${s.reason}`).join("\n");
    } catch (e) {
      st.className = "ustate err";
      const err = e as api.ApiError;
      st.innerHTML = `${esc(err.plain ?? String(e))} <button class="link">Details</button><pre hidden>${esc(err.detail ?? "")}</pre>`;
      st.querySelector("button")!.addEventListener("click", () => {
        const pre = st.querySelector("pre")!;
        pre.hidden = !pre.hidden;
      });
    }
  }
  if (added) await loadWorklist();
}

const drop = $("#left");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("dragging");
  if (!e.dataTransfer) return;
  void unitsFromDrop(e.dataTransfer).then(uploadUnits).catch((err) => showError(err, "Upload"));
});
$input("#file-input").addEventListener("change", () => {
  const files = Array.from($input("#file-input").files ?? []);
  $input("#file-input").value = "";
  void uploadUnits(files.map((f) => ({ name: f.name, files: [f] })));
});
$input("#folder-input").addEventListener("change", () => {
  const files = Array.from($input("#folder-input").files ?? []);
  $input("#folder-input").value = "";
  if (files.length) void uploadUnits([{ name: `${files[0].webkitRelativePath.split("/")[0]}/`, files }]);
});

// --- opening an image -----------------------------------------------------------------------------

async function closeSession(): Promise<void> {
  const s = S.session;
  S.session = null;
  if (s) await api.request("DELETE", `/sessions/${s.id}`).catch(() => undefined);
}

function confirmDiscard(): boolean {
  return !editor.dirty || window.confirm("Your changes to this label are not saved. Discard them?");
}

async function openImage(id: string, force = false): Promise<void> {
  if (!force && !confirmDiscard()) return;
  await guard("Opening the image", async () => {
    const t0 = performance.now();
    setStatus(`Loading ${id}…`);
    await closeSession();
    // the record, the volume and the latest label at once: the first slices come with their label
    const recP = api.get<ImageRecord>(`/images/${encodeURIComponent(id)}`);
    const labelP = recP.then((r) => (r.latest_revision ? fetchLabel(r.id, r.latest_revision) : null));
    const [listed, vol, mask] = await Promise.all([recP, api.binary("GET", `/images/${encodeURIComponent(id)}/volume`), labelP]);
    // a PACS series not fetched yet is described by its listing (no shape or spacing): now it is here
    const rec = listed.metadata?.fetched === false ? await api.get<ImageRecord>(`/images/${encodeURIComponent(id)}`) : listed;
    const raw = await gunzipIfNeeded(vol.data);
    await clearOverlays();
    const shown = await viewer.loadImage(raw, rec.name, lutEntries(), $select("#wl-preset").value, mask);
    showWindow(shown.window);
    S.image = rec;
    await viewer.presented(); // the first slices, with their label, are on screen
    viewer.hidePreview();
    S.stats.openMs = Math.round(performance.now() - t0);
    S.stats.previewMs = shown.previewAt === null ? null : Math.round(shown.previewAt - t0);
    await loadRevisionIntoEditor(rec.latest_revision, mask);
    S.stats.opens++;
    document.body.dataset.imageId = rec.id;
    document.body.dataset.opens = String(S.stats.opens);
    renderWorklist();
    renderImageInfo();
    await Promise.all([loadRevisions(), loadEvaluations()]);
    setStatus(`${rec.name}: ${rec.shape.join("×")} voxels, ${rec.spacing.map((v) => v.toFixed(2)).join("×")} mm — ` +
      `shown with its label in ${S.stats.openMs} ms` + (S.stats.previewMs === null ? "" : ` (a 2-D preview after ${S.stats.previewMs} ms)`));
  });
}

/** Show a revision (or an empty label) as the editable label; drops history and session. */
async function loadRevisionIntoEditor(rev: number | null, fetched: Uint8Array | null = null): Promise<void> {
  if (!S.image) return;
  await closeSession();
  const mask = fetched ?? (rev ? await fetchLabel(S.image.id, rev) : new Uint8Array(viewer.voxels));
  S.shownRevision = rev;
  S.viewRevision = rev;
  S.baseRevision = S.image.latest_revision;
  editor.reset(mask);
  renderEditState();
}

function renderImageInfo(): void {
  renderExport();
  const im = S.image;
  $("#image-info").innerHTML = im
    ? `<b>${esc(im.name)}</b> · ${esc(im.modality ?? "")} · ${im.shape.join("×")} · label: <span class="badge ${im.label_state}">${im.label_state}</span>`
    : "No image open";
}

// --- revisions ------------------------------------------------------------------------------------

async function loadRevisions(): Promise<void> {
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

// --- overlays: reference, prediction, discrepancy (each on/off with its own opacity) -----------

const overlayKey: Record<OverlaySlot, string> = { reference: "", prediction: "", discrepancy: "" }; // what is shown
const overlayNote: Record<OverlaySlot, string> = { reference: "", prediction: "", discrepancy: "" };
const overlayCache = new Map<string, { data: Uint8Array; note: string }>(); // per open image

/** The choices of each overlay: revisions, trained models, evaluations with a discrepancy map. */
function fillOverlayChoices(): void {
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

function tint(mix: number, toward: [number, number, number]): LutEntry[] {
  return lutEntries().map((e) => ({ ...e, color: e.color.map((c, k) => Math.round(c + (toward[k] - c) * mix)) as [number, number, number] }));
}

/** What an overlay choice shows now: a prediction changes with the model's current version. */
function versioned(key: string): string {
  if (!key.startsWith("model:")) return key;
  const m = S.models.find((x) => x.name === key.slice(6));
  return `${key}@${m?.current_version ?? "?"}`;
}

async function overlayData(slot: OverlaySlot, key: string): Promise<{ data: Uint8Array; note: string }> {
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

function overlayColors(slot: OverlaySlot, key: string): LutEntry[] {
  if (slot === "reference") return tint(0.55, [255, 255, 255]); // the class colours, lighter
  if (slot === "prediction") return tint(0.45, [255, 230, 0]); // the class colours, towards yellow
  const ev = S.evaluations.find((e) => `eval:${e.id}` === key) ?? S.lastEval;
  return ((ev?.result.legend ?? []) as LutEntry[]).map((l) => ({ value: l.value, name: l.name, color: l.color }));
}

/** Bring one overlay in line with its checkbox and choice. */
async function updateOverlay(slot: OverlaySlot): Promise<void> {
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
async function showOverlay(slot: OverlaySlot, key: string): Promise<void> {
  fillOverlayChoices();
  $select(`#ov-${slot}`).value = key;
  $input(`#ov-${slot}-on`).checked = true;
  await updateOverlay(slot);
}

async function clearOverlays(): Promise<void> {
  overlayCache.clear();
  for (const slot of OVERLAY_SLOTS) {
    $input(`#ov-${slot}-on`).checked = false;
    if (viewer.hasOverlay(slot)) await viewer.setOverlay(slot, null);
    overlayKey[slot] = "";
  }
  renderOverlayLegend();
}

function renderOverlayLegend(): void {
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

// --- label display, window/level, view ------------------------------------------------------------

$input("#opacity").addEventListener("input", () => {
  viewer.setLabelOpacity(Number($input("#opacity").value));
  $input("#show-label").checked = true;
});
$input("#show-label").addEventListener("change", () => viewer.setLabelVisible($input("#show-label").checked));

function applyPreset(key: string): void {
  showWindow(viewer.applyPreset(key));
}
function showWindow(w: { center: number; width: number }): void {
  $input("#wl-center").value = fmt(w.center, 1);
  $input("#wl-width").value = fmt(w.width, 1);
}
$select("#wl-preset").innerHTML = Object.entries(PRESETS)
  .map(([k, p]) => `<option value="${k}">${k === "auto" ? "Full range" : p!.label}</option>`).join("");
$select("#wl-preset").value = "mr-auto";
$select("#wl-preset").addEventListener("change", () => applyPreset($select("#wl-preset").value));
for (const id of ["#wl-center", "#wl-width"]) {
  $input(id).addEventListener("change", () => viewer.setWindow(Number($input("#wl-center").value), Math.max(1e-6, Number($input("#wl-width").value))));
}
document.querySelectorAll<HTMLButtonElement>("[data-view]").forEach((b) =>
  b.addEventListener("click", () => setView(b.dataset.view as ViewMode)));
function setView(mode: ViewMode): void {
  viewer.setMode(mode);
  document.querySelectorAll<HTMLButtonElement>("[data-view]").forEach((x) => x.classList.toggle("on", x.dataset.view === mode));
}
$("#zoom-in").addEventListener("click", () => viewer.zoom(1.25));
$("#zoom-out").addEventListener("click", () => viewer.zoom(0.8));
$("#zoom-reset").addEventListener("click", () => viewer.resetView());
viewer.onLocation = (text) => {
  $("#location").textContent = text;
};

// --- tools and classes ----------------------------------------------------------------------------

function renderClasses(): void {
  $("#classes").innerHTML = foreground().map((c, i) =>
    `<button class="cls ${c.value === S.classValue ? "on" : ""}" data-value="${c.value}" title="key ${i + 1}">
      <span class="sw" style="background:rgb(${c.color.join(",")})"></span>${i + 1} ${esc(c.name)}</button>`).join("")
    || `<span class="muted">The label schema has no classes.</span>`;
  $("#classes").querySelectorAll<HTMLButtonElement>("button").forEach((b) =>
    b.addEventListener("click", () => setClass(Number(b.dataset.value))));
}
function setClass(v: number): void {
  S.classValue = v;
  renderClasses();
}
function setTool(t: Tool): void {
  S.tool = t;
  document.querySelectorAll<HTMLButtonElement>("[data-tool]").forEach((b) => b.classList.toggle("on", b.dataset.tool === t));
  canvas.style.cursor = t === "navigate" ? "default" : "crosshair";
  document.body.dataset.tool = t;
}
document.querySelectorAll<HTMLButtonElement>("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool as Tool)));
$input("#brush-size").addEventListener("input", () => setBrush(Number($input("#brush-size").value)));
function setBrush(n: number): void {
  S.brush = Math.max(1, Math.min(30, n));
  $input("#brush-size").value = String(S.brush);
  $("#brush-size-v").textContent = String(S.brush);
}
$input("#sphere").addEventListener("change", () => {
  S.sphere = $input("#sphere").checked;
});

// --- interactive session (clicks, and strokes pushed into it) ------------------------------------

/** Session calls (clicks, pushed strokes, undo/redo, save) run one after another, in order. */
let chain: Promise<unknown> = Promise.resolve();
function serial<T>(fn: () => Promise<T>): Promise<T> {
  const run = chain.then(fn);
  chain = run.catch(() => undefined);
  return run;
}

async function ensureSession(): Promise<Session> {
  if (S.session) return S.session;
  if (!S.image) throw new Error("open an image first");
  const model = S.models.find((m) => m.name === S.model);
  if (!model || !model.current_version) {
    throw new Error("Clicks need a trained model. Choose one in the model list at the top (or train one under Models).");
  }
  setStatus(`Preparing ${model.name} on this image…`);
  const body: Record<string, unknown> = { image_id: S.image.id, model: model.name };
  if (S.shownRevision) body.initial_revision = S.shownRevision;
  const info = await api.post<{ id: string; version: number }>("/sessions", body);
  const session: Session = { id: info.id, model: model.name, version: info.version, initial: S.shownRevision };
  S.session = session;
  if (S.features.putLabel && !(S.shownRevision !== null && editor.baseIsInitial)) {
    // The session starts from the model's prediction (or from the revision, while the view
    // already holds steps of an earlier session): make its first state what the user sees,
    // strokes aside. Earlier sessions' steps cannot be undone in this one.
    await pushLabel(session, editor.base);
    editor.dropServerSteps();
  }
  return session;
}

async function pushLabel(s: Session, mask: Uint8Array): Promise<void> {
  const form = new FormData();
  form.append("file", await gzip(writeLabel(viewer.header!, mask)), "label.nii.gz");
  await api.request("PUT", `/sessions/${s.id}/label`, form);
}

const BOX_TYPE = "application/vnd.segloop.label-box";
let lastCall = { fetchMs: 0, decodeMs: 0, serverMs: NaN, bytes: 0 };
/**
 * A session call that returns its mask. It asks for the compact response (`?since=` the step
 * whose mask it holds): only the box the step(s) changed, written into the held mask in place;
 * the server answers the whole mask when it cannot (and older servers always do).
 */
async function sessionCall(path: string, body?: unknown): Promise<ServerMask> {
  const call = async (s: Session): Promise<ServerMask> => {
    const t0 = performance.now();
    const held = s.held;
    const { data, headers } = await api.binary("POST", `/sessions/${s.id}${path}?since=${held?.step ?? 0}`, body ?? {});
    const t1 = performance.now();
    const step = Number(headers.get("X-Segloop-Step") ?? NaN);
    let out: ServerMask;
    if ((headers.get("Content-Type") ?? "").startsWith(BOX_TYPE)) {
      const box = (headers.get("X-Segloop-Box") ?? "").split(",").map(Number);
      if (!held || Number(headers.get("X-Segloop-Base-Step")) !== held.step || box.length !== 6 || !Number.isFinite(step)) {
        throw new Error("The server sent a change of a mask this page does not hold.");
      }
      const shown = editor.base === held.mask; // then only the box needs showing again
      applyBox(held.mask, box, new Uint8Array(await gunzipIfNeeded(data)));
      held.step = step;
      out = shown ? { mask: held.mask, box } : { mask: held.mask };
    } else {
      const mask = (await readLabel(data)).data;
      s.held = Number.isFinite(step) ? { step, mask } : undefined;
      out = { mask };
    }
    lastCall = { fetchMs: t1 - t0, decodeMs: performance.now() - t1, serverMs: Number(headers.get("X-Segloop-Seconds") ?? NaN) * 1000, bytes: data.byteLength };
    return out;
  };
  const s = await ensureSession();
  try {
    return await call(s);
  } catch (e) {
    if (!(e instanceof api.ApiError && e.status === 404 && path === "/clicks")) throw e;
    // the session expired on the server: open a new one from what is shown, then click again
    S.session = null;
    notify("The interactive session had expired; it was reopened from the label you see (earlier clicks can no longer be undone).", "info");
    if (S.features.putLabel) editor.forgetHistoryAsBase();
    return await call(await ensureSession());
  }
}

/** Write a compact response's voxels (x fastest, the box's own extent) into `mask` (file order). */
function applyBox(mask: Uint8Array, box: number[], voxels: Uint8Array): void {
  const [nx, ny] = viewer.dims;
  const [x0, x1, y0, y1, z0, z1] = box;
  const w = x1 - x0;
  if (voxels.length !== w * (y1 - y0) * (z1 - z0)) throw new Error("The server's mask change has the wrong size.");
  let k = 0;
  for (let z = z0; z < z1; z++) {
    for (let y = y0; y < y1; y++, k += w) mask.set(voxels.subarray(k, k + w), x0 + nx * (y + ny * z));
  }
}

function sessionBackend(): SessionBackend {
  return {
    click: (group: ClickGroup) => sessionCall("/clicks", { clicks: [group] }),
    undo: () => sessionCall("/undo"),
    redo: async (group?: ClickGroup) => {
      if (S.features.redo) {
        try {
          return await sessionCall("/redo");
        } catch (e) {
          if (e instanceof api.ApiError && e.status === 409) throw new Error("The server has nothing to redo (the session was changed meanwhile).");
          throw e;
        }
      }
      if (group) return sessionCall("/clicks", { clicks: [group] }); // older servers: click again
      throw new Error("This server cannot redo that step.");
    },
    push: S.features.putLabel ? (mask: Uint8Array) => pushLabel(S.session!, mask) : null,
  };
}

/** After a stroke: push it into the session (when there is one), so clicks refine on top. */
editor.onStrokeEnd = () => {
  if (!S.session || !S.features.putLabel) return;
  void serial(() => guard("Sending the brush stroke to the model session", async () => {
    if (!S.session) return; // closed meanwhile (another model chosen): the stroke stays local
    const t0 = performance.now();
    if (await editor.pushStrokes(sessionBackend())) S.stats.pushMs = Math.round(performance.now() - t0);
    S.stats.pushes++;
    document.body.dataset.pushes = String(S.stats.pushes);
  }));
};

async function placeClick(vox: [number, number, number], positive: boolean): Promise<void> {
  const group: ClickGroup = { class: positive ? S.classValue : "background", points: [vox] };
  document.body.dataset.lastClick = vox.join(",");
  await serial(async () => {
    await ensureSession(); // opening a session (first prediction) is not part of the click's time
    if (S.features.putLabel) {
      // brushed voxels first, so the click refines on top of them; if the server refuses them,
      // they stay on top of the session's mask as before (and a save stores them as `manual`)
      await editor.pushStrokes(sessionBackend()).catch((e) => showError(e, "Sending the brush strokes to the model session"));
    }
    setStatus(`${positive ? "Adding" : "Removing"} ${positive ? className(S.classValue) : "background"} at voxel ${vox.join(", ")}…`);
    const t0 = performance.now();
    await editor.click(group, sessionBackend());
    viewer.flushNow(); // upload the changed voxels and redraw now, not at the next frame
    const tMask = performance.now();
    await viewer.presented();
    const shown = performance.now();
    const rec = {
      serverMs: Math.round(lastCall.serverMs), // the model's time, as the server reports it
      roundTripMs: Math.round(lastCall.fetchMs), // request sent → response received
      decodeMs: Math.round(lastCall.decodeMs),
      applyMs: Math.round(tMask - t0 - lastCall.fetchMs - lastCall.decodeMs),
      shownMs: Math.round(shown - t0),
      responseBytes: lastCall.bytes, // the compact response: the changed box only
    };
    S.stats.clickServerMs = rec.roundTripMs;
    S.stats.clickShownMs = rec.shownMs;
    S.stats.clickLog.push(rec);
    if (S.stats.clickLog.length > 200) S.stats.clickLog.shift();
    S.stats.clicks++;
    document.body.dataset.clicks = String(S.stats.clicks);
    setStatus(`${positive ? "Positive" : "Negative"} click at voxel ${vox.join(", ")}: model ${rec.serverMs} ms, ` +
      `round trip ${rec.roundTripMs} ms, on screen after ${rec.shownMs} ms`);
  });
}

async function runModel(): Promise<void> {
  if (!S.image) throw new Error("open an image first");
  if (!S.model) throw new Error("choose a model first");
  if (!confirmDiscard()) return;
  await closeSession();
  const model = S.models.find((m) => m.name === S.model);
  if (!model?.current_version) throw new Error(`model ${S.model} has no trained version yet`);
  const t0 = performance.now();
  setStatus(`Running ${S.model}…`);
  const info = await api.post<{ id: string; version: number }>("/sessions", { image_id: S.image.id, model: S.model });
  S.session = { id: info.id, model: S.model, version: info.version, initial: null };
  const { data } = await api.binary("GET", `/sessions/${info.id}/label`);
  const mask = (await readLabel(data)).data;
  S.shownRevision = null;
  S.viewRevision = null;
  S.baseRevision = S.image.latest_revision;
  editor.reset(mask);
  editor.dirty = true;
  renderEditState();
  setStatus(`${S.model} v${info.version}: automatic segmentation in ${Math.round(performance.now() - t0)} ms. Correct it with clicks or the brush, then save.`);
}
$("#run-model").addEventListener("click", () => void guard("Running the model", runModel));
$select("#model").addEventListener("change", () => {
  S.model = $select("#model").value;
  void closeSession();
  if (S.modelStrategies.has(S.strategy)) void guard("Loading the queue", loadWorklist);
});

// --- mouse on the canvas: clicks and brush (captured before NiiVue's own handlers) ---------------

let painting: { last: [number, number, number]; axis: number; value: number } | null = null;
const wrap = $("#viewer-wrap");
wrap.addEventListener("mousedown", (e) => {
  if (S.tool === "navigate" || e.button !== 0 || e.shiftKey) return;
  const hit = viewer.voxelAt(e);
  if (!hit) return;
  e.stopPropagation();
  e.preventDefault();
  canvas.focus();
  if (S.tool === "positive" || S.tool === "negative") {
    void guard("The click could not be applied", () => placeClick(hit.vox, S.tool === "positive"));
    return;
  }
  const axis = viewer.normalAxis(hit.axCorSag);
  if (S.tool === "fill") {
    editor.fill(hit.vox, S.classValue, axis);
    return;
  }
  const value = S.tool === "eraser" ? 0 : S.classValue;
  painting = { last: hit.vox, axis, value };
  editor.beginStroke();
  editor.paint(hit.vox, S.brush, value, S.sphere, axis);
}, true);
wrap.addEventListener("mousemove", (e) => {
  if (!painting) return;
  e.stopPropagation();
  const hit = viewer.voxelAt(e);
  if (!hit) return;
  editor.paintLine(painting.last, hit.vox, S.brush, painting.value, S.sphere, painting.axis);
  painting.last = hit.vox;
}, true);
const endPaint = (e: Event) => {
  if (!painting) return;
  e.stopPropagation();
  painting = null;
  editor.endStroke();
};
wrap.addEventListener("mouseup", endPaint, true);
wrap.addEventListener("mouseleave", endPaint, true);
wrap.addEventListener("wheel", (e) => {
  if (!e.ctrlKey) return; // plain wheel: NiiVue scrolls slices
  e.preventDefault();
  e.stopPropagation();
  viewer.zoom(e.deltaY < 0 ? 1.1 : 1 / 1.1);
}, { capture: true, passive: false });

// --- undo / redo / save ---------------------------------------------------------------------------

function renderEditState(): void {
  ($("#undo") as HTMLButtonElement).disabled = !editor.canUndo;
  ($("#redo") as HTMLButtonElement).disabled = !editor.canRedo;
  const shown = !editor.dirty && S.viewRevision ? `revision ${S.viewRevision}`
    : S.shownRevision ? `edited from revision ${S.shownRevision}` : S.session ? `prediction of ${S.session.model}` : "empty label";
  $("#edit-state").textContent = `${shown}${editor.dirty ? " · unsaved changes" : ""} · ${editor.historyText}`;
  document.body.dataset.dirty = editor.dirty ? "1" : "0";
}
editor.onChange = renderEditState;
async function undo(): Promise<void> {
  await serial(() => editor.undo(S.session ? sessionBackend() : null));
}
async function redo(): Promise<void> {
  await serial(() => editor.redo(S.session ? sessionBackend() : null));
}
$("#undo").addEventListener("click", () => void guard("Undo", undo));
$("#redo").addEventListener("click", () => void guard("Redo", redo));

function save(status: "draft" | "final", base: number | null = S.baseRevision): Promise<void> {
  return serial(() => saveNow(status, base)); // after any stroke still on its way to the session
}

async function saveNow(status: "draft" | "final", base: number | null): Promise<void> {
  if (!S.image) throw new Error("open an image first");
  if (status === "final" && !can("reviewer")) throw new Error("Saving a final label needs the reviewer role.");
  let rev: Revision;
  try {
    // the session's mask is what is shown when no stroke is outside it: saved as `interactive`
    if (S.session && editor.overrideCount === 0 && S.session.initial === S.shownRevision) {
      rev = await api.post<Revision>(`/sessions/${S.session.id}/save`, { base_revision: base, status });
    } else {
      const like = viewer.header!;
      const blob = await gzip(writeLabel(like, editor.current()));
      const form = new FormData();
      form.append("file", blob, "label.nii.gz");
      if (base !== null) form.append("base_revision", String(base));
      form.append("status", status);
      const res = await api.request("POST", `/images/${encodeURIComponent(S.image.id)}/labels`, form);
      rev = (await res.json()) as Revision;
    }
  } catch (e) {
    if (e instanceof api.ApiError && e.status === 409 && e.code === "stale_revision") {
      await showConflict(status, Number(e.body?.current_revision));
      return;
    }
    throw e;
  }
  S.baseRevision = rev.revision;
  S.viewRevision = rev.revision;
  S.image = { ...S.image, latest_revision: rev.revision, label_state: rev.status, latest_author: rev.author };
  editor.dirty = false;
  renderEditState();
  renderImageInfo();
  document.body.dataset.savedRevision = String(rev.revision);
  notify(`Saved as revision ${rev.revision} (${rev.status}).`, "ok");
  await Promise.all([loadRevisions(), loadWorklist()]);
}
$("#save-draft").addEventListener("click", () => void guard("Saving", () => save("draft")));
$("#save-final").addEventListener("click", () => void guard("Saving", () => save("final")));

async function showConflict(status: "draft" | "final", current: number): Promise<void> {
  if (!S.image) return;
  const info = await api.get<Revision>(`/images/${encodeURIComponent(S.image.id)}/labels/${current}/info`);
  const dlg = $("#conflict") as HTMLDialogElement;
  const counts = Object.entries(info.voxel_counts ?? {}).filter(([k]) => k !== "0")
    .map(([k, n]) => `${esc(className(Number(k)))}: ${n} voxels`).join(", ");
  $("#conflict-text").innerHTML = `<p><b>${esc(info.author)}</b> saved revision <b>${info.revision}</b>
    (${esc(info.status)}, ${esc(info.source)}) at ${when(info.created_at)}, after you started editing revision ${S.baseRevision ?? "–"}.</p>
    <p class="muted">${counts || "no labelled voxels"}</p>`;
  dlg.dataset.current = String(current);
  dlg.dataset.status = status;
  document.body.dataset.conflict = String(current);
  dlg.showModal();
}
$("#conflict-show").addEventListener("click", () => {
  const cur = ($("#conflict") as HTMLDialogElement).dataset.current;
  void guard("Showing their revision", async () => {
    await loadRevisions();
    await showOverlay("reference", `rev:${cur}`);
  });
});
$("#conflict-keep").addEventListener("click", () => {
  const dlg = $("#conflict") as HTMLDialogElement;
  dlg.close();
  delete document.body.dataset.conflict;
  void guard("Saving", () => save(dlg.dataset.status as "draft" | "final", Number(dlg.dataset.current)));
});
$("#conflict-reload").addEventListener("click", () => {
  const dlg = $("#conflict") as HTMLDialogElement;
  dlg.close();
  delete document.body.dataset.conflict;
  void guard("Reloading", async () => {
    if (!S.image) return;
    S.image = await api.get<ImageRecord>(`/images/${encodeURIComponent(S.image.id)}`);
    await loadRevisionIntoEditor(S.image.latest_revision);
    await loadRevisions();
    notify(`Showing revision ${S.image.latest_revision}; your changes were discarded.`, "info");
  });
});
$("#conflict-cancel").addEventListener("click", () => {
  ($("#conflict") as HTMLDialogElement).close();
  delete document.body.dataset.conflict;
});

// --- export ---------------------------------------------------------------------------------------

function isDicom(im: ImageRecord | null): boolean {
  return !!im && /^dicom/i.test(im.source ?? "");
}

/** DICOM SEG needs the source series (its references); say why when it cannot be offered. */
function renderExport(): void {
  const im = S.image;
  const seg = $("#export-seg") as HTMLButtonElement;
  let note = "";
  if (!S.features.dicomSeg) note = "DICOM SEG export is not offered by this server version.";
  else if (!im) note = "";
  else if (!isDicom(im)) note = "DICOM SEG export needs an image imported from DICOM; this one came from a file (NIfTI/NRRD). Export NIfTI instead.";
  else if (!im.latest_revision) note = "Save the label first: DICOM SEG is made from a saved revision.";
  seg.hidden = !S.features.dicomSeg || !isDicom(im);
  seg.disabled = !im?.latest_revision;
  $("#export-note").textContent = note;
  renderSendPacs();
}

$("#export-view").addEventListener("click", () => void guard("Export", async () => {
  if (!S.image) throw new Error("open an image first");
  download(await gzip(writeLabel(viewer.header!, editor.current())), `${S.image.id}-label.nii.gz`);
}));
$("#export-rev").addEventListener("click", () => void guard("Export", async () => {
  if (!S.image?.latest_revision) throw new Error("this image has no saved label yet");
  const { data } = await api.binary("GET", `/images/${encodeURIComponent(S.image.id)}/labels/latest`);
  download(new Blob([data]), `${S.image.id}-r${S.image.latest_revision}.nii.gz`);
}));
$("#export-seg").addEventListener("click", () => void guard("DICOM SEG export", async () => {
  const im = S.image;
  if (!im?.latest_revision) throw new Error("this image has no saved label yet");
  if (!isDicom(im)) throw new Error("DICOM SEG needs an image imported from DICOM.");
  if (editor.dirty) notify("The DICOM SEG holds the last saved revision, not your unsaved changes.", "info");
  const rev = S.viewRevision ?? im.latest_revision;
  const { data } = await api.binary("GET", `/images/${encodeURIComponent(im.id)}/labels/${rev}/dicom-seg`);
  download(new Blob([data], { type: "application/dicom" }), `${im.id}-r${rev}.seg.dcm`);
  document.body.dataset.exported = `dicom-seg:${rev}`;
}));

// --- send to PACS (servers connected to a DICOMweb server) ----------------------------------------

async function loadPacs(): Promise<void> {
  S.pacs = null;
  if (S.features.sendPacs) {
    try {
      S.pacs = await api.get<{ dicomweb: boolean; url: string | null; ephemeral: boolean }>("/pacs");
    } catch {
      S.pacs = null; // an older or locked-down server: no button
    }
  }
  document.body.dataset.pacs = S.pacs?.dicomweb ? "1" : "0";
  renderSendPacs();
}

/** The revision "Send to PACS" would send: the one shown, else the latest. */
function sendableRevision(): Revision | null {
  const im = S.image;
  if (!im?.latest_revision) return null;
  const n = S.viewRevision ?? im.latest_revision;
  return S.revisions.find((r) => r.image_id === im.id && r.revision === n) ?? null; // not the previous image's list
}

/** Shown only with a PACS and a DICOM image; disabled, with the reason in words, when it cannot be used. */
function renderSendPacs(): void {
  const btn = $("#send-pacs") as HTMLButtonElement;
  const status = $("#pacs-status");
  const im = S.image;
  const offered = !!S.pacs?.dicomweb && !!im && isDicom(im);
  btn.hidden = !offered;
  if (!offered) {
    btn.disabled = true;
    status.textContent = "";
    delete btn.dataset.reason;
    return;
  }
  const rev = sendableRevision();
  let reason = "";
  if (!im!.latest_revision) reason = "Save the label as final first: only final labels can be sent to the PACS.";
  else if (!rev) reason = "Loading the revisions…";
  else if (rev.status !== "final") reason = `Revision ${rev.revision} is a draft. Only final labels can be sent to the PACS: save it as final first.`;
  else if (!can("reviewer")) reason = "Sending labels to the PACS needs the reviewer role.";
  btn.disabled = !!reason || S.sending;
  btn.textContent = S.sending ? "Sending…" : "Send to PACS";
  btn.dataset.reason = reason;
  btn.title = reason || `Store revision ${rev!.revision} in the PACS as a DICOM segmentation, in this image's study`;
  if (S.sending) return; // the progress line stays until the answer
  const sent = rev ? S.sent.get(`${im!.id}:${rev.revision}`) : undefined;
  if (sent) {
    status.innerHTML = `Revision ${rev!.revision} was sent to the PACS at ${esc(when(sent.at))}. ` +
      `<details class="inline"><summary>Details</summary><code>${esc(sent.sop)}</code></details>`;
  } else {
    status.textContent = reason;
  }
}

$("#send-pacs").addEventListener("click", () => void sendToPacs());

async function sendToPacs(): Promise<void> {
  const im = S.image;
  const rev = sendableRevision();
  if (!im || !rev || rev.status !== "final" || S.sending) return;
  const key = `${im.id}:${rev.revision}`;
  if (S.sent.has(key) && !window.confirm(`Revision ${rev.revision} was already sent to the PACS. Send it again (the PACS then holds two copies)?`)) return;
  if (editor.dirty) notify("The PACS receives the saved revision, not your unsaved changes.", "info");
  S.sending = true;
  document.body.dataset.sending = "1";
  renderSendPacs();
  $("#pacs-status").textContent = `Sending revision ${rev.revision} to the PACS…`;
  try {
    await guard("Sending to the PACS", async () => {
      const r = await api.post<{ revision: number; sop_instance_uid: string; series_instance_uid: string; study_instance_uid: string; url: string }>(
        `/images/${encodeURIComponent(im.id)}/labels/${rev.revision}/send`);
      S.sent.set(`${im.id}:${r.revision}`, { at: new Date().toISOString(), sop: r.sop_instance_uid });
      document.body.dataset.sent = `${r.revision}:${r.sop_instance_uid}`;
      notify(`Revision ${r.revision} was sent to the PACS. It is stored there as a segmentation in this patient's study.`, "ok",
        `PACS: ${r.url}\nstudy ${r.study_instance_uid}\nsegmentation series ${r.series_instance_uid}\ninstance ${r.sop_instance_uid}`);
    });
  } finally {
    S.sending = false;
    delete document.body.dataset.sending;
    renderSendPacs();
    if (!S.sent.has(key)) $("#pacs-status").textContent = "Not sent. See the message above for what happened.";
  }
}

// --- models ---------------------------------------------------------------------------------------

async function loadModels(): Promise<void> {
  S.models = (await api.get<{ items: ModelRecord[] }>("/models")).items;
  const trained = S.models.filter((m) => m.current_version);
  if (!S.model || !trained.some((m) => m.name === S.model)) S.model = trained[0]?.name ?? "";
  $select("#model").innerHTML = trained.length
    ? trained.map((m) => `<option value="${esc(m.name)}">${esc(m.name)} v${m.current_version}</option>`).join("")
    : `<option value="">no trained model</option>`;
  $select("#model").value = S.model;
  renderModels();
  fillOverlayChoices();
}

function versionDice(v: Record<string, unknown>): string {
  const m = (v.metrics ?? {}) as Record<string, unknown>;
  const d = m.val_dice ?? m.dice ?? m.mean_dice;
  if (typeof d === "number") return fmt(d);
  if (d && typeof d === "object") {
    const vals = Object.values(d as Record<string, number>).filter((x) => typeof x === "number");
    return vals.length ? fmt(vals.reduce((a, b) => a + b, 0) / vals.length) : "–";
  }
  return "–";
}

function renderModels(): void {
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

async function loadArchitectures(): Promise<void> {
  const r = await api.get<{ items: Array<{ name: string }> }>("/architectures");
  $select("#tr-arch").innerHTML = r.items.map((a) => `<option>${esc(a.name)}</option>`).join("");
  if (r.items.some((a) => a.name === "unet")) $select("#tr-arch").value = "unet";
}

function trainConfig(): Record<string, unknown> {
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

async function loadJobs(): Promise<void> {
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

function watchJob(id: string, metrics: Array<Record<string, unknown>>): void {
  S.watchedJob = id;
  S.jobMetrics = metrics;
  renderChart();
}

function renderJobs(): void {
  $("#jobs").innerHTML = S.jobs.map((j) => {
    const active = j.state === "queued" || j.state === "running";
    const p = j.progress ?? 0;
    return `<div class="job ${j.id === S.watchedJob ? "sel" : ""}" data-job="${j.id}" data-state="${j.state}">
      <div><b>${esc(j.kind)}</b> ${esc(String(j.params.model ?? ""))} <span class="badge ${j.state}">${j.state}</span>
      ${active ? `<button class="small cancel" data-job="${j.id}">Cancel</button>` : ""}
      <button class="small watch" data-job="${j.id}">Curves</button></div>
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
  $("#jobs").querySelectorAll<HTMLButtonElement>(".jdetail").forEach((b) => b.addEventListener("click", () => {
    const pre = b.parentElement!.querySelector("pre")!;
    pre.hidden = !pre.hidden;
  }));
}

function renderChart(): void {
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

// --- evaluation -----------------------------------------------------------------------------------

async function evaluate(): Promise<void> {
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
function renderEvaluation(ev: Evaluation): void {
  const classes = (ev.result.classes ?? {}) as Record<string, Record<string, number | null>>;
  const mean = (ev.result.mean ?? {}) as Record<string, number | null>;
  const p = ev.params;
  const what = p.model ? `model ${p.model} v${p.version}` : `revision ${p.revision}`;
  $("#ev-result").innerHTML = `<p>${esc(what)} against revision ${esc(p.reference_revision)}</p>
    <table class="grid" id="ev-table"><thead><tr><th>Class</th><th>Dice</th><th>IoU</th><th>HD95 (mm)</th><th>Voxels (pred/ref)</th></tr></thead><tbody>
    ${Object.entries(classes).map(([k, c]) => `<tr><td>${esc(k)}</td><td class="num">${fmt(c.dice)}</td><td class="num">${fmt(c.iou)}</td><td class="num">${fmt(c.hd95, 1)}</td><td class="num">${fmt(c.pred_voxels, 0)}/${fmt(c.ref_voxels, 0)}</td></tr>`).join("")}
    <tr class="mean"><td>mean</td><td class="num">${fmt(mean.dice)}</td><td class="num">${fmt(mean.iou)}</td><td class="num">${fmt(mean.hd95, 1)}</td><td></td></tr></tbody></table>`;
}
async function loadEvaluations(): Promise<void> {
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
$("#ev-model-job").addEventListener("click", () => void guard("Starting the evaluation job", async () => {
  if (!S.model) throw new Error("choose a model first");
  await api.post(`/models/${encodeURIComponent(S.model)}/evaluate`, {});
  notify(`Evaluation of ${S.model} on all final labels started (see Models → jobs).`, "ok");
  await loadJobs();
}));

// --- tabs, help, keyboard -------------------------------------------------------------------------

document.querySelectorAll<HTMLButtonElement>("[data-tab]").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab!)));
function showTab(name: string): void {
  document.querySelectorAll<HTMLButtonElement>("[data-tab]").forEach((x) => x.classList.toggle("on", x.dataset.tab === name));
  document.querySelectorAll<HTMLElement>(".tab").forEach((p) => (p.hidden = p.id !== `tab-${name}`));
  if (name === "models") renderChart();
}
$("#help-open").addEventListener("click", () => ($("#help") as HTMLDialogElement).showModal());
$("#help-close").addEventListener("click", () => ($("#help") as HTMLDialogElement).close());
$("#help-keys").innerHTML = HELP.map(([k, d]) => `<tr><td><kbd>${esc(k)}</kbd></td><td>${esc(d)}</td></tr>`).join("");

document.addEventListener("keydown", (e) => {
  const t = e.target as HTMLElement;
  if (t.closest("input, select, textarea, dialog")) return;
  const k = e.key;
  const ctrl = e.ctrlKey || e.metaKey;
  const act = (fn: () => unknown) => {
    e.preventDefault();
    fn();
  };
  if (ctrl && k.toLowerCase() === "z" && !e.shiftKey) return act(() => void guard("Undo", undo));
  if (ctrl && (k.toLowerCase() === "y" || (k.toLowerCase() === "z" && e.shiftKey))) return act(() => void guard("Redo", redo));
  if (ctrl && k.toLowerCase() === "s") return act(() => void guard("Saving", () => save(e.shiftKey ? "final" : "draft")));
  if (ctrl || e.altKey) return;
  if (/^[1-9]$/.test(k)) {
    const c = foreground()[Number(k) - 1];
    if (c) act(() => setClass(c.value));
    return;
  }
  const keys: Record<string, () => void> = {
    v: () => setTool("navigate"), p: () => setTool("positive"), n: () => setTool("negative"), b: () => setTool("brush"),
    e: () => setTool("eraser"), f: () => setTool("fill"), "[": () => setBrush(S.brush - 1), "]": () => setBrush(S.brush + 1),
    s: () => {
      S.sphere = !S.sphere;
      $input("#sphere").checked = S.sphere;
    },
    l: () => {
      $input("#show-label").checked = !$input("#show-label").checked;
      viewer.setLabelVisible($input("#show-label").checked);
    },
    o: () => {
      $input("#ov-reference-on").checked = !$input("#ov-reference-on").checked;
      void guard("Showing the reference overlay", () => updateOverlay("reference"));
    },
    r: () => void guard("Running the model", runModel),
    N: () => void guard("Finding the next image", nextImage),
    "+": () => viewer.zoom(1.25), "=": () => viewer.zoom(1.25), "-": () => viewer.zoom(0.8), "0": () => viewer.resetView(),
    m: () => setView("multi"), a: () => setView("axial"), c: () => setView("coronal"), g: () => setView("sagittal"), "3": () => setView("render"),
    "?": () => ($("#help") as HTMLDialogElement).showModal(),
  };
  const fn = keys[k] ?? keys[k.toLowerCase()];
  if (fn && !(k === "N" && !e.shiftKey)) act(fn);
});

// --- live events ----------------------------------------------------------------------------------

let refreshTimer = 0;
function soon(fn: () => Promise<void>, ms = 400): void {
  clearTimeout(refreshTimer);
  refreshTimer = window.setTimeout(() => void fn().catch(() => undefined), ms);
}
function onEvent(ev: api.LiveEvent): void {
  const d = ev.data ?? {};
  switch (ev.type) {
    case "job.progress": {
      if (d.job_id === S.scoringJob) onScoringState({ id: d.job_id, state: "running", progress: d.progress ?? 0, message: d.message ?? "" });
      const j = S.jobs.find((x) => x.id === d.job_id);
      if (j) {
        j.progress = d.progress ?? j.progress;
        j.message = d.message ?? j.message;
        j.state = "running";
        renderJobs();
      } else soon(loadJobs);
      break;
    }
    case "job.metrics":
      if (d.job_id === S.watchedJob) {
        S.jobMetrics.push(d);
        renderChart();
      }
      break;
    case "job.state": {
      if (d.id === S.scoringJob) onScoringState(d as Job);
      const i = S.jobs.findIndex((x) => x.id === d.id);
      if (i >= 0) S.jobs[i] = { ...S.jobs[i], ...(d as Job) };
      else S.jobs.unshift(d as Job);
      renderJobs();
      if (d.kind === "train" && d.state === "running" && !S.jobs.some((x) => x.id === S.watchedJob && (x.state === "running" || x.state === "queued"))) watchJob(d.id, []);
      if (["done", "failed", "cancelled"].includes(d.state)) void loadModels().catch(() => undefined);
      break;
    }
    case "model.version":
      // a shown prediction follows the model's current version
      void loadModels().then(() => updateOverlay("prediction")).catch(() => undefined);
      break;
    case "label.revision":
      if (S.image && d.image_id === S.image.id) {
        void loadRevisions().catch(() => undefined);
        if (d.revision > (S.baseRevision ?? 0) && d.author !== S.me.name && editor.dirty) {
          notify(`${d.author} saved revision ${d.revision} of this image. Saving now will ask how to resolve it.`, "info");
        }
      }
      soon(loadWorklist);
      break;
    case "image.added":
    case "image.deleted":
      soon(loadWorklist);
      break;
    case "label.sent":
      S.sent.set(`${d.image_id}:${d.revision}`, { at: ev.time ?? new Date().toISOString(), sop: String(d.sop_instance_uid ?? "") });
      if (S.image && d.image_id === S.image.id && !S.sending) renderSendPacs();
      break;
    case "schema.changed":
      S.schema = d as Schema;
      renderClasses();
      viewer.setLabelColors(lutEntries());
      break;
    case "evaluation":
      if (S.image && d.image_id === S.image.id) void loadEvaluations().catch(() => undefined);
      break;
  }
}

// --- sign-in (servers with authentication) -------------------------------------------------------

api.onUnauthorized(() => {
  const dlg = $("#login") as HTMLDialogElement;
  if (!dlg.open) dlg.showModal();
});
$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void guard("Signing in", async () => {
    const r = await api.post<{ token: string }>("/auth/login", { username: $input("#login-user").value, password: $input("#login-pass").value });
    api.setToken(r.token);
    ($("#login") as HTMLDialogElement).close();
    await start();
  });
});

// --- start ----------------------------------------------------------------------------------------

/** Optional routes this server offers (from its OpenAPI schema): the app adapts to older servers. */
async function loadFeatures(): Promise<void> {
  try {
    const spec = await api.get<{ paths?: Record<string, Record<string, unknown>> }>("/openapi.json");
    const paths = Object.entries(spec.paths ?? {});
    const has = (re: RegExp, method: string) => paths.some(([p, ops]) => re.test(p) && method in ops);
    S.features.putLabel = has(/^\/api\/v1\/sessions\/\{[^}]+\}\/label$/, "put");
    S.features.redo = has(/^\/api\/v1\/sessions\/\{[^}]+\}\/redo$/, "post");
    S.features.dicomSeg = has(/^\/api\/v1\/images\/\{[^}]+\}\/labels\/\{[^}]+\}\/dicom-seg$/, "get");
    S.features.sendPacs = has(/^\/api\/v1\/images\/\{[^}]+\}\/labels\/\{[^}]+\}\/send$/, "post") && has(/^\/api\/v1\/pacs$/, "get");
  } catch {
    /* an old or locked-down server: keep the basic behaviour */
  }
  document.body.dataset.features = Object.entries(S.features).filter(([, v]) => v).map(([k]) => k).join(",");
}

async function start(): Promise<void> {
  const me = await api.get<{ name: string; role: string }>("/auth/me");
  S.me = { name: me.name, role: me.role };
  $("#me").textContent = `${me.name}`;
  $("#me").title = `role: ${me.role}`;
  S.schema = await api.get<Schema>("/schema");
  if (!foreground().some((c) => c.value === S.classValue)) S.classValue = foreground()[0]?.value ?? 1;
  renderClasses();
  const strategies = await api.get<{ available: Array<{ name: string; description: string; [k: string]: unknown }> }>("/activelearning/strategies");
  const usesModel = (s: Record<string, unknown>) => Boolean(s.needs_model ?? s.requires_model ?? s.uses_model ?? s.model_based ??
    ["entropy", "mc-dropout", "tta"].includes(String(s.name)));
  S.modelStrategies = new Set(strategies.available.filter(usesModel).map((s) => s.name));
  $select("#strategy").innerHTML = `<option value="">(no ranking)</option>` +
    strategies.available.map((s) => `<option value="${esc(s.name)}" title="${esc(s.description)}">${esc(s.name)}${S.modelStrategies.has(s.name) ? " (model)" : ""}</option>`).join("");
  await loadFeatures();
  await loadPacs();
  await Promise.all([loadWorklist(), loadModels(), loadArchitectures(), loadJobs()]);
  document.body.dataset.ready = "1";
}

setTool("navigate");
setBrush(3);
setView("multi");
void (async () => {
  await viewer.attach();
  api.connectEvents(onEvent, (up) => {
    $("#live").classList.toggle("up", up);
    $("#live").title = up ? "live updates connected" : "live updates disconnected; reconnecting";
  });
  await guard("Connecting to the server", start);
  const want = new URLSearchParams(location.search).get("image");
  if (want) await openImage(want);
})();
window.addEventListener("beforeunload", (e) => {
  if (editor.dirty) e.preventDefault();
});
window.addEventListener("resize", () => renderChart());
export { showError };
