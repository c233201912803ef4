// segloop web app: start-up and sign-in. The features live in their own modules:
//   app.ts (markup, state, viewer, editor) · worklist.ts · upload.ts · image.ts (open, revisions)
//   display.ts (view, window/level) · overlays.ts · tools.ts (classes, tools, mouse) · session.ts
//   (clicks, undo/redo) · prompts.ts (box, lasso, scribbles) · save.ts · export.ts (NIfTI, DICOM SEG, PACS) · models.ts (training, jobs)
//   evaluation.ts · keys.ts · events.ts (live events)

import "./style.css";
import * as api from "./api";
// app first: it puts the page's markup in place, which every feature module's listeners need
import "./app";
// feature modules that only register listeners (the others are imported for what they export)
import "./upload";
import "./keys";
import "./save";
import "./evaluation";
import "./prompts"; // box / lasso / scribble prompt tools (after tools.ts, which they register with)
import { $, $input, $select, esc, guard, showError } from "./ui";
import type { Schema } from "./api";
import { S, viewer, editor, foreground, marks } from "./app";
import { loadWorklist } from "./worklist";
import { openImage } from "./image";
import { setView, VIEWS } from "./display";
import type { ViewMode } from "./viewer";
import { renderClasses, setTool, setBrush, clickMarks } from "./tools";
import { renderEditState } from "./session";
import { loadPacs } from "./export";
import { loadModels, loadArchitectures, loadJobs, renderChart } from "./models";
import { onEvent } from "./events";
import { volumesChanged } from "./segments";
import { loadDatasetEvaluations } from "./dataset_eval";

api.onUnauthorized(() => {
  const dlg = $("#login") as HTMLDialogElement;
  if (!dlg.open) dlg.showModal();
});
$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void guard("Signing in", async () => {
    const r = await api.post<{ token: string }>("/auth/login", { username: $input("#login-user").value, password: $input("#login-pass").value });
    api.setToken(r.token);
    ($("#login") as HTMLDialogElement).close();
    await start();
  });
});

// --- start ----------------------------------------------------------------------------------------

/** Optional routes this server offers (from its OpenAPI schema): the app adapts to older servers. */
async function loadFeatures(): Promise<void> {
  try {
    const spec = await api.get<{ paths?: Record<string, Record<string, unknown>> }>("/openapi.json");
    const paths = Object.entries(spec.paths ?? {});
    const has = (re: RegExp, method: string) => paths.some(([p, ops]) => re.test(p) && method in ops);
    S.features.putLabel = has(/^\/api\/v1\/sessions\/\{[^}]+\}\/label$/, "put");
    // the upload of only a stroke's box (a `box` field beside the file)
    const put = paths.find(([p]) => /^\/api\/v1\/sessions\/\{[^}]+\}\/label$/.test(p))?.[1]?.put as
      { requestBody?: { content?: Record<string, { schema?: { properties?: Record<string, unknown> } }> } } | undefined;
    S.features.putLabelBox = S.features.putLabel && Boolean(put?.requestBody?.content?.["multipart/form-data"]?.schema?.properties?.box);
    S.features.redo = has(/^\/api\/v1\/sessions\/\{[^}]+\}\/redo$/, "post");
    S.features.dicomSeg = has(/^\/api\/v1\/images\/\{[^}]+\}\/labels\/\{[^}]+\}\/dicom-seg$/, "get");
    S.features.sendPacs = has(/^\/api\/v1\/images\/\{[^}]+\}\/labels\/\{[^}]+\}\/send$/, "post") && has(/^\/api\/v1\/pacs$/, "get");
  } catch {
    /* an old or locked-down server: keep the basic behaviour */
  }
  document.body.dataset.features = Object.entries(S.features).filter(([, v]) => v).map(([k]) => k).join(",");
}

async function start(): Promise<void> {
  const me = await api.get<{ name: string; role: string }>("/auth/me");
  S.me = { name: me.name, role: me.role };
  $("#me").textContent = `${me.name}`;
  $("#me").title = `role: ${me.role}`;
  S.schema = await api.get<Schema>("/schema");
  if (!foreground().some((c) => c.value === S.classValue)) S.classValue = foreground()[0]?.value ?? 1;
  renderClasses();
  const strategies = await api.get<{ available: Array<{ name: string; description: string; [k: string]: unknown }> }>("/activelearning/strategies");
  const usesModel = (s: Record<string, unknown>) => Boolean(s.needs_model ?? s.requires_model ?? s.uses_model ?? s.model_based ??
    ["entropy", "mc-dropout", "tta"].includes(String(s.name)));
  S.modelStrategies = new Set(strategies.available.filter(usesModel).map((s) => s.name));
  $select("#strategy").innerHTML = `<option value="">(no ranking)</option>` +
    strategies.available.map((s) => `<option value="${esc(s.name)}" title="${esc(s.description)}">${esc(s.name)}${S.modelStrategies.has(s.name) ? " (model)" : ""}</option>`).join("");
  await loadFeatures();
  await loadPacs();
  await Promise.all([loadWorklist(), loadModels(), loadArchitectures(), loadJobs()]);
  await loadDatasetEvaluations(); // after the models: it marks the images each version was trained on
  document.body.dataset.ready = "1";
}

editor.onChange = () => {
  renderEditState();
  volumesChanged();
  clickMarks(); // the markers follow undo/redo
  marks.draw();
};
setTool("navigate");
setBrush(3);
const params = new URLSearchParams(location.search);
const wantView = params.get("view") as ViewMode | null;
setView(wantView && VIEWS.includes(wantView) ? wantView : "multi");
void (async () => {
  await viewer.attach();
  api.connectEvents(onEvent, (up) => {
    $("#live").classList.toggle("up", up);
    $("#live").title = up ? "live updates connected" : "live updates disconnected; reconnecting";
  });
  await guard("Connecting to the server", start);
  const want = params.get("image");
  if (want) await openImage(want);
})();
window.addEventListener("beforeunload", (e) => {
  if (editor.dirty) e.preventDefault();
});
window.addEventListener("resize", () => renderChart());
export { showError };
