// The segment list: one row per label class — choose it for editing (key 1…9), show or hide it,
// pick its colour (this browser only), and its volume in mL in the open label, kept current
// while editing. Also the outline display of the label.

import { $, $input, esc } from "./ui";
import { S, viewer, editor, foreground, labelLut } from "./app";
import { setClass } from "./tools";

const STORE = "segloop.classColors";

function hex(c: [number, number, number]): string {
  return `#${c.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

function loadColors(): void {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) ?? "{}") as Record<string, [number, number, number]>;
    for (const [k, v] of Object.entries(saved)) if (Array.isArray(v) && v.length === 3) S.classColors.set(Number(k), v);
  } catch {
    /* nothing saved, or unreadable: the schema's colours */
  }
}
loadColors();

/** Millilitres per class value in the open label. */
export function volumes(): Map<number, number> {
  const out = new Map<number, number>();
  if (!viewer.header) return out;
  const counts = new Map<number, number>();
  for (const v of editor.current()) if (v) counts.set(v, (counts.get(v) ?? 0) + 1);
  const sp = viewer.header.spacing;
  const ml = (sp[0] * sp[1] * sp[2]) / 1000;
  for (const [v, n] of counts) out.set(v, n * ml);
  return out;
}

export function fmtMl(ml: number): string {
  return ml === 0 ? "0" : ml < 10 ? ml.toFixed(2) : ml.toFixed(1);
}

export function renderSegments(): void {
  $("#classes").innerHTML = foreground().length ? `<table class="grid segments"><tbody>${foreground().map((c, i) => {
    const color = S.classColors.get(c.value) ?? c.color;
    const shown = !S.hiddenClasses.has(c.value);
    return `<tr data-value="${c.value}" class="${c.value === S.classValue ? "sel" : ""}">
      <td><input type="color" class="seg-color" value="${hex(color)}" title="colour of ${esc(c.name)} (this browser)"></td>
      <td><button class="cls ${c.value === S.classValue ? "on" : ""}" data-value="${c.value}" title="edit this class (key ${i + 1})">${i + 1} ${esc(c.name)}</button></td>
      <td><label title="show ${esc(c.name)}"><input type="checkbox" class="seg-shown" ${shown ? "checked" : ""}> shown</label></td>
      <td class="num seg-ml" title="volume in the open label">–</td></tr>`;
  }).join("")}</tbody></table>` : `<span class="muted">The label schema has no classes.</span>`;
  const row = (el: Element) => Number((el.closest("tr[data-value]") as HTMLElement).dataset.value);
  $("#classes").querySelectorAll<HTMLButtonElement>("button.cls").forEach((b) =>
    b.addEventListener("click", () => setClass(Number(b.dataset.value))));
  $("#classes").querySelectorAll<HTMLInputElement>(".seg-shown").forEach((b) => b.addEventListener("change", () => {
    if (b.checked) S.hiddenClasses.delete(row(b));
    else S.hiddenClasses.add(row(b));
    viewer.setLabelColors(labelLut());
    document.body.dataset.hiddenClasses = [...S.hiddenClasses].sort().join(",");
  }));
  $("#classes").querySelectorAll<HTMLInputElement>(".seg-color").forEach((b) => b.addEventListener("input", () => {
    const c = b.value.match(/[0-9a-f]{2}/gi)!.map((h) => parseInt(h, 16)) as [number, number, number];
    S.classColors.set(row(b), c);
    localStorage.setItem(STORE, JSON.stringify(Object.fromEntries(S.classColors)));
    viewer.setLabelColors(labelLut());
  }));
  showVolumes();
}

function showVolumes(): void {
  const vol = volumes();
  $("#classes").querySelectorAll<HTMLElement>("tr[data-value]").forEach((tr) => {
    const ml = vol.get(Number(tr.dataset.value)) ?? 0;
    tr.querySelector(".seg-ml")!.textContent = viewer.header ? `${fmtMl(ml)} mL` : "–";
  });
}

let timer = 0;
/** The volumes follow the label (at most every 150 ms while painting). */
export function volumesChanged(): void {
  if (timer) return;
  timer = window.setTimeout(() => {
    timer = 0;
    showVolumes();
  }, 150);
}

$input("#outline").addEventListener("change", () => {
  viewer.setLabelOutline($input("#outline").checked);
  $input("#show-label").checked = true;
  viewer.setLabelVisible(true);
});
