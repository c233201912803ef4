// What the viewer hands NiiVue: colour tables from the label schema, window presets, images,
// and the map from the file's voxel order to NiiVue's RAS order.

import { type Niivue, NVImage } from "@niivue/niivue";

/** A label value's colour; `hidden`: not drawn (the segment list's visibility switch). */
export interface LutEntry { value: number; name: string; color: [number, number, number]; hidden?: boolean }

export const PRESETS: Record<string, { label: string; center: number; width: number } | null> = {
  auto: null,
  "ct-soft": { label: "CT soft tissue", center: 40, width: 400 },
  "ct-lung": { label: "CT lung", center: -600, width: 1500 },
  "ct-bone": { label: "CT bone", center: 400, width: 1800 },
  "ct-brain": { label: "CT brain", center: 40, width: 80 },
  "mr-auto": { label: "MR (robust range)", center: NaN, width: NaN },
};

/** NVImage.new with its defaults spelled out (the typings make every argument required). */
export function makeImage(buf: ArrayBuffer, name: string, colormap: string, opacity: number): Promise<NVImage> {
  return NVImage.new(buf, name, colormap, opacity, null, NaN, NaN, true, 0.02, false, false, "", 0,
    0 as Parameters<typeof NVImage.new>[13], NaN, NaN, true, null, 0, null);
}

export function lut(entries: LutEntry[]): { R: number[]; G: number[]; B: number[]; A: number[]; I: number[]; labels: string[] } {
  const sorted = [...entries].sort((a, b) => a.value - b.value);
  const out = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const e of sorted) {
    if (e.value === 0) continue;
    out.R.push(e.color[0]);
    out.G.push(e.color[1]);
    out.B.push(e.color[2]);
    out.A.push(e.hidden ? 0 : 255);
    out.I.push(e.value);
    out.labels.push(e.name);
  }
  return out;
}

/** The fill's opacity under the outline (low: the border carries the shape; the 3-D view keeps a hint). */
export const OUTLINE_FILL = 0.12;

/** NiiVue's drawing colour table (256 entries) from the label schema. */
export function drawLut(entries: LutEntry[]): Niivue["drawLut"] {
  const t = lut(entries);
  const table = new Uint8ClampedArray(256 * 4);
  const labels: string[] = Array.from({ length: 256 }, (_, i) => String(i));
  t.I.forEach((v, k) => {
    if (v <= 0 || v > 255) return;
    table.set([t.R[k], t.G[k], t.B[k], t.A[k]], v * 4);
    labels[v] = t.labels[k];
  });
  labels[0] = "";
  return { lut: table, labels };
}

export function presetWindow(v: NVImage, key: string): { center: number; width: number } {
  const p = PRESETS[key];
  if (!p || Number.isNaN(p.center)) {
    const lo = (key === "mr-auto" ? v.robust_min : v.global_min) ?? 0;
    const hi = (key === "mr-auto" ? v.robust_max : v.global_max) ?? 1;
    return { center: (lo + hi) / 2, width: Math.max(1e-6, hi - lo) };
  }
  return { center: p.center, width: p.width };
}

export function rasMap(img: NVImage): RasMap {
  const h = img.hdr!;
  const perm = (img.permRAS ?? [1, 2, 3]).slice();
  const dims = [1, 2, 3].map((p) => h.dims[Math.abs(perm[p - 1])]) as [number, number, number];
  const step = (img.img2RASstep ?? [1, h.dims[1], h.dims[1] * h.dims[2]]).slice() as [number, number, number];
  const start = (img.img2RASstart ?? [0, 0, 0]).slice() as [number, number, number];
  const identity = perm[0] === 1 && perm[1] === 2 && perm[2] === 3;
  return { identity, dims, step, start, perm };
}

/** Native (file order) → NiiVue's RAS voxel order, as NiiVue's own `img2RAS` computes it. */
export interface RasMap { identity: boolean; dims: [number, number, number]; step: [number, number, number]; start: [number, number, number]; perm: number[] }
