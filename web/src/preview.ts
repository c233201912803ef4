// A quick look at a large image while NiiVue builds its textures: without a GPU (software
// WebGL) that takes seconds for 256x256x128 voxels and blocks the page, so the middle axial,
// coronal and sagittal slices are first drawn on a 2-D canvas over the viewer, in the viewer's
// layout and orientation (neurological: the patient's left on the left; anterior up in axial).
// A one-slice image (the middle slice of a PACS series, fetched before the whole series) is
// drawn alone, in its own plane, over the whole canvas.

import type { NiftiHeaderInfo } from "./nifti";
import type { ViewMode } from "./viewer";

type Voxels = ArrayLike<number>;

function voxelArray(raw: ArrayBuffer, h: NiftiHeaderInfo): Voxels | null {
  if (!h.littleEndian) return null;
  const n = h.dims[0] * h.dims[1] * h.dims[2];
  const o = h.voxOffset;
  const fits = (bytes: number) => o % bytes === 0 && o + n * bytes <= raw.byteLength;
  switch (h.datatype) {
    case 2: return new Uint8Array(raw, o, n);
    case 256: return new Int8Array(raw, o, n);
    case 4: return fits(2) ? new Int16Array(raw, o, n) : null;
    case 512: return fits(2) ? new Uint16Array(raw, o, n) : null;
    case 8: return fits(4) ? new Int32Array(raw, o, n) : null;
    case 768: return fits(4) ? new Uint32Array(raw, o, n) : null;
    case 16: return fits(4) ? new Float32Array(raw, o, n) : null;
    case 64: return fits(8) ? new Float64Array(raw, o, n) : null;
    default: return null;
  }
}

/** The file axis closest to each world axis (R, A, S) and whether it runs the same way. */
function axes(h: NiftiHeaderInfo): Array<{ axis: number; sign: number }> {
  const a = h.affine;
  return [0, 1, 2].map((w) => {
    let best = 0, bestV = -1;
    for (let c = 0; c < 3; c++) {
      const v = Math.abs(a[w][c]) / (Math.hypot(a[0][c], a[1][c], a[2][c]) || 1);
      if (v > bestV) {
        bestV = v;
        best = c;
      }
    }
    return { axis: best, sign: a[w][best] < 0 ? -1 : 1 };
  });
}

/** 1st and 99th percentile of a strided sample (the "MR robust range" window). */
function robustRange(v: Voxels): [number, number] {
  const step = Math.max(1, Math.floor(v.length / 200_000));
  const s: number[] = [];
  for (let i = 0; i < v.length; i += step) if (Number.isFinite(v[i])) s.push(v[i]);
  s.sort((x, y) => x - y);
  if (!s.length) return [0, 1];
  return [s[Math.floor(s.length * 0.01)], s[Math.min(s.length - 1, Math.floor(s.length * 0.99))]];
}

/**
 * Draw the preview; returns false when the image's voxel type is not handled (no preview).
 * `window` is the raw-value window (centre, width) when a fixed preset applies, else null.
 */
export function drawPreview(canvas: HTMLCanvasElement, raw: ArrayBuffer, h: NiftiHeaderInfo, window: { center: number; width: number } | null, mode: ViewMode): boolean {
  const v = voxelArray(raw, h);
  if (!v) return false;
  const dv = new DataView(raw);
  let slope = dv.getFloat32(112, true), inter = dv.getFloat32(116, true);
  if (!Number.isFinite(slope) || slope === 0) [slope, inter] = [1, 0];
  if (!Number.isFinite(inter)) inter = 0;
  let lo: number, hi: number;
  if (window) [lo, hi] = [(window.center - window.width / 2 - inter) / slope, (window.center + window.width / 2 - inter) / slope];
  else [lo, hi] = robustRange(v);
  if (lo > hi) [lo, hi] = [hi, lo];
  const scale = 255 / Math.max(1e-12, hi - lo);
  const [R, A, S] = axes(h);
  const d = h.dims, sp = h.spacing;
  const stride = [1, d[0], d[0] * d[1]];
  const mid = [0, 1, 2].map((k) => Math.floor(d[k] / 2));
  // a slice: columns along world axis `c` (increasing), rows along world axis `r` (decreasing: up)
  const slice = (c: { axis: number; sign: number }, r: { axis: number; sign: number }) => {
    const w = d[c.axis], hgt = d[r.axis];
    const img = new ImageData(w, hgt);
    const fixed = [0, 1, 2].find((k) => k !== c.axis && k !== r.axis)!;
    const base = mid[fixed] * stride[fixed];
    for (let y = 0; y < hgt; y++) {
      const ry = r.sign > 0 ? hgt - 1 - y : y;
      for (let x = 0; x < w; x++) {
        const cx = c.sign > 0 ? x : w - 1 - x;
        const g = Math.max(0, Math.min(255, (v[base + cx * stride[c.axis] + ry * stride[r.axis]] - lo) * scale));
        const p = (y * w + x) * 4;
        img.data[p] = img.data[p + 1] = img.data[p + 2] = g;
        img.data[p + 3] = 255;
      }
    }
    return { img, mmW: w * sp[c.axis], mmH: hgt * sp[r.axis] };
  };
  const tiles = { axial: () => slice(R, A), coronal: () => slice(R, S), sagittal: () => slice(A, S) };
  const dpr = globalThis.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * dpr);
  canvas.height = Math.round(canvas.clientHeight * dpr);
  const g = canvas.getContext("2d")!;
  g.fillStyle = "rgb(20, 23, 28)";
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.imageSmoothingEnabled = false;
  const put = (t: ReturnType<typeof slice>, x: number, y: number, w: number, hh: number) => {
    const f = Math.min(w / t.mmW, hh / t.mmH);
    const bmp = document.createElement("canvas");
    bmp.width = t.img.width;
    bmp.height = t.img.height;
    bmp.getContext("2d")!.putImageData(t.img, 0, 0);
    g.drawImage(bmp, x + (w - t.mmW * f) / 2, y + (hh - t.mmH * f) / 2, t.mmW * f, t.mmH * f);
  };
  const W = canvas.width, H = canvas.height;
  const flat = [0, 1, 2].find((k) => d[k] === 1);
  if (flat !== undefined) {
    // one slice (a PACS series' middle slice, fetched before the series): its own plane, whole canvas
    const plane = flat === S.axis ? tiles.axial : flat === A.axis ? tiles.coronal : tiles.sagittal;
    put(plane(), 0, 0, W, H);
  } else if (mode === "multi") {
    put(tiles.coronal(), 0, 0, W / 2, H / 2);
    put(tiles.sagittal(), W / 2, 0, W / 2, H / 2);
    put(tiles.axial(), 0, H / 2, W / 2, H / 2);
  } else put(tiles[mode === "render" ? "axial" : mode](), 0, 0, W, H);
  g.fillStyle = "rgba(228, 230, 235, 0.8)";
  g.font = `${Math.round(12 * dpr)}px system-ui, sans-serif`;
  g.fillText(flat !== undefined ? "the middle slice; loading the series…" : "preparing the 3-D view…", 8 * dpr, H - 8 * dpr);
  return true;
}
