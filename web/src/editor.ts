// Label editing: the mask from the server (loaded revision or interactive session) plus the
// user's brush/eraser strokes, with one undo/redo history across clicks and strokes.
//
// Strokes start as local overrides on top of the server's mask. Once an interactive session
// exists and the server accepts a pushed label (PUT /sessions/{id}/label), every finished
// stroke is pushed into the session: it becomes a step of the session's own history (undone and
// redone on the server like a click), the next click refines on top of it, and saving the
// session keeps the source `interactive`. Without a session (no model) strokes stay local.

import type { Viewer } from "./viewer";

export interface ClickGroup { class: string | number; points: number[][] }

type Entry =
  | { kind: "stroke"; idx: Int32Array; before: Int16Array; after: Int16Array } // local, not in a session
  | { kind: "server"; what: "click" | "brush" | "prompt"; group?: ClickGroup }; // a step of the session's history

/**
 * A session's mask from the server. `box` ([x0, x1, y0, y1, z0, z1], start/stop per axis): the
 * mask is the editor's current base changed only inside it (a compact response applied in place),
 * so only the box needs showing again; without it, anything may have changed.
 */
export interface ServerMask { mask: Uint8Array; box?: number[] }

export interface SessionBackend {
  click(group: ClickGroup): Promise<ServerMask>;
  undo(): Promise<ServerMask>;
  /** Redo the last undone step on the server (`group` is the click, for servers without redo). */
  redo(group?: ClickGroup): Promise<ServerMask>;
  /**
   * Replace the session's mask with `mask` (one step of its history); null when unsupported.
   * `box` ([x0, x1, y0, y1, z0, z1]): `mask` differs from the session's mask only inside it.
   */
  push: ((mask: Uint8Array, box: number[] | null) => Promise<void>) | null;
}

export class Editor {
  base: Uint8Array<ArrayBufferLike> = new Uint8Array(0); // the server's mask (revision or session)
  overrides = new Int16Array(0); // -1: none; else the painted value
  overrideCount = 0;
  private undoStack: Entry[] = [];
  private redoStack: Entry[] = [];
  private stroke: Map<number, number> | null = null; // index -> override before the stroke
  dirty = false;
  /** The base is still the mask given to `reset` (no server step or push changed it). */
  baseIsInitial = true;
  onChange: () => void = () => {};
  /** Called after a stroke (brush, eraser, fill) is finished. */
  onStrokeEnd: () => void = () => {};

  constructor(private viewer: Viewer) {}

  /** Start over from a mask (a loaded revision, or an empty one): no overrides, no history. */
  reset(mask: Uint8Array<ArrayBufferLike>): void {
    this.base = mask;
    this.overrides = new Int16Array(mask.length).fill(-1);
    this.overrideCount = 0;
    this.undoStack = [];
    this.redoStack = [];
    this.dirty = false;
    this.baseIsInitial = true;
    this.viewer.setLabel(mask);
    void this.viewer.refresh();
    this.onChange();
  }

  /**
   * The server sent a new mask (session prediction): show it with the strokes on top. `box`:
   * the mask differs from what is shown (strokes aside) only inside it (see `ServerMask`).
   */
  setBase(mask: Uint8Array<ArrayBufferLike>, box?: number[]): void {
    this.base = mask;
    this.baseIsInitial = false;
    const ov = this.overrides;
    if (box) {
      const [nx, ny] = this.viewer.dims;
      const out = this.viewer.labelData();
      const [x0, x1, y0, y1, z0, z1] = box;
      for (let z = z0; z < z1; z++) {
        for (let y = y0; y < y1; y++) {
          const row = nx * (y + ny * z);
          for (let i = row + x0; i < row + x1; i++) {
            const v = ov[i] >= 0 ? ov[i] : mask[i];
            if (out[i] !== v) {
              out[i] = v;
              this.viewer.touch(i);
            }
          }
        }
      }
    } else if (this.overrideCount === 0) this.viewer.setLabel(mask);
    else {
      const out = this.viewer.labelData();
      for (let i = 0; i < mask.length; i++) {
        const v = ov[i] >= 0 ? ov[i] : mask[i];
        if (out[i] !== v) {
          out[i] = v;
          this.viewer.touch(i);
        }
      }
    }
    void this.viewer.refresh();
  }

