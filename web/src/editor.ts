// Label editing: the mask from the server (loaded revision or interactive session) plus the
// user's brush/eraser strokes kept as overrides on top, and one undo/redo history across
// clicks (undone on the server) and strokes (undone here).

import type { Viewer } from "./viewer";

export interface ClickGroup { class: string | number; points: number[][] }

type Entry =
  | { kind: "stroke"; idx: Int32Array; before: Int16Array; after: Int16Array }
  | { kind: "click"; group: ClickGroup };

export interface ClickBackend {
  click(group: ClickGroup): Promise<Uint8Array>;
  undo(): Promise<Uint8Array>;
}

export class Editor {
  base: Uint8Array<ArrayBufferLike> = new Uint8Array(0); // the server's mask (revision or session)
  overrides = new Int16Array(0); // -1: none; else the painted value
  overrideCount = 0;
  private undoStack: Entry[] = [];
  private redoStack: Entry[] = [];
  private stroke: Map<number, number> | null = null; // index -> override before the stroke
  dirty = false;
  onChange: () => void = () => {};

  constructor(private viewer: Viewer) {}

  /** Start over from a mask (a loaded revision, or an empty one): no overrides, no history. */
  reset(mask: Uint8Array<ArrayBufferLike>): void {
    this.base = mask;
    this.overrides = new Int16Array(mask.length).fill(-1);
    this.overrideCount = 0;
    this.undoStack = [];
    this.redoStack = [];
    this.dirty = false;
    this.viewer.labelData().set(mask);
    void this.viewer.refresh();
    this.onChange();
  }

  /** The server sent a new mask (session prediction): show it with the strokes on top. */
  setBase(mask: Uint8Array<ArrayBufferLike>): void {
    this.base = mask;
    const out = this.viewer.labelData();
    const ov = this.overrides;
    if (this.overrideCount === 0) out.set(mask);
    else for (let i = 0; i < mask.length; i++) out[i] = ov[i] >= 0 ? ov[i] : mask[i];
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
  get historyText(): string {
    return `${this.undoStack.length} step(s) to undo, ${this.redoStack.length} to redo`;
  }

  // --- clicks ---------------------------------------------------------------------------------

  async click(group: ClickGroup, backend: ClickBackend): Promise<void> {
    const mask = await backend.click(group);
    this.undoStack.push({ kind: "click", group });
    this.redoStack = [];
    this.dirty = true;
    this.setBase(mask);
    this.onChange();
  }

  // --- brush ----------------------------------------------------------------------------------

  beginStroke(): void {
    this.stroke = new Map();
  }

  /** Paint `value` (0 = erase) in a disk (2-D, in the plane normal to `axis`) or a sphere. */
  paint(center: [number, number, number], radius: number, value: number, sphere: boolean, axis: number): void {
    if (!this.stroke) this.beginStroke();
    const [nx, ny, nz] = this.viewer.dims;
    const sp = this.viewer.header?.spacing ?? [1, 1, 1];
    const unit = Math.min(sp[0], sp[1], sp[2]);
    const r = Math.max(0, radius - 0.5);
    const ext = [0, 1, 2].map((a) => (sphere || a !== axis ? Math.ceil((r * unit) / sp[a]) : 0));
    const out = this.viewer.labelData();
    const ov = this.overrides;
    const stroke = this.stroke!;
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
          if (!stroke.has(i)) stroke.set(i, ov[i]);
          if (ov[i] < 0) this.overrideCount++;
          ov[i] = value;
          out[i] = value;
        }
      }
    }
    void this.viewer.refresh();
  }

  /** Paint along the segment a→b so fast strokes leave no gaps. */
  paintLine(a: [number, number, number], b: [number, number, number], radius: number, value: number, sphere: boolean, axis: number): void {
    const steps = Math.max(1, Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), Math.abs(b[2] - a[2])));
    for (let s = 1; s <= steps; s++) {
      const t = s / steps;
      const p = [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * t)) as [number, number, number];
      this.paint(p, radius, value, sphere, axis);
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
    }
    void this.viewer.refresh();
  }

  // --- undo / redo ----------------------------------------------------------------------------

  async undo(backend: ClickBackend | null): Promise<boolean> {
    const e = this.undoStack[this.undoStack.length - 1];
    if (!e) return false;
    if (e.kind === "stroke") this.applyOverrides(e.idx, e.before);
    else {
      if (!backend) throw new Error("the interactive session has ended; clicks cannot be undone");
      this.setBase(await backend.undo());
    }
    this.undoStack.pop();
    this.redoStack.push(e);
    this.dirty = this.undoStack.length > 0;
    this.onChange();
    return true;
  }

  async redo(backend: ClickBackend | null): Promise<boolean> {
    const e = this.redoStack[this.redoStack.length - 1];
    if (!e) return false;
    if (e.kind === "stroke") this.applyOverrides(e.idx, e.after);
    else {
      if (!backend) throw new Error("the interactive session has ended; clicks cannot be redone");
      this.setBase(await backend.click(e.group));
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
    const stroke = this.stroke!;
    const ov = this.overrides;
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
      if (!stroke.has(i)) stroke.set(i, ov[i]);
      if (ov[i] < 0) this.overrideCount++;
      ov[i] = value;
      out[i] = value;
      for (const d of dirs) {
        const q: [number, number, number] = [x + d[0], y + d[1], z + d[2]];
        if (q[0] >= 0 && q[0] < nx && q[1] >= 0 && q[1] < ny && q[2] >= 0 && q[2] < nz) stack.push(q);
      }
    }
    this.endStroke();
    void this.viewer.refresh();
  }
}
