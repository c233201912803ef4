// Label classes, the editing tools, and the mouse on the canvas.
//
// Every tool is a `ToolDef` in one registry: the built-in ones (navigate, clicks, brush, eraser,
// fill, ruler) below, and extra ones added with `registerTool` (e.g. box / scribble / lasso
// prompts in their own module: `registerTool({...})` at its import, then import that module
// from main.ts). A tool gets the left-button press on a 2-D tile with the voxel under it and
// may return a drag (moves and release). Whatever the tool: Shift+left drag is window/level,
// right or middle drag pans, the wheel scrolls slices (Ctrl+wheel zooms) — handled here,
// before NiiVue sees the events.

import { $, $input, guard } from "./ui";
import { S, canvas, viewer, editor, marks } from "./app";
import { placeClick } from "./session";
import { renderSegments } from "./segments";
import { dist } from "./marks";
import type { VoxelHit } from "./viewer";

export interface ToolDrag {
  move(hit: VoxelHit | null, e: MouseEvent): void;
  up(e: MouseEvent): void;
}

export interface ToolDef {
  id: string;
  label: string;
  title: string;
  /** One-letter shortcut (lower case), optional. */
  key?: string;
  /** The brush outline follows the cursor while this tool is chosen. */
  outline?: boolean;
  down(hit: VoxelHit, e: MouseEvent): ToolDrag | void;
}

const registry = new Map<string, ToolDef>();

/** Add a tool: a button in the tool grid, its shortcut, and its mouse handling. */
export function registerTool(def: ToolDef): void {
  registry.set(def.id, def);
  let b = document.querySelector<HTMLButtonElement>(`[data-tool="${def.id}"]`);
  if (!b) {
    b = document.createElement("button");
    b.dataset.tool = def.id;
    $("#tools").append(b);
  }
  b.textContent = def.label;
  b.title = def.key ? `${def.title} (${def.key.toUpperCase()})` : def.title;
  b.onclick = () => setTool(def.id);
}

export function toolForKey(k: string): string | null {
  for (const t of registry.values()) if (t.key && t.key === k.toLowerCase()) return t.id;
  return null;
}

/** The class list is the segment list (segments.ts). */
export function renderClasses(): void {
  renderSegments();
}
export function setClass(v: number): void {
  S.classValue = v;
  renderClasses();
}
export function setTool(t: string): void {
  if (!registry.has(t)) return;
  S.tool = t;
  document.querySelectorAll<HTMLButtonElement>("[data-tool]").forEach((b) => b.classList.toggle("on", b.dataset.tool === t));
  canvas.style.cursor = t === "navigate" ? "default" : "crosshair";
  document.body.dataset.tool = t;
  if (!registry.get(t)?.outline) marks.cursor = null;
  marks.draw();
}
$input("#brush-size").addEventListener("input", () => setBrush(Number($input("#brush-size").value)));
export function setBrush(n: number): void {
  S.brush = Math.max(1, Math.min(30, n));
  $input("#brush-size").value = String(S.brush);
  $("#brush-size-v").textContent = String(S.brush);
  if (marks.cursor) {
    marks.cursor.radiusVox = S.brush;
    marks.draw();
  }
}
$input("#sphere").addEventListener("change", () => {
  S.sphere = $input("#sphere").checked;
});

// --- the built-in tools ---------------------------------------------------------------------------

function classColor(v: number): [number, number, number] {
  return S.schema.classes.find((c) => c.value === v)?.color ?? [255, 255, 255];
}

/** The threshold range of the brush (image intensities), or null when it paints everywhere. */
function brushRange(): [number, number] | null {
  if (!$input("#brush-thr").checked) return null;
  const lo = Number($input("#brush-thr-lo").value), hi = Number($input("#brush-thr-hi").value);
  return Number.isFinite(lo) && Number.isFinite(hi) ? [Math.min(lo, hi), Math.max(lo, hi)] : null;
}

