// Label display, window/level, view layout and zoom.

import { PRESETS, type ViewMode } from "./viewer";
import { $, $input, $select, fmt } from "./ui";
import { viewer } from "./app";
import { setOnWindow } from "./tools";

$input("#opacity").addEventListener("input", () => {
  viewer.setLabelOpacity(Number($input("#opacity").value));
  $input("#show-label").checked = true;
});
$input("#show-label").addEventListener("change", () => viewer.setLabelVisible($input("#show-label").checked));

export function applyPreset(key: string): void {
  showWindow(viewer.applyPreset(key));
}
export function showWindow(w: { center: number; width: number }): void {
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
export function setView(mode: ViewMode): void {
  viewer.setMode(mode);
  document.querySelectorAll<HTMLButtonElement>("[data-view]").forEach((x) => x.classList.toggle("on", x.dataset.view === mode));
  syncUrl({ view: mode === "multi" ? null : mode });
}

export const VIEWS: ViewMode[] = ["multi", "axial", "coronal", "sagittal", "render"];

/** Keep the open image and the view in the address (a reload or a shared link shows them again). */
export function syncUrl(change: { image?: string | null; view?: string | null }): void {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(change)) {
    if (v === undefined) continue;
    if (v === null) q.delete(k);
    else q.set(k, v);
  }
  const search = q.toString();
  const url = `${location.pathname}${search ? `?${search}` : ""}${location.hash}`;
  if (url !== `${location.pathname}${location.search}${location.hash}`) history.replaceState(history.state, "", url);
}
$("#zoom-in").addEventListener("click", () => viewer.zoom(1.25));
$("#zoom-out").addEventListener("click", () => viewer.zoom(0.8));
$("#zoom-reset").addEventListener("click", () => viewer.resetView());
setOnWindow(showWindow); // Shift+drag window/level: the fields follow
viewer.onLocation = (text) => {
  $("#location").textContent = text;
};
