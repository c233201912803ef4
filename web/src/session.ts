// The interactive session: clicks, strokes pushed into it, undo/redo, running a model.

import * as api from "./api";
import type { ClickGroup, ServerMask, SessionBackend } from "./editor";
import { gunzipIfNeeded, gzip, readLabel, writeLabel } from "./nifti";
import { $, $select, guard, notify, showError } from "./ui";
import { type Session, S, viewer, editor, className, setStatus } from "./app";
import { loadWorklist } from "./worklist";
import { closeSession, confirmDiscard } from "./image";
import { checkFit } from "./fit";

/**
 * Session calls (clicks, pushed strokes, undo/redo, save) run one after another, in order. While
 * one is queued or on its way the 3-D tile is not ray-cast again (software WebGL would hold up
 * its request and answer for as long as the ray-cast takes); it catches up after the last one.
 */
let chain: Promise<unknown> = Promise.resolve();
export function serial<T>(fn: () => Promise<T>): Promise<T> {
  viewer.lazy3D.hold();
  const run = chain.then(fn).finally(() => viewer.lazy3D.release());
  chain = run.catch(() => undefined);
  return run;
}

export async function ensureSession(): Promise<Session> {
  if (S.session) return S.session;
  if (!S.image) throw new Error("open an image first");
  const model = S.models.find((m) => m.name === S.model);
  if (!model || !model.current_version) {
    throw new Error("Clicks need a trained model. Choose one in the model list at the top (or train one under Models).");
  }
  setStatus(`Preparing ${model.name} on this image…`);
  const body: Record<string, unknown> = { image_id: S.image.id, model: model.name };
  if (S.shownRevision) body.initial_revision = S.shownRevision;
  const info = await api.post<{ id: string; version: number }>("/sessions", body);
  const session: Session = { id: info.id, model: model.name, version: info.version, initial: S.shownRevision };
  S.session = session;
  if (S.features.putLabel && !(S.shownRevision !== null && editor.baseIsInitial)) {
    // The session starts from the model's prediction (or from the revision, while the view
    // already holds steps of an earlier session): make its first state what the user sees,
    // strokes aside. Earlier sessions' steps cannot be undone in this one.
    await pushLabel(session, editor.base);
    editor.dropServerSteps();
  }
  return session;
}

/**
 * Make `mask` the session's mask. `box`: it differs from the session's mask only there — then
 * (when the server takes it) only the box's voxels are sent, raw (a stroke's box is a few KB;
 * the whole mask is 8 MB to write, compress, upload and check for 256x256x128).
 */
export async function pushLabel(s: Session, mask: Uint8Array, box: number[] | null = null): Promise<void> {
  const form = new FormData();
  if (box && S.features.putLabelBox) {
    form.append("box", box.join(","));
    form.append("file", new Blob([boxVoxels(mask, box) as BlobPart]), "box.bin");
  } else form.append("file", await gzip(writeLabel(viewer.header!, mask)), "label.nii.gz");
  await api.request("PUT", `/sessions/${s.id}/label`, form);
}

/** The voxels of `mask` (file order) inside `box`, x fastest: `applyBox`'s counterpart. */
export function boxVoxels(mask: Uint8Array, box: number[]): Uint8Array {
  const [nx, ny] = viewer.dims;
  const [x0, x1, y0, y1, z0, z1] = box;
  const w = x1 - x0;
  const out = new Uint8Array(w * (y1 - y0) * (z1 - z0));
  let k = 0;
  for (let z = z0; z < z1; z++) {
    for (let y = y0; y < y1; y++, k += w) out.set(mask.subarray(x0 + nx * (y + ny * z), x0 + nx * (y + ny * z) + w), k);
  }
  return out;
}

export const BOX_TYPE = "application/vnd.segloop.label-box";
let lastCall = { fetchMs: 0, decodeMs: 0, serverMs: NaN, bytes: 0 };
/**
 * A session call that returns its mask. It asks for the compact response (`?since=` the step
 * whose mask it holds): only the box the step(s) changed, written into the held mask in place;
 * the server answers the whole mask when it cannot (and older servers always do).
 */