function paintTool(id: "brush" | "eraser", label: string, title: string, key: string): ToolDef {
  return {
    id, label, title, key, outline: true,
    down(hit) {
      const axis = viewer.normalAxis(hit.axCorSag);
      const value = id === "eraser" ? 0 : S.classValue;
      const range = id === "brush" ? brushRange() : null;
      let last = hit.vox;
      editor.beginStroke();
      editor.paint(hit.vox, S.brush, value, S.sphere, axis, range);
      return {
        move(h) {
          if (!h) return;
          editor.paintLine(last, h.vox, S.brush, value, S.sphere, axis, range);
          last = h.vox;
        },
        up() {
          editor.endStroke();
        },
      };
    },
  };
}

let rulerId = 0;
const BUILT_IN: ToolDef[] = [
  { id: "navigate", label: "Navigate", title: "Navigate: a click moves the crosshair", key: "v", down: () => undefined },
  {
    id: "positive", label: "+ Click", title: "Positive click: add the class here", key: "p",
    down(hit) {
      void guard("The click could not be applied", () => placeClick(hit.vox, true));
    },
  },
  {
    id: "negative", label: "− Click", title: "Negative click: not this class here", key: "n",
    down(hit) {
      void guard("The click could not be applied", () => placeClick(hit.vox, false));
    },
  },
  paintTool("brush", "Brush", "Brush (threshold-limited when 'only' is ticked)", "b"),
  paintTool("eraser", "Eraser", "Eraser", "e"),
  {
    id: "fill", label: "Fill", title: "Fill a 2-D region", key: "f",
    down(hit) {
      editor.fill(hit.vox, S.classValue, viewer.normalAxis(hit.axCorSag));
    },
  },
  {
    id: "ruler", label: "Ruler", title: "Measure a distance: drag from one point to another", key: "u",
    down(hit) {
      const a = viewer.voxToMM(hit.vox);
      marks.drawing = { a, b: a };
      return {
        move(h) {
          if (h && marks.drawing) {
            marks.drawing.b = viewer.voxToMM(h.vox);
            marks.draw();
          }
        },
        up() {
          const d = marks.drawing;
          marks.drawing = null;
          if (d && dist(d.a, d.b) > 0) marks.rulers.push({ id: ++rulerId, a: d.a, b: d.b, mm: dist(d.a, d.b) });
          renderRulers();
        },
      };
    },
  },
];
for (const t of BUILT_IN) registerTool(t);

/** The measurements of the open image, each removable. */
export function renderRulers(): void {
  $("#rulers").innerHTML = marks.rulers.map((r) =>
    `<div class="ruler" data-ruler="${r.id}">${r.mm.toFixed(1)} mm <button class="link rm-ruler" title="Remove this measurement">✕</button></div>`).join("");
  $("#rulers").querySelectorAll<HTMLButtonElement>(".rm-ruler").forEach((b) => b.addEventListener("click", () => {
    const id = Number((b.closest("[data-ruler]") as HTMLElement).dataset.ruler);
    marks.rulers = marks.rulers.filter((r) => r.id !== id);
    renderRulers();
  }));
  document.body.dataset.rulers = String(marks.rulers.length);
  marks.draw();
}

$input("#show-clicks").addEventListener("change", () => {
  marks.showClicks = $input("#show-clicks").checked;
  marks.draw();
});

/** Click markers: the clicks of the session that undo can still take back (in order). */
export function clickMarks(): void {
  marks.clicks = editor.clickGroups().flatMap((g) => g.points.map((p) => {
    const positive = g.class !== "background";
    const v = positive ? Number(g.class) : 0;
    return { vox: p as [number, number, number], positive, color: positive ? classColor(v) : [240, 80, 80] as [number, number, number], label: "" };
  }));
  document.body.dataset.markers = String(marks.clicks.length);
}

// --- the mouse on the canvas (captured before NiiVue's own handlers) ------------------------------

