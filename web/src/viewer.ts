// NiiVue wrapper: the image, an editable label layer and a comparison layer (another revision,
// a model prediction or a discrepancy map). Voxel coordinates here are always the file's
// (i fastest) index order, the same as the server's arrays.

import { Niivue, NVImage, SLICE_TYPE, SHOW_RENDER, DRAG_MODE } from "@niivue/niivue";
import { invert4, parseHeader, writeLabel, type NiftiHeaderInfo } from "./nifti";

export interface LutEntry { value: number; name: string; color: [number, number, number] }
export type ViewMode = "multi" | "axial" | "coronal" | "sagittal" | "render";

export interface VoxelHit { vox: [number, number, number]; axCorSag: number }

export const PRESETS: Record<string, { label: string; center: number; width: number } | null> = {
  auto: null,
  "ct-soft": { label: "CT soft tissue", center: 40, width: 400 },
  "ct-lung": { label: "CT lung", center: -600, width: 1500 },
  "ct-bone": { label: "CT bone", center: 400, width: 1800 },
  "ct-brain": { label: "CT brain", center: 40, width: 80 },
  "mr-auto": { label: "MR (robust range)", center: NaN, width: NaN },
};

/** NVImage.new with its defaults spelled out (the typings make every argument required). */
function makeImage(buf: ArrayBuffer, name: string, colormap: string, opacity: number): Promise<NVImage> {
  return NVImage.new(buf, name, colormap, opacity, null, NaN, NaN, true, 0.02, false, false, "", 0,
    0 as Parameters<typeof NVImage.new>[13], NaN, NaN, true, null, 0, null);
}

function lut(entries: LutEntry[]): { R: number[]; G: number[]; B: number[]; A: number[]; I: number[]; labels: string[] } {
  const sorted = [...entries].sort((a, b) => a.value - b.value);
  const out = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const e of sorted) {
    if (e.value === 0) continue;
    out.R.push(e.color[0]);
    out.G.push(e.color[1]);
    out.B.push(e.color[2]);
    out.A.push(255);
    out.I.push(e.value);
    out.labels.push(e.name);
  }
  return out;
}

export class Viewer {
  readonly nv: Niivue;
  header: NiftiHeaderInfo | null = null;
  private inv: number[][] | null = null;
  label: NVImage | null = null;
  compare: NVImage | null = null;
  labelOpacity = 0.5;
  compareOpacity = 0.6;
  private pending = false;
  onLocation: (text: string) => void = () => {};

  constructor(private canvas: HTMLCanvasElement) {
    this.nv = new Niivue({
      backColor: [0.08, 0.09, 0.11, 1],
      show3Dcrosshair: true,
      isColorbar: false,
      dragAndDropEnabled: false,
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      multiplanarLayout: 2, // grid: 2x2 tiles
      isOrientCube: false,
      crosshairColor: [0.2, 0.8, 1, 0.6],
      crosshairWidth: 0.25,
      crosshairGap: 4,
      logLevel: "error",
      loadingText: "",
      isNearestInterpolation: true,
      mouseEventConfig: {
        leftButton: { primary: DRAG_MODE.crosshair, withShift: DRAG_MODE.windowing },
        rightButton: DRAG_MODE.pan,
        centerButton: DRAG_MODE.pan,
      },
    });
  }

  async attach(): Promise<void> {
    await this.nv.attachToCanvas(this.canvas);
    this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
    this.nv.onLocationChange = (loc: unknown) => {
      const l = loc as { string?: string };
      this.onLocation(l.string ?? "");
    };
  }

  get dims(): [number, number, number] {
    return this.header ? this.header.dims : [0, 0, 0];
  }

  get voxels(): number {
    const [a, b, c] = this.dims;
    return a * b * c;
  }

  /** Show a new image (uncompressed NIfTI bytes) with an empty label layer. */
  async loadImage(raw: ArrayBuffer, name: string, labelLut: LutEntry[]): Promise<void> {
    this.header = parseHeader(raw);
    while (this.nv.volumes.length) this.nv.removeVolumeByIndex(this.nv.volumes.length - 1);
    this.label = null;
    this.compare = null;
    const img = await makeImage(raw, `${name}.nii`, "gray", 1);
    this.nv.addVolume(img);
    const aff = (img.hdr as { affine?: number[][] } | null)?.affine ?? this.header.affine;
    this.inv = invert4(aff.map((r) => [...r]));
    const zero = new Uint8Array(this.voxels);
    const lbuf = writeLabel(this.header, zero);
    this.label = await makeImage(lbuf.buffer as ArrayBuffer, "label.nii", "gray", this.labelOpacity);
    this.label.setColormapLabel(lut(labelLut));
    this.nv.addVolume(this.label);
    this.nv.setOpacity(1, this.labelOpacity);
    this.nv.updateGLVolume();
  }

  setLabelColors(entries: LutEntry[]): void {
    if (!this.label) return;
    this.label.setColormapLabel(lut(entries));
    this.nv.updateGLVolume();
  }

  /** The label layer's voxels (edit in place, then call `refresh`). */
  labelData(): Uint8Array {
    if (!this.label?.img) throw new Error("no image is open");
    return this.label.img as Uint8Array;
  }

