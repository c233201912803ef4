// Label classes, editing tools and the mouse on the canvas.

import { $, $input, esc, guard } from "./ui";
import { type Tool, S, canvas, viewer, editor, foreground } from "./app";
import { placeClick } from "./session";

export function renderClasses(): void {
  $("#classes").innerHTML = foreground().map((c, i) =>
    `<button class="cls ${c.value === S.classValue ? "on" : ""}" data-value="${c.value}" title="key ${i + 1}">
      <span class="sw" style="background:rgb(${c.color.join(",")})"></span>${i + 1} ${esc(c.name)}</button>`).join("")
    || `<span class="muted">The label schema has no classes.</span>`;
  $("#classes").querySelectorAll<HTMLButtonElement>("button").forEach((b) =>
    b.addEventListener("click", () => setClass(Number(b.dataset.value))));
}
export function setClass(v: number): void {
  S.classValue = v;
  renderClasses();
}
export function setTool(t: Tool): void {
  S.tool = t;
  document.querySelectorAll<HTMLButtonElement>("[data-tool]").forEach((b) => b.classList.toggle("on", b.dataset.tool === t));
  canvas.style.cursor = t === "navigate" ? "default" : "crosshair";
  document.body.dataset.tool = t;
}
document.querySelectorAll<HTMLButtonElement>("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool as Tool)));
$input("#brush-size").addEventListener("input", () => setBrush(Number($input("#brush-size").value)));
export function setBrush(n: number): void {
  S.brush = Math.max(1, Math.min(30, n));
  $input("#brush-size").value = String(S.brush);
  $("#brush-size-v").textContent = String(S.brush);
}
$input("#sphere").addEventListener("change", () => {
  S.sphere = $input("#sphere").checked;
});


// --- mouse on the canvas: clicks and brush (captured before NiiVue's own handlers) ---------------

let painting: { last: [number, number, number]; axis: number; value: number } | null = null;
export const wrap = $("#viewer-wrap");
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
export const endPaint = (e: Event) => {
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
