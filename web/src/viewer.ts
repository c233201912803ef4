// NiiVue wrapper: the image, the editable label and up to three overlays (a reference label,
// a model's prediction, a discrepancy map), each shown or hidden on its own with its own
// opacity. Voxel coordinates here are always the file's (i fastest) index order, the same as
// the server's arrays.
//
// The editable label is NiiVue's drawing layer, not an image layer (labellayer.ts): a click's
// new mask costs one copy of the changed voxels and the upload of the box that holds them.
//
// In the 2x2 layout a frame caused by a label change reuses the last picture of the 3-D tile (a
// framebuffer copy) instead of ray-casting it again (software WebGL makes that long);
// the 3-D tile catches up once editing pauses and no session request is on its way (`lazy3D`,
// tile3d.ts).

import { Niivue, NVImage, SLICE_TYPE, SHOW_RENDER, DRAG_MODE } from "@niivue/niivue";
import { invert4, parseHeader, writeLabel, type NiftiHeaderInfo } from "./nifti";
import { drawPreview } from "./preview";
import { type LutEntry, OUTLINE_FILL, PRESETS, drawLut, lut, makeImage, presetWindow, rasMap } from "./viewer_tables";
import { Lazy3D, Tile3DCache } from "./tile3d";
import { LabelLayer } from "./labellayer";

export { PRESETS, type LutEntry } from "./viewer_tables";

export type ViewMode = "multi" | "axial" | "coronal" | "sagittal" | "render";

export interface VoxelHit { vox: [number, number, number]; axCorSag: number }

export type OverlaySlot = "reference" | "prediction" | "discrepancy";
export const OVERLAY_SLOTS: OverlaySlot[] = ["reference", "prediction", "discrepancy"];

export class Viewer {
  readonly nv: Niivue;
  header: NiftiHeaderInfo | null = null;
  private inv: number[][] | null = null;
  private readonly layer: LabelLayer; // the editable label
  private overlays = new Map<OverlaySlot, NVImage>();
  readonly overlayOpacity: Record<OverlaySlot, number> = { reference: 0.5, prediction: 0.5, discrepancy: 0.7 };
  labelOpacity = 0.5;
  labelVisible = true;
  labelOutline = false;
  private pending: Promise<void> | null = null;
  private mode: ViewMode = "multi";
  /** The last picture of the 3-D tile (canvas pixels) and where it was (made at attach). */
  private cache3D: Tile3DCache | null = null;
  private reuse3D = false; // the next frame shows the cached 3-D tile (set by label changes)
  /** When the 3-D tile shown from its cache is ray-cast again (after edits pause). */
  readonly lazy3D = new Lazy3D(() => this.nv.drawScene());
  /** Frames drawn with the 3-D tile ray-cast vs. reused from the cache (for tests and benchmarks). */
  readonly frames = { full3D: 0, reused3D: 0, boxUploads: 0, fullUploads: 0 };
  /** Where the 3-D tile of the 2x2 layout was last drawn: canvas pixels, [left, top, width, height]. */
  tile3DAt: number[] | null = null;
  /** Images larger than this get a 2-D preview while NiiVue builds its textures. */
  previewVoxels = 2_000_000;
  onLocation: (text: string) => void = () => {};
  /** Called after every frame NiiVue draws (the marks layer redraws on top). */
  onDrawn: () => void = () => {};