export async function sessionCall(path: string, body?: unknown): Promise<ServerMask> {
  const call = async (s: Session): Promise<ServerMask> => {
    const t0 = performance.now();
    const held = s.held;
    const { data, headers } = await api.binary("POST", `/sessions/${s.id}${path}?since=${held?.step ?? 0}`, body ?? {});
    const t1 = performance.now();
    const step = Number(headers.get("X-Segloop-Step") ?? NaN);
    let out: ServerMask;
    if ((headers.get("Content-Type") ?? "").startsWith(BOX_TYPE)) {
      const box = (headers.get("X-Segloop-Box") ?? "").split(",").map(Number);
      if (!held || Number(headers.get("X-Segloop-Base-Step")) !== held.step || box.length !== 6 || !Number.isFinite(step)) {
        throw new Error("The server sent a change of a mask this page does not hold.");
      }
      const shown = editor.base === held.mask; // then only the box needs showing again
      applyBox(held.mask, box, new Uint8Array(await gunzipIfNeeded(data)));
      held.step = step;
      out = shown ? { mask: held.mask, box } : { mask: held.mask };
    } else {
      const mask = (await readLabel(data)).data;
      s.held = Number.isFinite(step) ? { step, mask } : undefined;
      out = { mask };
    }
    lastCall = { fetchMs: t1 - t0, decodeMs: performance.now() - t1, serverMs: Number(headers.get("X-Segloop-Seconds") ?? NaN) * 1000, bytes: data.byteLength };
    return out;
  };
  const s = await ensureSession();
  try {
    return await call(s);
  } catch (e) {
    if (!(e instanceof api.ApiError && e.status === 404 && path !== "/undo" && path !== "/redo")) throw e;
    // the session expired on the server: open a new one from what is shown, then click again
    S.session = null;
    notify("The interactive session had expired; it was reopened from the label you see (earlier clicks can no longer be undone).", "info");
    if (S.features.putLabel) editor.forgetHistoryAsBase();
    return await call(await ensureSession());
  }
}

/** Write a compact response's voxels (x fastest, the box's own extent) into `mask` (file order). */
export function applyBox(mask: Uint8Array, box: number[], voxels: Uint8Array): void {
  const [nx, ny] = viewer.dims;
  const [x0, x1, y0, y1, z0, z1] = box;
  const w = x1 - x0;
  if (voxels.length !== w * (y1 - y0) * (z1 - z0)) throw new Error("The server's mask change has the wrong size.");
  let k = 0;
  for (let z = z0; z < z1; z++) {
    for (let y = y0; y < y1; y++, k += w) mask.set(voxels.subarray(k, k + w), x0 + nx * (y + ny * z));
  }
}

export function sessionBackend(): SessionBackend {
  return {
    click: (group: ClickGroup) => sessionCall("/clicks", { clicks: [group] }),
    undo: () => sessionCall("/undo"),
    redo: async (group?: ClickGroup) => {
      if (S.features.redo) {
        try {
          return await sessionCall("/redo");
        } catch (e) {
          if (e instanceof api.ApiError && e.status === 409) throw new Error("The server has nothing to redo (the session was changed meanwhile).");
          throw e;
        }
      }
      if (group) return sessionCall("/clicks", { clicks: [group] }); // older servers: click again
      throw new Error("This server cannot redo that step.");
    },
    push: S.features.putLabel ? (mask: Uint8Array, box: number[] | null) => pushLabel(S.session!, mask, box) : null,
  };
}

/** After a stroke: push it into the session (when there is one), so clicks refine on top. */
editor.onStrokeEnd = () => {
  if (!S.session || !S.features.putLabel) return;
  void serial(() => guard("Sending the brush stroke to the model session", async () => {
    if (!S.session) return; // closed meanwhile (another model chosen): the stroke stays local
    const t0 = performance.now();
    if (await editor.pushStrokes(sessionBackend())) S.stats.pushMs = Math.round(performance.now() - t0);
    S.stats.pushes++;
    document.body.dataset.pushes = String(S.stats.pushes);
  }));
};

export type StepTiming = {
  serverMs: number; roundTripMs: number; decodeMs: number; applyMs: number; shownMs: number; responseBytes: number;
};

/**
 * One step of the interactive session (a click or a box / lasso / scribbles prompt), in order
 * with the other session calls: opens the session when needed, pushes pending brush strokes
 * first (so the step refines on top of them), sends `path` with `body` (`?since`: only the
 * changed box comes back), shows the answered mask and makes it one undo/redo entry.
 */
