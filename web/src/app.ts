// Shared state of the page: the markup, the viewer and editor, the state object, small helpers.

import * as api from "./api";
import { Viewer, type LutEntry } from "./viewer";
import { Editor } from "./editor";
import { Marks } from "./marks";
import { readLabel } from "./nifti";
import { $ } from "./ui";
import { SHELL } from "./shell";
import type { Evaluation, ImageRecord, Job, LabelClass, ModelRecord, Revision, Schema } from "./api";

/** A tool id: the built-in ones (navigate, positive, negative, brush, eraser, fill, ruler) or one
 * added with `registerTool` (tools.ts). */
export type Tool = string;

export interface Session {
  id: string; model: string; version: number; initial: number | null;
  /** The mask of one step of the session as the server sent it: later responses send only the
   * box that changed since (`?since=`), applied here in place. */
  held?: { step: number; mask: Uint8Array };
}

export const S = {
  me: { name: "", role: "annotator" },
  schema: { classes: [] as LabelClass[] } as Schema,
  images: [] as ImageRecord[],
  total: 0,
  offset: 0,
  pageSize: 100,
  filter: "" as "" | "none" | "draft" | "final",
  search: "", // worklist search: text in the image's name or series description
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
  hiddenClasses: new Set<number>(), // not drawn in the open label (segment list)
  classColors: new Map<number, [number, number, number]>(), // colours chosen in this browser (segment list)
  brush: 3,
  sphere: false,
  watchedJob: null as string | null,
  jobMetrics: [] as Array<Record<string, unknown>>,
  jobs: [] as Job[],
  lastEval: null as Evaluation | null,
  evaluations: [] as Evaluation[], // of the open image, newest first
  features: { putLabel: false, putLabelBox: false, redo: false, dicomSeg: false, sendPacs: false }, // optional server routes, from its OpenAPI schema
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
export const canvas = $("#gl") as HTMLCanvasElement;
export const viewer = new Viewer(canvas, $("#preview") as HTMLCanvasElement);
export const editor = new Editor(viewer);
/** Click markers, brush outline, rulers, view names and slice numbers, over the viewer. */
export const marks = new Marks($("#marks") as HTMLCanvasElement, viewer);
viewer.onDrawn = () => marks.draw();
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

/** The classes' colours (the schema's, or the one chosen in the segment list) for labels and overlays. */
export function lutEntries(): LutEntry[] {
  return S.schema.classes.map((c) => ({ value: c.value, name: c.name, color: S.classColors.get(c.value) ?? c.color }));
}
/** The open label's colours: as `lutEntries`, without the classes switched off in the segment list. */
export function labelLut(): LutEntry[] {
  return lutEntries().map((e) => ({ ...e, hidden: S.hiddenClasses.has(e.value) }));
}
export function foreground(): LabelClass[] {
  return S.schema.classes.filter((c) => c.value !== 0);
}
export function className(v: number): string {
  return S.schema.classes.find((c) => c.value === v)?.name ?? String(v);
}
export function can(role: string): boolean {
  const order = ["annotator", "reviewer", "admin"];
  return order.indexOf(S.me.role) >= order.indexOf(role);
}
export async function fetchLabel(imageId: string, rev: number | "latest"): Promise<Uint8Array> {
  const { data } = await api.binary("GET", `/images/${encodeURIComponent(imageId)}/labels/${rev}`);
  return (await readLabel(data)).data;
}
export function shortTime(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
export function setStatus(text: string): void {
  $("#status").textContent = text;
}
export function download(blob: Blob, name: string): void {
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