  /** Redraw after the label changed; coalesced to one upload per animation frame. */
  refresh(): Promise<void> {
    return new Promise((resolve) => {
      if (this.pending) {
        requestAnimationFrame(() => resolve());
        return;
      }
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.nv.updateGLVolume();
        resolve();
      });
    });
  }

  setLabelVisible(on: boolean): void {
    if (!this.label) return;
    this.nv.setOpacity(this.nv.volumes.indexOf(this.label), on ? this.labelOpacity : 0);
  }

  setLabelOpacity(v: number): void {
    this.labelOpacity = v;
    this.setLabelVisible(true);
  }

  /** A comparison layer (label map on the image grid) with its own colours. */
  async setCompare(data: Uint8Array | null, entries: LutEntry[] = []): Promise<void> {
    if (this.compare) {
      this.nv.removeVolume(this.compare);
      this.compare = null;
    }
    if (data && this.header) {
      const buf = writeLabel(this.header, data);
      this.compare = await makeImage(buf.buffer as ArrayBuffer, "compare.nii", "gray", this.compareOpacity);
      this.compare.setColormapLabel(lut(entries));
      this.nv.addVolume(this.compare);
      this.nv.setOpacity(this.nv.volumes.indexOf(this.compare), this.compareOpacity);
    }
    this.nv.updateGLVolume();
  }

  setCompareOpacity(v: number): void {
    this.compareOpacity = v;
    if (this.compare) this.nv.setOpacity(this.nv.volumes.indexOf(this.compare), v);
  }

  setWindow(center: number, width: number): void {
    const v = this.nv.volumes[0];
    if (!v) return;
    v.cal_min = center - width / 2;
    v.cal_max = center + width / 2;
    this.nv.updateGLVolume();
  }

  /** Window/level preset; `auto` uses NiiVue's robust range, `mr-auto` the 1–99th percentile. */
  applyPreset(key: string): { center: number; width: number } {
    const v = this.nv.volumes[0];
    if (!v) return { center: 0, width: 1 };
    const p = PRESETS[key];
    if (!p || Number.isNaN(p.center)) {
      const lo = (key === "mr-auto" ? v.robust_min : v.global_min) ?? 0;
      const hi = (key === "mr-auto" ? v.robust_max : v.global_max) ?? 1;
      this.setWindow((lo + hi) / 2, Math.max(1e-6, hi - lo));
      return { center: (lo + hi) / 2, width: hi - lo };
    }
    this.setWindow(p.center, p.width);
    return { center: p.center, width: p.width };
  }

  window(): { center: number; width: number } {
    const v = this.nv.volumes[0];
    const lo = v?.cal_min ?? 0, hi = v?.cal_max ?? 1;
    return { center: (lo + hi) / 2, width: hi - lo };
  }

  setMode(mode: ViewMode): void {
    const st = { multi: SLICE_TYPE.MULTIPLANAR, axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL,
      sagittal: SLICE_TYPE.SAGITTAL, render: SLICE_TYPE.RENDER }[mode];
    this.nv.setSliceType(st);
  }

  zoom(factor: number): void {
    const p = this.nv.scene.pan2Dxyzmm;
    p[3] = Math.min(20, Math.max(0.2, p[3] * factor));
    this.nv.drawScene();
  }

  resetView(): void {
    this.nv.scene.pan2Dxyzmm = [0, 0, 0, 1] as unknown as typeof this.nv.scene.pan2Dxyzmm;
    this.nv.drawScene();
  }

  /** File voxel under a mouse event in a 2-D tile, or null (3-D tile, outside the image). */
  voxelAt(e: MouseEvent): VoxelHit | null {
    if (!this.inv || !this.header || !this.nv.volumes.length) return null;
    const rect = this.canvas.getBoundingClientRect();
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    const x = (e.clientX - rect.left) * dpr;
    const y = (e.clientY - rect.top) * dpr;
    const tile = this.nv.tileIndex(x, y);
    if (tile < 0) return null;
    const axCorSag = this.nv.screenSlices[tile].axCorSag as number;
    if (axCorSag > 2) return null;
    const frac = this.nv.canvasPos2frac([x, y]);
    if (frac[0] < 0 || frac[0] > 1 || frac[1] < 0 || frac[1] > 1 || frac[2] < 0 || frac[2] > 1) return null;
    const mm = this.nv.frac2mm(frac, 0, true);
    const m = this.inv;
    const vox = [0, 1, 2].map((r) => Math.round(m[r][0] * mm[0] + m[r][1] * mm[1] + m[r][2] * mm[2] + m[r][3])) as [number, number, number];
    const d = this.dims;
    if (vox.some((v, i) => v < 0 || v >= d[i])) return null;
    return { vox, axCorSag };
  }

  /** The file axis that is the normal of an axial (0), coronal (1) or sagittal (2) tile. */
  normalAxis(axCorSag: number): number {
    const a = this.header?.affine;
    if (!a) return 2;
    const world = axCorSag === 0 ? 2 : axCorSag === 1 ? 1 : 0; // RAS axis: z for axial, y coronal, x sagittal
    let best = 0, bestV = -1;
    for (let c = 0; c < 3; c++) {
      const n = Math.hypot(a[0][c], a[1][c], a[2][c]) || 1;
      const v = Math.abs(a[world][c]) / n;
      if (v > bestV) {
        bestV = v;
        best = c;
      }
    }
    return best;
  }

  /** Move the crosshair to a file voxel (e.g. to show a click's location). */
  goTo(vox: [number, number, number]): void {
    const a = this.header?.affine;
    if (!a || !this.nv.volumes.length) return;
    const mm = [0, 1, 2].map((r) => a[r][0] * vox[0] + a[r][1] * vox[1] + a[r][2] * vox[2] + a[r][3]);
    const frac = this.nv.volumes[0].convertMM2Frac(mm as unknown as Parameters<NVImage["convertMM2Frac"]>[0], true);
    this.nv.scene.crosshairPos = frac;
    this.nv.drawScene();
    this.nv.createOnLocationChange();
  }
}
