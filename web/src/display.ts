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
}
$("#zoom-in").addEventListener("click", () => viewer.zoom(1.25));
$("#zoom-out").addEventListener("click", () => viewer.zoom(0.8));
$("#zoom-reset").addEventListener("click", () => viewer.resetView());
setOnWindow(showWindow); // Shift+drag window/level: the fields follow
viewer.onLocation = (text) => {
  $("#location").textContent = text;
};