  current(): Uint8Array {
    return this.viewer.labelData();
  }

  get canUndo(): boolean {
    return this.undoStack.length > 0;
  }
  get canRedo(): boolean {
    return this.redoStack.length > 0;
  }
  /** Strokes not yet pushed into a session. */
  get hasLocalStrokes(): boolean {
    return this.overrideCount > 0 || this.undoStack.some((e) => e.kind === "stroke");
  }
  get historyText(): string {
    return `${this.undoStack.length} step(s) to undo, ${this.redoStack.length} to redo`;
  }

  // --- clicks and pushed strokes --------------------------------------------------------------

  async click(group: ClickGroup, backend: SessionBackend): Promise<void> {
    await this.serverStep("click", () => backend.click(group), group);
  }

  /** One step of the session (a click, or a box / lasso / scribbles prompt): its mask, one undo entry. */
  async serverStep(what: "click" | "prompt", call: () => Promise<ServerMask>, group?: ClickGroup): Promise<void> {
    const got = await call();
    this.undoStack.push({ kind: "server", what, group });
    this.redoStack = [];
    this.dirty = true;
    this.setBase(got.mask, got.box);
    this.onChange();
  }

  /**
   * Push the shown label (strokes included) into the session: the local stroke steps become one
   * step of the session's history, and the strokes become part of its mask.
   */
  async pushStrokes(backend: SessionBackend): Promise<boolean> {
    if (!backend.push || !this.hasLocalStrokes || this.stroke) return false; // a stroke in progress pushes at its end
    const pushed: Entry[] = this.undoStack.filter((e) => e.kind === "stroke");
    const mask = this.current().slice();
    await backend.push(mask, changedBox(mask, this.base, this.viewer.dims));
    // strokes made while the push was on its way stay local overrides (their own push follows)
    const current = this.stroke as Map<number, number> | null; // may have begun during the await
    const later = new Set<number>(current ? current.keys() : []);
    for (const e of this.undoStack) if (e.kind === "stroke" && !pushed.includes(e)) e.idx.forEach((i) => later.add(i));
    const ov = this.overrides;
    if (!pushed.length && !later.size) {
      ov.fill(-1);
      this.overrideCount = 0;
    }
    for (const e of pushed) {
      if (e.kind !== "stroke") continue;
      for (const i of e.idx) {
        if (ov[i] >= 0 && !later.has(i)) {
          ov[i] = -1;
          this.overrideCount--;
        }
      }
    }
    this.base = mask;
    this.baseIsInitial = false;
    const at = this.undoStack.indexOf(pushed[pushed.length - 1]);
    this.undoStack.splice(at + 1, 0, { kind: "server", what: "brush" });
    this.undoStack = this.undoStack.filter((e) => !pushed.includes(e));
    this.redoStack = [];
    this.dirty = true;
    this.onChange();
    return true;
  }

  /** Steps of a session that has ended cannot be undone in a new one: drop them. */
  dropServerSteps(): void {
    this.undoStack = this.undoStack.filter((e) => e.kind === "stroke");
    this.redoStack = this.redoStack.filter((e) => e.kind === "stroke");
    this.onChange();
  }

  /** What is shown becomes the base, without history (a session was lost); stays dirty. */
  forgetHistoryAsBase(): void {
    this.base = this.current().slice();
    this.baseIsInitial = false;
    this.overrides.fill(-1);
    this.overrideCount = 0;
    this.undoStack = [];
    this.redoStack = [];
    this.onChange();
  }

  // --- brush ----------------------------------------------------------------------------------

  beginStroke(): void {
    this.stroke = new Map();
  }

