// The marks layer: a 2-D canvas over the viewer that draws what NiiVue does not — a marker at
// each click of the interactive session (class colour; + / −), the brush outline under the
// cursor, distance measurements, and each tile's view name and slice number. Everything is
// drawn from voxel/world positions after every NiiVue frame, so it follows scrolling, zoom
// and pan.

import type { Viewer } from "./viewer";

export interface ClickMark { vox: [number, number, number]; positive: boolean; color: [number, number, number]; label: string }
export interface Ruler { id: number; a: number[]; b: number[]; mm: number } // world mm

const VIEW_NAMES = ["Axial", "Coronal", "Sagittal"];

export class Marks {
  clicks: ClickMark[] = [];
  showClicks = true;
  rulers: Ruler[] = [];
  /** The ruler being dragged (world mm). */
  drawing: { a: number[]; b: number[] } | null = null;
  /** Brush outline: a position (CSS pixels of the canvas), its tile and radius in voxels. */
  cursor: { x: number; y: number; axCorSag: number; radiusVox: number; color: string } | null = null;
  /** A prompt being drawn (box corners, lasso or scribble path), voxels on one slice of a tile. */
  prompt: { kind: "box" | "lasso" | "stroke"; pts: number[][]; axis: number; color: string; dashed?: boolean } | null = null;
  private g: CanvasRenderingContext2D;

  constructor(private canvas: HTMLCanvasElement, private viewer: Viewer) {
    this.g = canvas.getContext("2d")!;
  }

  /** Half a voxel along the tile's normal: a point nearer than this lies on the shown slice. */
  private onSlice(axCorSag: number): number {
    const sp = this.viewer.header?.spacing ?? [1, 1, 1];
    return sp[this.viewer.normalAxis(axCorSag)] / 2 + 1e-3;
  }

  draw(): void {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = this.g;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    if (!this.viewer.header) return;
    const tiles = this.viewer.tiles();
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "top";
    for (const t of tiles) {
      const s = this.viewer.sliceOf(t.axCorSag);
      if (!s) continue;
      const text = `${VIEW_NAMES[t.axCorSag]} ${s.index + 1}/${s.count}`;
      g.fillStyle = "#000a";
      g.fillRect(t.x + 3, t.y + 3, g.measureText(text).width + 8, 17);
      g.fillStyle = "#e8e8e8";
      g.fillText(text, t.x + 7, t.y + 6);
    }
    g.save();
    g.beginPath(); // one path of every tile's rectangle: the marks stay inside the 2-D tiles
    for (const t of tiles) g.rect(t.x, t.y, t.w, t.h);
    g.clip();
    for (const m of this.showClicks ? this.clicks : []) {
      for (const p of this.viewer.project(this.viewer.voxToMM(m.vox))) {
        if (p.dist > this.onSlice(p.axCorSag)) continue;
        this.marker(p.x, p.y, m);
      }
    }
    const lines = this.rulers.map((r) => ({ ...r, live: false }));
    if (this.drawing) lines.push({ id: -1, ...this.drawing, mm: dist(this.drawing.a, this.drawing.b), live: true });
    for (const r of lines) {
      const pa = this.viewer.project(r.a), pb = this.viewer.project(r.b);
      for (let i = 0; i < pa.length; i++) {
        const a = pa[i], b = pb[i];
        if (!b || a.dist > this.onSlice(a.axCorSag) || b.dist > this.onSlice(b.axCorSag)) continue;
        g.strokeStyle = r.live ? "#ffe066" : "#ffd000";
        g.lineWidth = 1.5;
        g.beginPath();
        g.moveTo(a.x, a.y);
        g.lineTo(b.x, b.y);
        g.stroke();
        for (const q of [a, b]) g.fillRect(q.x - 2, q.y - 2, 4, 4);
        const text = `${r.mm.toFixed(1)} mm`;
        g.fillStyle = "#000b";
        g.fillRect(b.x + 5, b.y - 8, g.measureText(text).width + 6, 16);
        g.fillStyle = "#ffd000";
        g.fillText(text, b.x + 8, b.y - 6);
      }
    }
    if (this.prompt) this.drawPrompt(this.prompt);
    const cur = this.cursor;
    if (cur) {
      const mmPerPx = this.viewer.mmPerPixel(cur.axCorSag);
      const sp = this.viewer.header.spacing;
      const rPx = (Math.max(0.5, cur.radiusVox - 0.5) * Math.min(sp[0], sp[1], sp[2])) / mmPerPx;
      g.strokeStyle = cur.color;
      g.lineWidth = 1.5;
      g.setLineDash([4, 3]);
      g.beginPath();
      g.arc(cur.x, cur.y, Math.max(1.5, rPx), 0, 2 * Math.PI);
      g.stroke();
      g.setLineDash([]);
    }
    g.restore();
  }

  private drawPrompt(p: NonNullable<Marks["prompt"]>): void {
    let pts = p.pts;
    if (p.kind === "box" && pts.length === 2) {
      const [a, b] = pts;
      const [u, v] = [0, 1, 2].filter((x) => x !== p.axis);
      const c = (from: number[], ax: number) => from.map((x, i) => (i === ax ? b[ax] : x));
      pts = [a, c(a, u), b, c(a, v)];
    }
    if (!pts.length) return;
    const proj = pts.map((q) => this.viewer.project(this.viewer.voxToMM(q)));
    const g = this.g;
    for (let t = 0; t < proj[0].length; t++) {
      const ps = proj.map((pp) => pp[t]);
      if (ps.some((q) => !q || this.viewer.normalAxis(q.axCorSag) !== p.axis || q.dist > this.onSlice(q.axCorSag))) continue;
      g.strokeStyle = p.color;
      g.lineWidth = p.kind === "stroke" ? 3 : 2;
      g.setLineDash(p.dashed ? [5, 3] : []);
      g.beginPath();
      g.moveTo(ps[0].x, ps[0].y);
      for (const q of ps.slice(1)) g.lineTo(q.x, q.y);
      if (p.kind !== "stroke") g.closePath();
      g.stroke();
      g.setLineDash([]);
    }
  }

  private marker(x: number, y: number, m: ClickMark): void {
    const g = this.g;
    g.fillStyle = m.positive ? `rgb(${m.color.join(",")})` : "#111";
    g.strokeStyle = m.positive ? "#fff" : `rgb(${m.color.join(",")})`;
    g.lineWidth = 2;
    g.beginPath();
    g.arc(x, y, 6, 0, 2 * Math.PI);
    g.fill();
    g.stroke();
    g.strokeStyle = m.positive ? "#000" : "#fff";
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(x - 3, y);
    g.lineTo(x + 3, y);
    if (m.positive) {
      g.moveTo(x, y - 3);
      g.lineTo(x, y + 3);
    }
    g.stroke();
  }
}

export function dist(a: number[], b: number[]): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}