let drag: ToolDrag | null = null;
let other: ((e: MouseEvent) => void) | null = null; // window/level or pan drag in progress
export const wrap = $("#viewer-wrap");
let overTile = 0; // the tile the mouse was last over (arrow keys scroll it)
export function lastTile(): number {
  return overTile;
}

function local(e: MouseEvent): [number, number] {
  const r = canvas.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
}

wrap.addEventListener("mousedown", (e) => {
  if (e.button === 0 && e.shiftKey) {
    // window / level: right = wider, down = higher level (brighter image moves darker)
    e.stopPropagation();
    e.preventDefault();
    const w0 = viewer.window();
    const [x0, y0] = local(e);
    const perPx = Math.max(w0.width, 1e-6) / 256;
    other = (m) => {
      const [x, y] = local(m);
      viewer.setWindow(w0.center + (y - y0) * perPx, Math.max(1e-6, w0.width + (x - x0) * perPx));
      onWindow(viewer.window());
    };
    return;
  }
  if (e.button === 1 || e.button === 2) {
    e.stopPropagation();
    e.preventDefault();
    const [x, y] = local(e);
    const move = viewer.beginPan(x, y);
    if (move) other = (m) => move(...local(m));
    return;
  }
  const tool = registry.get(S.tool);
  if (!tool || S.tool === "navigate" || e.button !== 0) return;
  const hit = viewer.voxelAt(e);
  if (!hit) return;
  e.stopPropagation();
  e.preventDefault();
  canvas.focus();
  viewer.userInput();
  drag = tool.down(hit, e) ?? null;
  // NiiVue never saw this press: its release must not reach NiiVue either, whose mouse-up
  // handler redraws the whole scene (in the 2x2 layout: ray-casts the 3-D tile, ~0.3-0.7 s of
  // software WebGL that then delays the click's own request and answer)
  swallowUp = true;
}, true);

wrap.addEventListener("mousemove", (e) => {
  if (other) {
    e.stopPropagation();
    other(e);
    return;
  }
  const hit = viewer.voxelAt(e);
  if (hit) overTile = hit.axCorSag;
  if (registry.get(S.tool)?.outline) {
    const [x, y] = local(e);
    const color = S.tool === "eraser" ? "#ffffff" : `rgb(${classColor(S.classValue).join(",")})`;
    marks.cursor = hit ? { x, y, axCorSag: hit.axCorSag, radiusVox: S.brush, color } : null;
    marks.draw();
  }
  if (!drag) return;
  e.stopPropagation();
  drag.move(hit, e);
}, true);

let swallowUp = false; // the press went to a tool: its release is the tool's too
const end = (e: MouseEvent) => {
  if (other) {
    e.stopPropagation();
    other = null;
  }
  if (swallowUp && e.type === "mouseup") e.stopPropagation();
  swallowUp = false;
  if (!drag) return;
  e.stopPropagation();
  const d = drag;
  drag = null;
  d.up(e);
};
wrap.addEventListener("mouseup", end, true);
wrap.addEventListener("mouseleave", (e) => {
  end(e);
  if (marks.cursor) {
    marks.cursor = null;
    marks.draw();
  }
}, true);
wrap.addEventListener("contextmenu", (e) => e.preventDefault(), true);
wrap.addEventListener("wheel", (e) => {
  if (viewer.tileAt(e) > 2) return; // the 3-D view: NiiVue zooms it
  e.preventDefault();
  e.stopPropagation();
  if (e.ctrlKey) {
    viewer.zoom(e.deltaY < 0 ? 1.1 : 1 / 1.1);
    return;
  }
  const hit = viewer.voxelAt(e);
  viewer.scrollSlice(hit?.axCorSag ?? overTile, e.deltaY < 0 ? 1 : -1);
}, { capture: true, passive: false });

/** Window/level changed by a drag: the toolbar's fields follow (set by display.ts). */
export let onWindow: (w: { center: number; width: number }) => void = () => {};
export function setOnWindow(fn: (w: { center: number; width: number }) => void): void {
  onWindow = fn;
}
