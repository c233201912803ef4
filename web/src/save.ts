// Saving a label revision, and the conflict dialog when someone saved meanwhile.

import * as api from "./api";
import { gzip, writeLabel } from "./nifti";
import { $, esc, guard, notify, when } from "./ui";
import type { ImageRecord, Revision } from "./api";
import { S, viewer, editor, className, can } from "./app";
import { loadWorklist } from "./worklist";
import { loadRevisionIntoEditor, renderImageInfo, loadRevisions } from "./image";
import { showOverlay } from "./overlays";
import { serial, renderEditState } from "./session";

export function save(status: "draft" | "final", base: number | null = S.baseRevision): Promise<void> {
  return serial(() => saveNow(status, base)); // after any stroke still on its way to the session
}

export async function saveNow(status: "draft" | "final", base: number | null): Promise<void> {
  if (!S.image) throw new Error("open an image first");
  if (status === "final" && !can("reviewer")) throw new Error("Saving a final label needs the reviewer role.");
  let rev: Revision;
  try {
    // the session's mask is what is shown when no stroke is outside it: saved as `interactive`
    if (S.session && editor.overrideCount === 0 && S.session.initial === S.shownRevision) {
      rev = await api.post<Revision>(`/sessions/${S.session.id}/save`, { base_revision: base, status });
    } else {
      const like = viewer.header!;
      const blob = await gzip(writeLabel(like, editor.current()));
      const form = new FormData();
      form.append("file", blob, "label.nii.gz");
      if (base !== null) form.append("base_revision", String(base));
      form.append("status", status);
      const res = await api.request("POST", `/images/${encodeURIComponent(S.image.id)}/labels`, form);
      rev = (await res.json()) as Revision;
    }
  } catch (e) {
    if (e instanceof api.ApiError && e.status === 409 && e.code === "stale_revision") {
      await showConflict(status, Number(e.body?.current_revision));
      return;
    }
    throw e;
  }
  S.baseRevision = rev.revision;
  S.viewRevision = rev.revision;
  S.image = { ...S.image, latest_revision: rev.revision, label_state: rev.status, latest_author: rev.author };
  editor.dirty = false;
  renderEditState();
  renderImageInfo();
  document.body.dataset.savedRevision = String(rev.revision);
  notify(`Saved as revision ${rev.revision} (${rev.status}).`, "ok");
  await Promise.all([loadRevisions(), loadWorklist()]);
}
$("#save-draft").addEventListener("click", () => void guard("Saving", () => save("draft")));
$("#save-final").addEventListener("click", () => void guard("Saving", () => save("final")));

export async function showConflict(status: "draft" | "final", current: number): Promise<void> {
  if (!S.image) return;
  const info = await api.get<Revision>(`/images/${encodeURIComponent(S.image.id)}/labels/${current}/info`);
  const dlg = $("#conflict") as HTMLDialogElement;
  const counts = Object.entries(info.voxel_counts ?? {}).filter(([k]) => k !== "0")
    .map(([k, n]) => `${esc(className(Number(k)))}: ${n} voxels`).join(", ");
  $("#conflict-text").innerHTML = `<p><b>${esc(info.author)}</b> saved revision <b>${info.revision}</b>
    (${esc(info.status)}, ${esc(info.source)}) at ${when(info.created_at)}, after you started editing revision ${S.baseRevision ?? "–"}.</p>
    <p class="muted">${counts || "no labelled voxels"}</p>`;
  dlg.dataset.current = String(current);
  dlg.dataset.status = status;
  document.body.dataset.conflict = String(current);
  dlg.showModal();
}
$("#conflict-show").addEventListener("click", () => {
  const cur = ($("#conflict") as HTMLDialogElement).dataset.current;
  void guard("Showing their revision", async () => {
    await loadRevisions();
    await showOverlay("reference", `rev:${cur}`);
  });
});
$("#conflict-keep").addEventListener("click", () => {
  const dlg = $("#conflict") as HTMLDialogElement;
  dlg.close();
  delete document.body.dataset.conflict;
  void guard("Saving", () => save(dlg.dataset.status as "draft" | "final", Number(dlg.dataset.current)));
});
$("#conflict-reload").addEventListener("click", () => {
  const dlg = $("#conflict") as HTMLDialogElement;
  dlg.close();
  delete document.body.dataset.conflict;
  void guard("Reloading", async () => {
    if (!S.image) return;
    S.image = await api.get<ImageRecord>(`/images/${encodeURIComponent(S.image.id)}`);
    await loadRevisionIntoEditor(S.image.latest_revision);
    await loadRevisions();
    notify(`Showing revision ${S.image.latest_revision}; your changes were discarded.`, "info");
  });
});
$("#conflict-cancel").addEventListener("click", () => {
  ($("#conflict") as HTMLDialogElement).close();
  delete document.body.dataset.conflict;
});