  constructor(private canvas: HTMLCanvasElement, private preview: HTMLCanvasElement | null = null) {
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
      drawingEnabled: false, // the app paints; NiiVue only shows the drawing layer
      // left button: the crosshair; every other drag (window/level, pan, measuring) is the app's
      // own (tools.ts): NiiVue's left stale "7.23 mm" rulers behind and did not follow Shift
      dragMode: DRAG_MODE.none,
      mouseEventConfig: {
        leftButton: { primary: DRAG_MODE.crosshair, withShift: DRAG_MODE.none, withCtrl: DRAG_MODE.none },
        rightButton: DRAG_MODE.none,
        centerButton: DRAG_MODE.none,
      },
    });
    this.layer = new LabelLayer(this.nv, this.frames);
  }

  async attach(): Promise<void> {
    // NiiVue's own hotkeys clash with the app's (V cycled NiiVue's view behind the app's back, C
    // toggled a clip plane, L and H moved the crosshair, M changed the drag mode, ←/→ the 4-D
    // frame): the app handles every key itself (keys.ts). Replaced before attaching, which binds them.
    this.nv.keyDownListener = () => {};
    this.nv.keyUpListener = () => {};
    // no multisampling: the 3-D tile's cache is copied back with blitFramebuffer, which needs a
    // single-sampled canvas (and the slices are shown with nearest-neighbour voxels anyway)
    await this.nv.attachToCanvas(this.canvas, false);
    this.cache3D = new Tile3DCache(this.nv.gl);
    this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
    const drawScene = this.nv.drawScene.bind(this.nv);
    this.nv.drawScene = () => {
      const out = drawScene();
      this.onDrawn();
      return out;
    };
    const draw3D = this.nv.draw3D.bind(this.nv);
    this.nv.draw3D = (ltwh: number[] = [0, 0, 0, 0], ...rest: unknown[]) => {
      const tile = ltwh[2] > 0 && ltwh[3] > 0 && this.mode === "multi";
      this.tile3DAt = tile ? [...ltwh] : null;
      if (tile && this.reuse3D && this.cache3D?.restore(ltwh)) {
        this.frames.reused3D++;
        return undefined;
      }
      const out = (draw3D as (...a: unknown[]) => string | undefined)(ltwh, ...rest);
      this.frames.full3D++;
      this.lazy3D.done();
      if (tile) this.cache3D?.save(ltwh);
      return out;
    };
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

  /**
   * Show a new image (uncompressed NIfTI bytes) with its label (file order; none: empty), the
   * window of `preset`, and no overlays — drawn once, so the first slices come with their label.
   */
  async loadImage(raw: ArrayBuffer, name: string, labelLut: LutEntry[], preset: string, label: Uint8Array | null = null):
      Promise<{ window: { center: number; width: number }; previewAt: number | null }> {
    this.header = parseHeader(raw);
    let previewAt: number | null = null;
    const h = this.header;
    if (this.preview && h.dims[0] * h.dims[1] * h.dims[2] > this.previewVoxels) {
      const p = PRESETS[preset];
      this.preview.hidden = false; // shown first: a hidden canvas has no size to draw at
      const shown = drawPreview(this.preview, raw, h, p && !Number.isNaN(p.center) ? p : null, this.mode);
      this.preview.hidden = !shown;
      if (shown) {
        // let the preview reach the screen before the (possibly long, blocking) texture build
        await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
        previewAt = performance.now();
      }
    }
    while (this.nv.volumes.length) this.nv.removeVolumeByIndex(this.nv.volumes.length - 1);
    this.overlays.clear();
    this.clearOverlayTexture();
    this.cache3D?.drop();
    this.nv.document.completedMeasurements = [];
    this.nv.document.completedAngles = [];
    this.nv.drawBitmap = null;
    this.nv.drawLut = drawLut(labelLut); // set before the image is added: its refresh uploads the table
    const img = await makeImage(raw, `${name}.nii`, "gray", 1);
    const w = presetWindow(img, preset);
    img.cal_min = w.center - w.width / 2;
    img.cal_max = w.center + w.width / 2;
    // addVolume uploads the image and redraws; the redraw is skipped here (one redraw follows,
    // with the label), since a frame with the 3-D tile is the expensive part of opening
    const draw = this.nv.drawScene;
    this.nv.drawScene = () => undefined;
    try {
      this.nv.addVolume(img);
    } finally {
      this.nv.drawScene = draw;
    }
    const aff = (img.hdr as { affine?: number[][] } | null)?.affine ?? this.header.affine;
    this.inv = invert4(aff.map((r) => [...r]));
    this.layer.reset(rasMap(img), this.dims, label);
    this.nv.drawOpacity = this.labelVisible ? (this.labelOutline ? OUTLINE_FILL : this.labelOpacity) : 0;
    this.nv.drawRimOpacity = this.labelVisible && this.labelOutline ? 1 : -1;
    this.nv.createEmptyDrawing(); // no redraw yet
    this.flush(); // the label and one redraw
    return { window: w, previewAt };
  }

  /**
   * Empty NiiVue's overlay texture. Its 3-D ray-caster samples that texture whenever the label
   * (drawing layer) is shown, overlays or not, and NiiVue rebuilds it only while an overlay is
   * loaded: after the last overlay goes (or another image opens) the 3-D view otherwise shows
   * the previous overlay's voxels, stretched over this image.
   */
  private clearOverlayTexture(): void {
    const nv = this.nv;
    nv.overlayTexture = nv.rgbaTex(nv.overlayTexture, nv.gl.TEXTURE2, [2, 2, 2, 2], true);
  }

  /** Draw a frame caused by a label change: slices now, the 3-D tile from its cache, re-cast later. */
  private drawLabelChange(): void {
    this.reuse3D = this.mode === "multi";
    const reused = this.frames.reused3D;
    try {
      this.nv.drawScene();
    } finally {
      this.reuse3D = false;
    }
    if (this.frames.reused3D === reused) return; // the 3-D tile was cast anew (or is not shown)
    this.lazy3D.schedule();
  }

  /** The user pressed on the canvas to edit: the 3-D tile's catch-up waits (see `Lazy3D`). */
  userInput(): void {
    this.lazy3D.input();
  }

  /**
   * Show a one-slice image (uncompressed NIfTI: a PACS series' middle slice) on the preview
   * canvas until the whole image is loaded; true once it is on screen (false: not drawable).
   */
  async showSlicePreview(raw: ArrayBuffer, preset: string): Promise<boolean> {
    if (!this.preview) return false;
    const h = parseHeader(raw);
    const p = PRESETS[preset];
    this.preview.hidden = false;
    const shown = drawPreview(this.preview, raw, h, p && !Number.isNaN(p.center) ? p : null, this.mode);
    this.preview.hidden = !shown;
    if (shown) await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    return shown;
  }

  /** Remove the 2-D preview (once NiiVue's first frame is on screen). */
  hidePreview(): void {
    if (this.preview) this.preview.hidden = true;
  }

  setLabelColors(entries: LutEntry[]): void {
    this.nv.drawLut = drawLut(entries);
    this.nv.updateGLVolume();
  }

  /** The label's voxels, file order (edit in place, then `touch` what changed and `refresh`). */
  labelData(): Uint8Array {
    if (!this.header) throw new Error("no image is open");
    return this.layer.data;
  }

  /** Voxels (file-order indices) changed in `labelData()`; uploaded by the next refresh. */
  touch(i: number): void {
    this.layer.touch(i);
  }

  /** Everything in `labelData()` may have changed (a new mask). */
  touchAll(): void {
    this.layer.touchAll();
  }

  /** Replace the label with `mask`, marking only the voxels that differ. */
  setLabel(mask: ArrayLike<number>): void {
    this.layer.set(mask);
  }

  /** Copy the touched voxels into NiiVue's drawing (RAS order) and upload it: once per frame. */
  refresh(): Promise<void> {
    if (!this.pending) {
      this.pending = new Promise((resolve) => requestAnimationFrame(() => {
        this.pending = null;
        this.flush();
        resolve();
      }));
    }
    return this.pending;
  }

  /** Upload pending label changes now (not at the next frame), e.g. right after a click's mask. */
  flushNow(): void {
    this.flush();
  }

  /**
   * Resolves once the GPU has finished everything drawn so far and the next frame has begun,
   * i.e. when that drawing is on screen (a fence, polled without blocking the page).
   */
  presented(): Promise<void> {
    const gl = this.nv.gl;
    const sync = gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0);
    gl.flush();
    return new Promise((resolve) => {
      const poll = () => {
        if (sync && gl.getSyncParameter(sync, gl.SYNC_STATUS) !== gl.SIGNALED) {
          setTimeout(poll, 1);
          return;
        }
        if (sync) gl.deleteSync(sync);
        requestAnimationFrame(() => resolve());
      };
      poll();
    });
  }

  private flush(): void {
    if (this.layer.upload()) this.drawLabelChange();
  }

  setLabelVisible(on: boolean): void {
    this.labelVisible = on;
    this.nv.drawRimOpacity = on && this.labelOutline ? 1 : -1;
    this.nv.setDrawOpacity(on ? (this.labelOutline ? OUTLINE_FILL : this.labelOpacity) : 0);
  }

  /**
   * Outline display: each label region drawn as its one-pixel border (NiiVue's rim of the
   * drawing layer) over a faint fill, instead of a filled area.
   */
  setLabelOutline(on: boolean): void {
    this.labelOutline = on;
    this.setLabelVisible(this.labelVisible);
  }

  setLabelOpacity(v: number): void {
    this.labelOpacity = v;
    this.setLabelVisible(true);
  }

  /** Show (data) or remove (null) one overlay: a label map on the image grid with its own colours. */
  async setOverlay(slot: OverlaySlot, data: Uint8Array | null, entries: LutEntry[] = []): Promise<void> {
    const old = this.overlays.get(slot);
    if (old) {
      this.nv.removeVolume(old);
      this.overlays.delete(slot);
    }
    if (data && this.header) {
      const buf = writeLabel(this.header, data);
      const layer = await makeImage(buf.buffer as ArrayBuffer, `${slot}.nii`, "gray", this.overlayOpacity[slot]);
      layer.setColormapLabel(lut(entries));
      this.overlays.set(slot, layer);
      // keep a fixed stacking order: image, reference, prediction, discrepancy
      for (const s of OVERLAY_SLOTS) {
        const v = this.overlays.get(s);
        if (!v) continue;
        if (this.nv.volumes.includes(v)) this.nv.removeVolume(v);
      }
      for (const s of OVERLAY_SLOTS) {
        const v = this.overlays.get(s);
        if (v) this.nv.addVolume(v);
      }
    }
    this.nv.updateGLVolume();
    if (!this.overlays.size) {
      this.clearOverlayTexture();
      this.nv.drawScene();
    }
  }

  hasOverlay(slot: OverlaySlot): boolean {
    return this.overlays.has(slot);
  }

  setOverlayOpacity(slot: OverlaySlot, v: number): void {
    this.overlayOpacity[slot] = v;
    const layer = this.overlays.get(slot);
    if (layer) this.nv.setOpacity(this.nv.volumes.indexOf(layer), v);
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
    const w = presetWindow(v, key);
    this.setWindow(w.center, w.width);
    return w;
  }

  window(): { center: number; width: number } {
    const v = this.nv.volumes[0];
    const lo = v?.cal_min ?? 0, hi = v?.cal_max ?? 1;
    return { center: (lo + hi) / 2, width: hi - lo };
  }

  setMode(mode: ViewMode): void {
    this.mode = mode;
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
  /** The kind of tile under the mouse: 0 axial, 1 coronal, 2 sagittal, 4 the 3-D view; -1 none. */
  tileAt(e: MouseEvent): number {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    const tile = this.nv.tileIndex((e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr);
    return tile < 0 ? -1 : (this.nv.screenSlices[tile].axCorSag as number);
  }

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

  /**
   * The image's intensities in file order (NiiVue keeps the voxels as read) with the header's
   * scaling, for the threshold-limited brush; null before an image is open.
   */
  intensities(): { data: ArrayLike<number>; slope: number; inter: number } | null {
    const img = this.nv.volumes[0];
    if (!img?.img || img.img.length !== this.voxels) return null;
    const h = img.hdr as { scl_slope?: number; scl_inter?: number } | null;
    const slope = h?.scl_slope && Number.isFinite(h.scl_slope) ? h.scl_slope : 1;
    const inter = h?.scl_inter && Number.isFinite(h.scl_inter) ? h.scl_inter : 0;
    return { data: img.img as ArrayLike<number>, slope, inter };
  }

  /** The 2-D tiles on screen, in CSS pixels of the canvas. */
  tiles(): Array<{ axCorSag: number; x: number; y: number; w: number; h: number }> {
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    return this.nv.screenSlices.filter((s) => (s.axCorSag as number) <= 2).map((s) => {
      let [l, top, w, h] = s.leftTopWidthHeight as number[];
      if (w < 0) {
        l += w;
        w = -w;
      }
      return { axCorSag: s.axCorSag as number, x: l / dpr, y: top / dpr, w: w / dpr, h: h / dpr };
    });
  }

  /** World (mm) position of a file voxel. */
  voxToMM(vox: number[]): number[] {
    const a = this.header!.affine;
    return [0, 1, 2].map((r) => a[r][0] * vox[0] + a[r][1] * vox[1] + a[r][2] * vox[2] + a[r][3]);
  }

  /**
   * Where a world point is drawn in each 2-D tile (CSS pixels of the canvas), with its distance
   * (mm) from the tile's slice plane — the same mapping NiiVue uses to draw the slices.
   */
  project(mm: number[]): Array<{ axCorSag: number; x: number; y: number; dist: number }> {
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    const out: Array<{ axCorSag: number; x: number; y: number; dist: number }> = [];
    for (const s of this.nv.screenSlices) {
      const acs = s.axCorSag as number;
      const v = s.AxyzMxy as number[];
      if (acs > 2 || v.length < 5) continue;
      const p = acs === 1 ? [mm[0], mm[2], mm[1]] : acs === 2 ? [mm[1], mm[2], mm[0]] : mm;
      const dist = Math.abs(p[2] - (v[2] + v[4] * (p[1] - v[1]) - v[3] * (p[0] - v[0])));
      const fx = (p[0] - (s.leftTopMM as number[])[0]) / (s.fovMM as number[])[0];
      const fy = (p[1] - (s.leftTopMM as number[])[1]) / (s.fovMM as number[])[1];
      let [l, top, w, h] = s.leftTopWidthHeight as number[];
      let sx = fx;
      if (w < 0) {
        l += w;
        w = -w;
        sx = 1 - fx;
      }
      out.push({ axCorSag: acs, x: (l + sx * w) / dpr, y: (top + (1 - fy) * h) / dpr, dist });
    }
    return out;
  }

  /** Millimetres per CSS pixel in a tile (for brush outlines and rulers). */
  mmPerPixel(axCorSag: number): number {
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    const s = this.nv.screenSlices.find((t) => t.axCorSag === axCorSag);
    if (!s) return 1;
    return Math.abs((s.fovMM as number[])[0] / (s.leftTopWidthHeight as number[])[2]) * dpr;
  }

  /** The file voxel under the crosshair. */
  crosshairVox(): [number, number, number] | null {
    if (!this.inv || !this.nv.volumes.length) return null;
    const mm = this.nv.frac2mm(this.nv.scene.crosshairPos, 0, true);
    const m = this.inv;
    const d = this.dims;
    return [0, 1, 2].map((r) => Math.min(d[r] - 1, Math.max(0,
      Math.round(m[r][0] * mm[0] + m[r][1] * mm[1] + m[r][2] * mm[2] + m[r][3])))) as [number, number, number];
  }

  /** The slice a tile shows (file voxel index along its normal axis) and how many there are. */
  sliceOf(axCorSag: number): { index: number; count: number; axis: number } | null {
    const c = this.crosshairVox();
    if (!c) return null;
    const axis = this.normalAxis(axCorSag);
    return { index: c[axis], count: this.dims[axis], axis };
  }

  /** Move a tile to the next (+1) or previous (-1) slice along its normal. */
  scrollSlice(axCorSag: number, delta: number): void {
    const c = this.crosshairVox();
    if (!c) return;
    const axis = this.normalAxis(axCorSag);
    const next = Math.min(this.dims[axis] - 1, Math.max(0, c[axis] + delta));
    if (next === c[axis]) return;
    c[axis] = next;
    this.goTo(c);
  }

  /** Start a pan drag at a canvas position (CSS pixels): returns the move handler. */
  beginPan(x: number, y: number): ((x: number, y: number) => void) | null {
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    const at = (px: number, py: number) => this.nv.screenXY2mm(px * dpr, py * dpr) as unknown as number[];
    const o = at(x, y), ox = at(x + 10, y), oy = at(x, y + 10);
    if ([o, ox, oy].some((v) => Number.isNaN(v[0]))) return null;
    const ux = [0, 1, 2].map((k) => (ox[k] - o[k]) / 10), uy = [0, 1, 2].map((k) => (oy[k] - o[k]) / 10);
    const pan0 = Array.from(this.nv.scene.pan2Dxyzmm as unknown as number[]);
    return (px: number, py: number) => {
      const dx = px - x, dy = py - y;
      const p = this.nv.scene.pan2Dxyzmm as unknown as number[];
      for (let k = 0; k < 3; k++) p[k] = pan0[k] + ux[k] * dx + uy[k] * dy;
      this.nv.drawScene();
    };
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
