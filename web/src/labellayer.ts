// The editable label as NiiVue's drawing layer. NiiVue blends image layers into one texture and
// re-uploads and re-blends every volume (the image included) whenever one changes, while the
// drawing layer is a single 8-bit texture updated in place. A click's new mask therefore costs
// one copy of the changed voxels and one upload of the box that holds them (texSubImage3D;
// NiiVue's own refresh uploads the whole volume, which software WebGL makes long).
// The label is kept in the file's voxel order (i fastest, the server's arrays); the drawing is
// in NiiVue's RAS order.

import type { Niivue } from "@niivue/niivue";
import type { RasMap } from "./viewer_tables";

export class LabelLayer {
  /** The label, file order: edit in place, then `touch` what changed. */
  data = new Uint8Array(0);
  private ras: RasMap | null = null;
  private dims: [number, number, number] = [0, 0, 0];
  private touched: number[] = []; // file-order indices changed since the last upload
  private fullUpload = false;

  constructor(private nv: Niivue, private frames: { boxUploads: number; fullUploads: number }) {}

  /** A new image's grid and label (copied; null or the wrong size: empty), uploaded whole next. */
  reset(ras: RasMap, dims: [number, number, number], label: Uint8Array | null): void {
    this.ras = ras;
    this.dims = dims;
    const n = dims[0] * dims[1] * dims[2];
    this.data = label && label.length === n ? label.slice() : new Uint8Array(n);
    this.touched = [];
    this.fullUpload = true;
  }

  /** A voxel (file-order index) changed in `data`; uploaded by the next `upload`. */
  touch(i: number): void {
    if (!this.fullUpload) this.touched.push(i);
    if (this.touched.length > this.data.length >> 4) {
      this.touched = [];
      this.fullUpload = true;
    }
  }

  /** Everything in `data` may have changed (a new mask). */
  touchAll(): void {
    this.touched = [];
    this.fullUpload = true;
  }

  /** Replace the label with `mask`, marking only the voxels that differ. */
  set(mask: ArrayLike<number>): void {
    const out = this.data;
    for (let i = 0; i < out.length; i++) {
      if (out[i] !== mask[i]) {
        out[i] = mask[i];
        this.touch(i);
      }
    }
  }

  /** Copy the touched voxels into NiiVue's drawing and upload them; false when nothing changed. */
  upload(): boolean {
    const bmp = this.nv.drawBitmap;
    const m = this.ras;
    if (!bmp || !m) return false;
    if (this.fullUpload) {
      if (m.identity) bmp.set(this.data);
      else {
        const src = this.data;
        const [nx, ny, nz] = m.dims;
        let j = 0;
        for (let z = 0; z < nz; z++) {
          const zi = m.start[2] + z * m.step[2];
          for (let y = 0; y < ny; y++) {
            let xi = m.start[0] + m.start[1] + y * m.step[1] + zi;
            for (let x = 0; x < nx; x++, xi += m.step[0]) bmp[j++] = src[xi];
          }
        }
      }
      this.touched = [];
      this.fullUpload = false;
      this.frames.fullUploads++;
      this.nv.refreshDrawing(false);
      return true;
    }
    if (!this.touched.length) return false;
    const [fx, fy] = this.dims;
    const fxy = fx * fy;
    const [rx, ry] = m.dims;
    const lo = [Infinity, Infinity, Infinity], hi = [-1, -1, -1];
    const c = [0, 0, 0];
    for (const i of this.touched) {
      const f = [i % fx, Math.floor(i / fx) % fy, Math.floor(i / fxy)];
      this.rasCoord(f, c);
      bmp[c[0] + rx * (c[1] + ry * c[2])] = this.data[i];
      for (let a = 0; a < 3; a++) {
        if (c[a] < lo[a]) lo[a] = c[a];
        if (c[a] > hi[a]) hi[a] = c[a];
      }
    }
    this.touched = [];
    this.uploadBox(bmp, lo, hi);
    return true;
  }

  /** Upload the box lo..hi (inclusive, RAS voxel order) of the drawing bitmap into its texture. */
  private uploadBox(bmp: Uint8Array, lo: number[], hi: number[]): void {
    const gl = this.nv.gl;
    const [rx, ry] = this.ras!.dims;
    gl.activeTexture(gl.TEXTURE7); // NiiVue's unit for the drawing
    gl.bindTexture(gl.TEXTURE_3D, this.nv.drawTexture);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.pixelStorei(gl.UNPACK_ROW_LENGTH, rx);
    gl.pixelStorei(gl.UNPACK_IMAGE_HEIGHT, ry);
    gl.pixelStorei(gl.UNPACK_SKIP_PIXELS, lo[0]);
    gl.pixelStorei(gl.UNPACK_SKIP_ROWS, lo[1]);
    gl.pixelStorei(gl.UNPACK_SKIP_IMAGES, lo[2]);
    try {
      gl.texSubImage3D(gl.TEXTURE_3D, 0, lo[0], lo[1], lo[2], hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1,
        gl.RED, gl.UNSIGNED_BYTE, bmp);
    } finally {
      for (const k of [gl.UNPACK_ROW_LENGTH, gl.UNPACK_IMAGE_HEIGHT, gl.UNPACK_SKIP_PIXELS, gl.UNPACK_SKIP_ROWS, gl.UNPACK_SKIP_IMAGES]) gl.pixelStorei(k, 0);
    }
    this.frames.boxUploads++;
  }

  /** The RAS voxel (NiiVue's drawing order) of file voxel `f`, written into `out`. */
  private rasCoord(f: number[], out: number[]): void {
    const m = this.ras!;
    for (let p = 0; p < 3; p++) {
      const a = Math.abs(m.perm[p]) - 1;
      out[p] = m.perm[p] < 0 ? this.dims[a] - 1 - f[a] : f[a];
    }
  }
}