  private set(i: number, value: number): void {
    const stroke = this.stroke!;
    const ov = this.overrides;
    if (!stroke.has(i)) stroke.set(i, ov[i]);
    if (ov[i] < 0) this.overrideCount++;
    ov[i] = value;
    const out = this.viewer.labelData();
    if (out[i] !== value) {
      out[i] = value;
      this.viewer.touch(i);
    }
  }

  /** Set voxels (file-order indices) to `value` as one stroke (one undo step). */
  apply(indices: ArrayLike<number>, value: number): void {
    if (!indices.length) return;
    this.beginStroke();
    for (let k = 0; k < indices.length; k++) this.set(indices[k], value);
    void this.viewer.refresh();
    this.endStroke();
  }

  /** The clicks of the session still in the undo history, oldest first (for the click markers). */
  clickGroups(): ClickGroup[] {
    const out: ClickGroup[] = [];
    for (const e of this.undoStack) if (e.kind === "server" && e.what === "click" && e.group) out.push(e.group);
    return out;
  }

  /**
   * Paint `value` (0 = erase) in a disk (2-D, in the plane normal to `axis`) or a sphere;
   * `range` [lo, hi]: only voxels whose image intensity lies in it (threshold-limited brush).
   */
  paint(center: [number, number, number], radius: number, value: number, sphere: boolean, axis: number,
      range: [number, number] | null = null): void {
    if (!this.stroke) this.beginStroke();
    const img = range ? this.viewer.intensities() : null;
    const [nx, ny, nz] = this.viewer.dims;
    const sp = this.viewer.header?.spacing ?? [1, 1, 1];
    const unit = Math.min(sp[0], sp[1], sp[2]);
    const r = Math.max(0, radius - 0.5);
    const ext = [0, 1, 2].map((a) => (sphere || a !== axis ? Math.ceil((r * unit) / sp[a]) : 0));
    const r2 = (r * unit) ** 2 + 1e-6;
    for (let dz = -ext[2]; dz <= ext[2]; dz++) {
      const z = center[2] + dz;
      if (z < 0 || z >= nz) continue;
      for (let dy = -ext[1]; dy <= ext[1]; dy++) {
        const y = center[1] + dy;
        if (y < 0 || y >= ny) continue;
        for (let dx = -ext[0]; dx <= ext[0]; dx++) {
          const x = center[0] + dx;
          if (x < 0 || x >= nx) continue;
          const d2 = (dx * sp[0]) ** 2 + (dy * sp[1]) ** 2 + (dz * sp[2]) ** 2;
          if (d2 > r2) continue;
          const i = x + nx * (y + ny * z);
          if (img && range) {
            const v = img.data[i] * img.slope + img.inter;
            if (!(v >= range[0] && v <= range[1])) continue;
          }
          this.set(i, value);
        }
      }
    }
    void this.viewer.refresh();
  }

