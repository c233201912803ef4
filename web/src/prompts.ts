// Prompts beyond clicks (issue 15): a box, a lasso and scribbles, drawn with the mouse on one
// slice of a 2-D tile. Each is one step of the interactive session, exactly like a click
// (session.ts `sessionStep`: the session opened when needed, `?since`, the answered box applied,
// one undo/redo entry): POST /sessions/{id}/box, /lasso, /scribbles. The outline is drawn on the
// marks canvas while the mouse is down and until the server has answered.

import { $, $input, $select, guard, notify } from "./ui";
import { S, viewer, marks, className, setStatus } from "./app";
import { registerTool, type ToolDrag } from "./tools";
import { sessionStep } from "./session";
import type { VoxelHit } from "./viewer";

// the options, under the tool grid
const opts = document.createElement("div");
opts.id = "prompt-opts";
opts.className = "prompt-opts";
opts.innerHTML = `
  <div class="row" title="Box: a 3-D box spanning this many slices either side of the drawn rectangle (Ctrl+drag: the same once)">
    <label><input id="box-3d" type="checkbox"> 3-D box ±</label>
    <input id="box-depth" type="number" min="1" max="200" value="5" style="width:4em"> slices</div>
  <div class="row" title="Scribbles: stroke class (Alt+drag: a background stroke) and how the strokes are used">
    Scribble <select id="scribble-class"><option value="fg">class</option><option value="bg">background</option></select>
    <select id="scribble-mode"><option value="guidance">model guidance</option><option value="graphcut">graph cut</option></select></div>
  <div class="row" id="graphcut-opts" hidden title="Graph cut: how strongly the cut follows smooth, edge-aligned boundaries (smoothness) and how far beyond the strokes it may change the mask (reach)">
    smoothness <input id="graphcut-lambda" type="number" min="0" max="1000" step="0.5" value="2" style="width:4em">
    reach <input id="graphcut-margin" type="number" min="0" max="500" step="1" value="15" style="width:4em"> mm</div>`;
$("#tools").after(opts);
$select("#scribble-mode").addEventListener("change", () => {
  ($("#graphcut-opts") as HTMLElement).hidden = $select("#scribble-mode").value !== "graphcut";
});

/** The graph cut's parameters from the option row (null: a value out of range, said in a notice). */
function graphcutParams(): { lambda: number; margin_mm: number } | null {
  const lam = Number($input("#graphcut-lambda").value);
  const margin = Number($input("#graphcut-margin").value);
  if (!Number.isFinite(lam) || lam < 0 || lam > 1000) {
    notify("Graph cut: the smoothness must be a number from 0 to 1000.", "error");
    return null;
  }
  if (!Number.isFinite(margin) || margin < 0 || margin > 500) {
    notify("Graph cut: the reach must be from 0 to 500 mm.", "error");
    return null;
  }
  return { lambda: lam, margin_mm: margin };
}

let sent = 0;

function classRgb(v: number): string {
  const c = S.classColors.get(v) ?? S.schema.classes.find((x) => x.value === v)?.color ?? [255, 255, 255];
  return `rgb(${c.join(",")})`;
}

/** `h` moved onto the slice `start` was on (null when the mouse left the tile). */
function onSlice(start: VoxelHit, h: VoxelHit | null): number[] | null {
  if (!h || h.axCorSag !== start.axCorSag) return null;
  const axis = viewer.normalAxis(start.axCorSag);
  const v = [...h.vox];
  v[axis] = start.vox[axis];
  return v;
}

/** Send one prompt; its outline stays shown until the server has answered. */
function send(what: string, path: string, body: unknown, shape: NonNullable<typeof marks.prompt>): void {
  marks.prompt = shape;
  marks.draw();
  void guard(`The ${what} could not be applied`, async () => {
    try {
      const rec = await sessionStep(path, body, `Sending the ${what}…`);
      sent++;
      document.body.dataset.prompts = String(sent);
      setStatus(`${what[0].toUpperCase()}${what.slice(1)}: model ${rec.serverMs} ms, round trip ${rec.roundTripMs} ms, ` +
        `on screen after ${rec.shownMs} ms`);
    } finally {
      if (marks.prompt === shape) {
        marks.prompt = null;
        marks.draw();
      }
    }
  });
}

