// Tabs, the help dialog and the keyboard shortcuts.

import { $, $input, esc, guard } from "./ui";
import { HELP } from "./shell";
import { S, viewer, foreground, marks } from "./app";
import { nextImage } from "./worklist";
import { updateOverlay } from "./overlays";
import { setView } from "./display";
import { setClass, setTool, setBrush, toolForKey, lastTile, renderRulers } from "./tools";
import { runModel, undo, redo } from "./session";
import { save } from "./save";
import { interpolateNow } from "./interpolate";
import { renderChart } from "./models";

document.querySelectorAll<HTMLButtonElement>("[data-tab]").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab!)));
export function showTab(name: string): void {
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
  // arrows: the slice of the tile under the mouse (the last one it was over)
  if (k === "ArrowUp" || k === "ArrowRight") return act(() => viewer.scrollSlice(lastTile(), 1));
  if (k === "ArrowDown" || k === "ArrowLeft") return act(() => viewer.scrollSlice(lastTile(), -1));
  if (k === "Escape" && marks.rulers.length) {
    marks.rulers = [];
    return act(renderRulers);
  }
  if (/^[1-9]$/.test(k)) {
    const c = foreground()[Number(k) - 1];
    if (c) act(() => setClass(c.value));
    return;
  }
  const keys: Record<string, () => void> = {
    "[": () => setBrush(S.brush - 1), "]": () => setBrush(S.brush + 1), i: interpolateNow,
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
    m: () => setView("multi"), a: () => setView("axial"), c: () => setView("coronal"), g: () => setView("sagittal"), d: () => setView("render"),
    "?": () => ($("#help") as HTMLDialogElement).showModal(),
  };
  // tool shortcuts come from the tool registry (tools.ts), extra tools included
  const tool = k.length === 1 && k !== "N" ? toolForKey(k) : null;
  if (tool) return act(() => setTool(tool));
  const fn = keys[k] ?? keys[k.toLowerCase()];
  if (fn && !(k === "N" && !e.shiftKey)) act(fn);
});
