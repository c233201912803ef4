// The worklist: pages of images by label state, the active-learning queue and its scoring job, next image.

import * as api from "./api";
import { $, $input, $select, esc, fmt, guard, notify } from "./ui";
import type { ImageRecord, Job } from "./api";
import { S } from "./app";
import { openImage } from "./image";

export interface NextItem { image: ImageRecord; score: number | null; rank?: number }
export interface NextPage { items: NextItem[]; remaining_unlabeled: number; model?: string; version?: number }

/** GET /next: the ranked queue, or null while the server scores the pool (202 with a job). */
export async function fetchNext(strategy: string, count: number): Promise<NextPage | null> {
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

let listing = 0; // the latest loadWorklist call: only its answer is shown

export async function loadWorklist(): Promise<void> {
  const mine = ++listing;
  const strategy = S.strategy;
  const q = new URLSearchParams({ offset: String(S.offset), limit: String(S.pageSize) });
  if (S.filter) q.set("label_state", S.filter);
  if (S.search) q.set("description", S.search);
  // both requests at once; an answer to an older choice of filter, page or queue is dropped
  const [page, next] = await Promise.all([
    api.get<{ items: ImageRecord[]; total: number }>(`/images?${q}`),
    strategy ? fetchNext(strategy, 100) : Promise.resolve(null),
  ]);
  if (mine !== listing) return;
  S.images = page.items;
  S.total = page.total;
  S.queue = new Map();
  S.queueNote = "";
  if (strategy) {
    if (next) {
      S.queue = new Map(next.items.map((it, i) => [it.image.id, { rank: it.rank ?? i + 1, score: it.score }]));
      // the queue is the worklist while a strategy is chosen: ranked unlabeled images first
      S.images = next.items.map((it) => it.image).filter(searched);
      S.total = S.search ? S.images.length : next.remaining_unlabeled;
      S.queueNote = next.model ? ` with ${next.model}${next.version ? ` v${next.version}` : ""}` : "";
    } else {
      S.queueNote = " (scoring…)";
    }
  }
  renderWorklist();
}

/** A scoring job runs before a model-based ranking can be shown: its progress above the list. */
export function watchScoring(id: string, job: Partial<Job>, strategy: string): void {
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

export function renderScoring(progress: number, message: string): void {
  ($("#scoring-bar") as HTMLProgressElement).value = progress;
  $("#scoring-text").textContent = `${message} ${Math.round(progress * 100)}%`;
}

export function onScoringState(j: Partial<Job>): void {
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

/** Whether an image matches the search (the server's rule for the list: contains, or * ? wildcards). */
function searched(im: ImageRecord): boolean {
  if (!S.search) return true;
  const text = String((im.metadata?.series_description as string | undefined) || im.name).toLowerCase();
  const q = S.search.toLowerCase();
  if (!/[*?]/.test(q)) return text.includes(q);
  const re = new RegExp(`^${q.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`);
  return re.test(text);
}

export function renderWorklist(): void {
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
  $("#worklist tbody").innerHTML = rows.join("") || (S.search
    ? `<tr><td colspan="5" class="empty">No image matches “${esc(S.search)}”.</td></tr>`
    : `<tr><td colspan="5" class="empty">No images. Drop NIfTI files, DICOM folders or zips here.</td></tr>`);
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
let searchTimer = 0;
$input("#wl-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = window.setTimeout(() => {
    S.search = $input("#wl-search").value.replace(/[\\\x00-\x1f]/g, "").trim().slice(0, 64);
    S.offset = 0;
    void guard("Searching the worklist", loadWorklist);
  }, 250);
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

export async function nextImage(): Promise<void> {
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