/** A drag that collects the path of voxels on the slice it started on, drawn as it goes. */
function pathDrag(start: VoxelHit, kind: "lasso" | "stroke", color: string, done: (pts: number[][], axis: number) => void): ToolDrag {
  const axis = viewer.normalAxis(start.axCorSag);
  const shape = { kind, pts: [[...start.vox]], axis, color, dashed: true };
  marks.prompt = shape;
  marks.draw();
  return {
    move(h) {
      const v = onSlice(start, h);
      const last = shape.pts[shape.pts.length - 1];
      if (!v || v.every((x, i) => x === last[i])) return;
      shape.pts.push(v);
      marks.draw();
    },
    up() {
      shape.dashed = false;
      if (marks.prompt === shape) marks.prompt = null;
      let pts = shape.pts;
      if (pts.length > 10_000) pts = pts.filter((_, i) => i % Math.ceil(pts.length / 10_000) === 0);
      done(pts, axis);
      marks.draw();
    },
  };
}

registerTool({
  id: "box", label: "Box", key: "x",
  title: "Box prompt: drag a rectangle around the structure on a slice (3-D box: tick '3-D box' or Ctrl+drag)",
  down(hit, e) {
    const axis = viewer.normalAxis(hit.axCorSag);
    const color = classRgb(S.classValue);
    const shape = { kind: "box" as const, pts: [[...hit.vox], [...hit.vox]], axis, color, dashed: true };
    marks.prompt = shape;
    marks.draw();
    const threeD = $input("#box-3d").checked || e.ctrlKey || e.metaKey;
    return {
      move(h) {
        const v = onSlice(hit, h);
        if (!v) return;
        shape.pts[1] = v;
        marks.draw();
      },
      up() {
        if (marks.prompt === shape) marks.prompt = null;
        marks.draw();
        const [a, b] = shape.pts;
        if ([0, 1, 2].some((i) => i !== axis && a[i] === b[i])) {
          notify("Box: drag a rectangle around the structure (at least two voxels wide and high).", "error");
          return;
        }
        const lo = [...a], hi = [...b];
        if (threeD) {
          const n = Math.max(1, Math.round(Number($input("#box-depth").value) || 5));
          lo[axis] = Math.max(0, a[axis] - n);
          hi[axis] = Math.min(viewer.dims[axis] - 1, a[axis] + n);
        }
        send(`${threeD ? "3-D " : ""}box prompt (${className(S.classValue)})`, "/box",
          { class: S.classValue, box: [lo, hi] }, { ...shape, dashed: false });
      },
    };
  },
});

registerTool({
  id: "lasso", label: "Lasso", key: "q",
  title: "Lasso prompt: draw a closed contour around the structure on a slice (closed on release)",
  down(hit) {
    const cls = S.classValue;
    return pathDrag(hit, "lasso", classRgb(cls), (pts, axis) => {
      if (pts.length < 3) {
        notify("Lasso: draw a contour around the structure (hold the button down while drawing).", "error");
        return;
      }
      send(`lasso prompt (${className(cls)})`, "/lasso", { class: cls, lasso: pts }, { kind: "lasso", pts, axis, color: classRgb(cls) });
    });
  },
});

registerTool({
  id: "scribble", label: "Scribble", key: "w",
  title: "Scribbles: a stroke of the class (Alt+drag or 'background': a background stroke), sent on release; " +
    "used as model guidance or as graph-cut seeds",
  down(hit, e) {
    const background = e.altKey || $select("#scribble-class").value === "bg";
    const cls: string | number = background ? "background" : S.classValue;
    const color = background ? "rgb(240,80,80)" : classRgb(S.classValue);
    const mode = $select("#scribble-mode").value === "graphcut" ? "graphcut" : "guidance";
    return pathDrag(hit, "stroke", color, (pts, axis) => {
      const what = `${background ? "background" : className(S.classValue)} scribble (${mode === "graphcut" ? "graph cut" : "model guidance"})`;
      const body: Record<string, unknown> = { scribbles: [{ class: cls, points: pts, radius: 1 }], mode };
      if (mode === "graphcut") {
        const params = graphcutParams();
        if (!params) {
          marks.prompt = null;
          marks.draw();
          return;
        }
        body.graphcut = params;
      }
      send(what, "/scribbles", body, { kind: "stroke", pts, axis, color });
    });
  },
});