  /** Paint along the segment a→b so fast strokes leave no gaps. */
  paintLine(a: [number, number, number], b: [number, number, number], radius: number, value: number, sphere: boolean, axis: number,
      range: [number, number] | null = null): void {
    const steps = Math.max(1, Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), Math.abs(b[2] - a[2])));
    for (let s = 1; s <= steps; s++) {
      const t = s / steps;
      const p = [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * t)) as [number, number, number];
      this.paint(p, radius, value, sphere, axis, range);
    }
  }

  endStroke(): void {
    const stroke = this.stroke;
    this.stroke = null;
    if (!stroke || stroke.size === 0) return;
    const idx = new Int32Array(stroke.size);
    const before = new Int16Array(stroke.size);
    const after = new Int16Array(stroke.size);
    let k = 0;
    for (const [i, prev] of stroke) {
      idx[k] = i;
      before[k] = prev;
      after[k] = this.overrides[i];
      k++;
    }
    this.undoStack.push({ kind: "stroke", idx, before, after });
    this.redoStack = [];
    this.dirty = true;
    this.onChange();
    this.onStrokeEnd();
  }

  private applyOverrides(idx: Int32Array, values: Int16Array): void {
    const out = this.viewer.labelData();
    const ov = this.overrides;
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k];
      const v = values[k];
      if (ov[i] < 0 && v >= 0) this.overrideCount++;
      else if (ov[i] >= 0 && v < 0) this.overrideCount--;
      ov[i] = v;
      out[i] = v >= 0 ? v : this.base[i];
      this.viewer.touch(i);
    }
    void this.viewer.refresh();
  }

  // --- undo / redo ----------------------------------------------------------------------------

  async undo(backend: SessionBackend | null): Promise<boolean> {
    const e = this.undoStack[this.undoStack.length - 1];
    if (!e) return false;
    if (e.kind === "stroke") this.applyOverrides(e.idx, e.before);
    else {
      if (!backend) throw new Error("the interactive session has ended; its steps cannot be undone");
      const got = await backend.undo();
      this.setBase(got.mask, got.box);
    }
    this.undoStack.pop();
    this.redoStack.push(e);
    this.dirty = this.undoStack.length > 0;
    this.onChange();
    return true;
  }

  async redo(backend: SessionBackend | null): Promise<boolean> {
    const e = this.redoStack[this.redoStack.length - 1];
    if (!e) return false;
    if (e.kind === "stroke") this.applyOverrides(e.idx, e.after);
    else {
      if (!backend) throw new Error("the interactive session has ended; its steps cannot be redone");
      const got = await backend.redo(e.group);
      this.setBase(got.mask, got.box);
    }
    this.redoStack.pop();
    this.undoStack.push(e);
    this.dirty = true;
    this.onChange();
    return true;
  }

  /** Flood fill of the 2-D region under `seed` (same current value) in the plane normal to `axis`. */
  fill(seed: [number, number, number], value: number, axis: number): void {
    const [nx, ny, nz] = this.viewer.dims;
    const out = this.viewer.labelData();
    const start = seed[0] + nx * (seed[1] + ny * seed[2]);
    const target = out[start];
    if (target === value) return;
    this.beginStroke();
    const stack = [seed];
    const seen = new Uint8Array(out.length);
    const dirs: [number, number, number][] = [];
    for (let a = 0; a < 3; a++) {
      if (a === axis) continue;
      const p: [number, number, number] = [0, 0, 0];
      p[a] = 1;
      dirs.push(p, [-p[0], -p[1], -p[2]]);
    }
    let n = 0;
    while (stack.length && n < 2_000_000) {
      const [x, y, z] = stack.pop()!;
      const i = x + nx * (y + ny * z);
      if (seen[i] || out[i] !== target) continue;
      seen[i] = 1;
      n++;
      this.set(i, value);
      for (const d of dirs) {
        const q: [number, number, number] = [x + d[0], y + d[1], z + d[2]];
        if (q[0] >= 0 && q[0] < nx && q[1] >= 0 && q[1] < ny && q[2] >= 0 && q[2] < nz) stack.push(q);
      }
    }
    void this.viewer.refresh();
    this.endStroke();
  }
}

/**
 * The box ([x0, x1, y0, y1, z0, z1], start/stop per axis) holding every voxel where `a` and `b`
 * differ; null when they are equal. A stroke's push sends only this box of the label.
 */
export function changedBox(a: Uint8Array, b: Uint8Array, dims: [number, number, number]): number[] | null {
  if (a.length !== b.length) return null;
  const [nx, ny, nz] = dims;
  const lo = [nx, ny, nz], hi = [-1, -1, -1];
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++, i += nx) {
      for (let x = 0; x < nx; x++) {
        if (a[i + x] === b[i + x]) continue;
        if (x < lo[0]) lo[0] = x;
        if (x > hi[0]) hi[0] = x;
        if (y < lo[1]) lo[1] = y;
        if (y > hi[1]) hi[1] = y;
        if (z < lo[2]) lo[2] = z;
        if (z > hi[2]) hi[2] = z;
      }
    }
  }
  if (hi[0] < 0) return null;
  return [lo[0], hi[0] + 1, lo[1], hi[1] + 1, lo[2], hi[2] + 1];
}