export async function sessionStep(path: string, body: unknown, status: string, group?: ClickGroup): Promise<StepTiming> {
  return serial(async () => {
    await ensureSession(); // opening a session (first prediction) is not part of the step's time
    if (S.features.putLabel) {
      // brushed voxels first, so the step refines on top of them; if the server refuses them,
      // they stay on top of the session's mask as before (and a save stores them as `manual`)
      await editor.pushStrokes(sessionBackend()).catch((e) => showError(e, "Sending the brush strokes to the model session"));
    }
    setStatus(status);
    const t0 = performance.now();
    const call = () => sessionCall(path, body);
    await editor.serverStep(group ? "click" : "prompt", call, group);
    viewer.flushNow(); // upload the changed voxels and redraw now, not at the next frame
    const tMask = performance.now();
    await viewer.presented();
    const shown = performance.now();
    return {
      serverMs: Math.round(lastCall.serverMs), // the model's time, as the server reports it
      roundTripMs: Math.round(lastCall.fetchMs), // request sent → response received
      decodeMs: Math.round(lastCall.decodeMs),
      applyMs: Math.round(tMask - t0 - lastCall.fetchMs - lastCall.decodeMs),
      shownMs: Math.round(shown - t0),
      responseBytes: lastCall.bytes, // the compact response: the changed box only
    };
  });
}

export async function placeClick(vox: [number, number, number], positive: boolean): Promise<void> {
  const group: ClickGroup = { class: positive ? S.classValue : "background", points: [vox] };
  document.body.dataset.lastClick = vox.join(",");
  const rec = await sessionStep("/clicks", { clicks: [group] },
    `${positive ? "Adding" : "Removing"} ${positive ? className(S.classValue) : "background"} at voxel ${vox.join(", ")}…`, group);
  S.stats.clickServerMs = rec.roundTripMs;
  S.stats.clickShownMs = rec.shownMs;
  S.stats.clickLog.push(rec);
  if (S.stats.clickLog.length > 200) S.stats.clickLog.shift();
  S.stats.clicks++;
  document.body.dataset.clicks = String(S.stats.clicks);
  setStatus(`${positive ? "Positive" : "Negative"} click at voxel ${vox.join(", ")}: model ${rec.serverMs} ms, ` +
    `round trip ${rec.roundTripMs} ms, on screen after ${rec.shownMs} ms`);
}

export async function runModel(): Promise<void> {
  if (!S.image) throw new Error("open an image first");
  if (!S.model) throw new Error("choose a model first");
  if (!confirmDiscard()) return;
  await closeSession();
  const model = S.models.find((m) => m.name === S.model);
  if (!model?.current_version) throw new Error(`model ${S.model} has no trained version yet`);
  const t0 = performance.now();
  setStatus(`Running ${S.model}…`);
  const info = await api.post<{ id: string; version: number }>("/sessions", { image_id: S.image.id, model: S.model });
  S.session = { id: info.id, model: S.model, version: info.version, initial: null };
  const { data } = await api.binary("GET", `/sessions/${info.id}/label`);
  const mask = (await readLabel(data)).data;
  S.shownRevision = null;
  S.viewRevision = null;
  S.baseRevision = S.image.latest_revision;
  editor.reset(mask);
  editor.dirty = true;
  renderEditState();
  setStatus(`${S.model} v${info.version}: automatic segmentation in ${Math.round(performance.now() - t0)} ms. Correct it with clicks or the brush, then save.`);
}
$("#run-model").addEventListener("click", () => void guard("Running the model", runModel));
$select("#model").addEventListener("change", () => {
  S.model = $select("#model").value;
  void closeSession();
  void checkFit();
  if (S.modelStrategies.has(S.strategy)) void guard("Loading the queue", loadWorklist);
});


// --- undo / redo / save ---------------------------------------------------------------------------

export function renderEditState(): void {
  ($("#undo") as HTMLButtonElement).disabled = !editor.canUndo;
  ($("#redo") as HTMLButtonElement).disabled = !editor.canRedo;
  const shown = !editor.dirty && S.viewRevision ? `revision ${S.viewRevision}`
    : S.shownRevision ? `edited from revision ${S.shownRevision}` : S.session ? `prediction of ${S.session.model}` : "empty label";
  $("#edit-state").textContent = `${shown}${editor.dirty ? " · unsaved changes" : ""} · ${editor.historyText}`;
  document.body.dataset.dirty = editor.dirty ? "1" : "0";
}
editor.onChange = renderEditState;
export async function undo(): Promise<void> {
  await serial(() => editor.undo(S.session ? sessionBackend() : null));
}
export async function redo(): Promise<void> {
  await serial(() => editor.redo(S.session ? sessionBackend() : null));
}
$("#undo").addEventListener("click", () => void guard("Undo", undo));
$("#redo").addEventListener("click", () => void guard("Redo", redo));
