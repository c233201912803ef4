// Small DOM helpers, notices with details one click away, and a line chart.

import { ApiError } from "./api";

export function $(sel: string, root: ParentNode = document): HTMLElement {
  const el = root.querySelector(sel);
  if (!el) throw new Error(`missing element ${sel}`);
  return el as HTMLElement;
}
export function $input(sel: string): HTMLInputElement {
  return $(sel) as HTMLInputElement;
}
export function $select(sel: string): HTMLSelectElement {
  return $(sel) as HTMLSelectElement;
}

export function esc(s: unknown): string {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function fmt(v: unknown, digits = 3): string {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isFinite(v) ? v.toFixed(digits) : "–";
  return String(v);
}

/** A notice: plain words, and for errors a "Details" button that reveals the technical text. */
export function notify(message: string, kind: "info" | "error" | "ok" = "info", detail?: string): void {
  const area = $("#notices");
  const box = document.createElement("div");
  box.className = `notice ${kind}`;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  box.innerHTML = `<div class="msg">${esc(message)}</div>
    <div class="actions">${detail ? '<button class="link details">Details</button>' : ""}<button class="link close" aria-label="Dismiss">✕</button></div>
    ${detail ? `<pre class="detail" hidden>${esc(detail)}</pre>` : ""}`;
  box.querySelector(".close")!.addEventListener("click", () => box.remove());
  box.querySelector(".details")?.addEventListener("click", () => {
    const pre = box.querySelector("pre")!;
    pre.hidden = !pre.hidden;
  });
  area.prepend(box);
  while (area.children.length > 5) area.lastElementChild!.remove();
  if (kind !== "error") setTimeout(() => box.remove(), 5000);
}

export function showError(e: unknown, context = ""): void {
  if (e instanceof ApiError) {
    notify((context ? `${context}: ` : "") + e.plain, "error", e.detail);
  } else {
    const err = e as Error;
    notify((context ? `${context}: ` : "") + (err?.message ?? String(e)), "error", err?.stack ?? String(e));
  }
}

/** Run an async action with a busy cursor; errors become notices. */
export async function guard<T>(context: string, fn: () => Promise<T>): Promise<T | undefined> {
  document.body.classList.add("busy");
  try {
    return await fn();
  } catch (e) {
    showError(e, context);
    return undefined;
  } finally {
    document.body.classList.remove("busy");
  }
}

export interface Series { name: string; color: string; points: Array<[number, number]> }

/** A line chart on a canvas: x shared, each series scaled to [0, max]. */
export function drawChart(canvas: HTMLCanvasElement, series: Series[], xLabel: string): void {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d")!;
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  g.font = "11px system-ui, sans-serif";
  const pad = { l: 30, r: 8, t: 16, b: 18 };
  const all = series.flatMap((s) => s.points);
  g.strokeStyle = "#445";
  g.strokeRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
  if (!all.length) {
    g.fillStyle = "#889";
    g.fillText("no data yet", pad.l + 8, pad.t + 16);
    return;
  }
  const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]), x0 + 1e-9);
  const X = (x: number) => pad.l + ((x - x0) / (x1 - x0 || 1)) * (w - pad.l - pad.r);
  let lx = pad.l;
  for (const s of series) {
    if (!s.points.length) continue;
    const ymax = Math.max(...s.points.map((p) => p[1]), 1e-9);
    const Y = (y: number) => h - pad.b - (y / ymax) * (h - pad.t - pad.b);
    g.strokeStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    s.points.forEach((p, i) => (i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1]))));
    g.stroke();
    for (const p of s.points) g.fillRect(X(p[0]) - 1.5, Y(p[1]) - 1.5, 3, 3);
    g.fillStyle = s.color;
    const last = s.points[s.points.length - 1][1];
    const text = `${s.name} ${last.toFixed(3)} (max ${ymax.toFixed(2)})`;
    g.fillText(text, lx, 11);
    lx += g.measureText(text).width + 12;
  }
  g.fillStyle = "#889";
  g.fillText(`${xLabel} ${x0}–${x1}`, pad.l, h - 4);
}
