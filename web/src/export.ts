// Export (NIfTI, DICOM SEG) and sending a final label to the PACS.

import * as api from "./api";
import { gzip, writeLabel } from "./nifti";
import { $, esc, guard, notify, when } from "./ui";
import type { ImageRecord, Revision } from "./api";
import { S, viewer, editor, can, download } from "./app";

export function isDicom(im: ImageRecord | null): boolean {
  return !!im && /^dicom/i.test(im.source ?? "");
}

/** DICOM SEG needs the source series (its references); say why when it cannot be offered. */
export function renderExport(): void {
  const im = S.image;
  const seg = $("#export-seg") as HTMLButtonElement;
  let note = "";
  if (!S.features.dicomSeg) note = "DICOM SEG export is not offered by this server version.";
  else if (!im) note = "";
  else if (!isDicom(im)) note = "DICOM SEG export needs an image imported from DICOM; this one came from a file (NIfTI/NRRD). Export NIfTI instead.";
  else if (!im.latest_revision) note = "Save the label first: DICOM SEG is made from a saved revision.";
  seg.hidden = !S.features.dicomSeg || !isDicom(im);
  seg.disabled = !im?.latest_revision;
  $("#export-note").textContent = note;
  renderSendPacs();
}

$("#export-view").addEventListener("click", () => void guard("Export", async () => {
  if (!S.image) throw new Error("open an image first");
  download(await gzip(writeLabel(viewer.header!, editor.current())), `${S.image.id}-label.nii.gz`);
}));
$("#export-rev").addEventListener("click", () => void guard("Export", async () => {
  if (!S.image?.latest_revision) throw new Error("this image has no saved label yet");
  const { data } = await api.binary("GET", `/images/${encodeURIComponent(S.image.id)}/labels/latest`);
  download(new Blob([data]), `${S.image.id}-r${S.image.latest_revision}.nii.gz`);
}));
$("#export-seg").addEventListener("click", () => void guard("DICOM SEG export", async () => {
  const im = S.image;
  if (!im?.latest_revision) throw new Error("this image has no saved label yet");
  if (!isDicom(im)) throw new Error("DICOM SEG needs an image imported from DICOM.");
  if (editor.dirty) notify("The DICOM SEG holds the last saved revision, not your unsaved changes.", "info");
  const rev = S.viewRevision ?? im.latest_revision;
  const { data } = await api.binary("GET", `/images/${encodeURIComponent(im.id)}/labels/${rev}/dicom-seg`);
  download(new Blob([data], { type: "application/dicom" }), `${im.id}-r${rev}.seg.dcm`);
  document.body.dataset.exported = `dicom-seg:${rev}`;
}));

// --- send to PACS (servers connected to a DICOMweb server) ----------------------------------------

export async function loadPacs(): Promise<void> {
  S.pacs = null;
  if (S.features.sendPacs) {
    try {
      S.pacs = await api.get<{ dicomweb: boolean; url: string | null; ephemeral: boolean }>("/pacs");
    } catch {
      S.pacs = null; // an older or locked-down server: no button
    }
  }
  document.body.dataset.pacs = S.pacs?.dicomweb ? "1" : "0";
  renderSendPacs();
}

/** The revision "Send to PACS" would send: the one shown, else the latest. */
export function sendableRevision(): Revision | null {
  const im = S.image;
  if (!im?.latest_revision) return null;
  const n = S.viewRevision ?? im.latest_revision;
  return S.revisions.find((r) => r.image_id === im.id && r.revision === n) ?? null; // not the previous image's list
}

/** Shown only with a PACS and a DICOM image; disabled, with the reason in words, when it cannot be used. */
export function renderSendPacs(): void {
  const btn = $("#send-pacs") as HTMLButtonElement;
  const status = $("#pacs-status");
  const im = S.image;
  const offered = !!S.pacs?.dicomweb && !!im && isDicom(im);
  btn.hidden = !offered;
  if (!offered) {
    btn.disabled = true;
    status.textContent = "";
    delete btn.dataset.reason;
    return;
  }
  const rev = sendableRevision();
  let reason = "";
  if (!im!.latest_revision) reason = "Save the label as final first: only final labels can be sent to the PACS.";
  else if (!rev) reason = "Loading the revisions…";
  else if (rev.status !== "final") reason = `Revision ${rev.revision} is a draft. Only final labels can be sent to the PACS: save it as final first.`;
  else if (!can("reviewer")) reason = "Sending labels to the PACS needs the reviewer role.";
  btn.disabled = !!reason || S.sending;
  btn.textContent = S.sending ? "Sending…" : "Send to PACS";
  btn.dataset.reason = reason;
  btn.title = reason || `Store revision ${rev!.revision} in the PACS as a DICOM segmentation, in this image's study`;
  if (S.sending) return; // the progress line stays until the answer
  const sent = rev ? S.sent.get(`${im!.id}:${rev.revision}`) : undefined;
  if (sent) {
    status.innerHTML = `Revision ${rev!.revision} was sent to the PACS at ${esc(when(sent.at))}. ` +
      `<details class="inline"><summary>Details</summary><code>${esc(sent.sop)}</code></details>`;
  } else {
    status.textContent = reason;
  }
}

$("#send-pacs").addEventListener("click", () => void sendToPacs());

export async function sendToPacs(): Promise<void> {
  const im = S.image;
  const rev = sendableRevision();
  if (!im || !rev || rev.status !== "final" || S.sending) return;
  const key = `${im.id}:${rev.revision}`;
  if (S.sent.has(key) && !window.confirm(`Revision ${rev.revision} was already sent to the PACS. Send it again (the PACS then holds two copies)?`)) return;
  if (editor.dirty) notify("The PACS receives the saved revision, not your unsaved changes.", "info");
  S.sending = true;
  document.body.dataset.sending = "1";
  renderSendPacs();
  $("#pacs-status").textContent = `Sending revision ${rev.revision} to the PACS…`;
  try {
    await guard("Sending to the PACS", async () => {
      const r = await api.post<{ revision: number; sop_instance_uid: string; series_instance_uid: string; study_instance_uid: string; url: string }>(
        `/images/${encodeURIComponent(im.id)}/labels/${rev.revision}/send`);
      S.sent.set(`${im.id}:${r.revision}`, { at: new Date().toISOString(), sop: r.sop_instance_uid });
      document.body.dataset.sent = `${r.revision}:${r.sop_instance_uid}`;
      notify(`Revision ${r.revision} was sent to the PACS. It is stored there as a segmentation in this patient's study.`, "ok",
        `PACS: ${r.url}\nstudy ${r.study_instance_uid}\nsegmentation series ${r.series_instance_uid}\ninstance ${r.sop_instance_uid}`);
    });
  } finally {
    S.sending = false;
    delete document.body.dataset.sending;
    renderSendPacs();
    if (!S.sent.has(key)) $("#pacs-status").textContent = "Not sent. See the message above for what happened.";
  }
}
