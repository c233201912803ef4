// Upload by drag and drop or file choosers, one progress row per file or folder.

import * as api from "./api";
import { $, $input, esc, notify, showError } from "./ui";
import { can } from "./app";
import { loadWorklist } from "./worklist";

export interface UploadUnit { name: string; files: File[] }

export async function unitsFromDrop(dt: DataTransfer): Promise<UploadUnit[]> {
  const units: UploadUnit[] = [];
  const entries = Array.from(dt.items).map((it) => it.webkitGetAsEntry?.()).filter((x): x is FileSystemEntry => !!x);
  if (!entries.length) return Array.from(dt.files).map((f) => ({ name: f.name, files: [f] }));
  const readAll = async (dir: FileSystemDirectoryEntry): Promise<File[]> => {
    const out: File[] = [];
    const walk = async (d: FileSystemDirectoryEntry): Promise<void> => {
      const reader = d.createReader();
      for (;;) {
        const batch = await new Promise<FileSystemEntry[]>((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) {
          if (e.isDirectory) await walk(e as FileSystemDirectoryEntry);
          else out.push(await new Promise<File>((res, rej) => (e as FileSystemFileEntry).file(res, rej)));
        }
      }
    };
    await walk(dir);
    return out;
  };
  for (const e of entries) {
    if (e.isDirectory) units.push({ name: `${e.name}/`, files: await readAll(e as FileSystemDirectoryEntry) });
    else units.push({ name: e.name, files: [await new Promise<File>((res, rej) => (e as FileSystemFileEntry).file(res, rej))] });
  }
  return units;
}

export async function uploadUnits(units: UploadUnit[]): Promise<void> {
  if (!can("reviewer")) {
    notify("Uploading images needs the reviewer role; ask an administrator.", "error");
    return;
  }
  const list = $("#uploads");
  let added = 0;
  for (const u of units) {
    const row = document.createElement("div");
    row.className = "upload";
    row.innerHTML = `<div class="uname" title="${esc(u.name)}">${esc(u.name)} <small>(${u.files.length} file${u.files.length > 1 ? "s" : ""})</small></div>
      <progress max="1" value="0"></progress><div class="ustate">waiting</div>`;
    list.prepend(row);
    const bar = row.querySelector("progress")!;
    const st = row.querySelector(".ustate") as HTMLElement;
    const form = new FormData();
    for (const f of u.files) form.append("file", f, (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name);
    try {
      st.textContent = "uploading";
      const res = await api.upload("/images", form, (p) => {
        bar.value = p;
        if (p >= 1) st.textContent = "checking on the server…";
      });
      bar.value = 1;
      const n = (res?.images ?? []).length;
      added += n;
      const skipped = (res?.skipped ?? []) as Array<{ file: string; reason: string }>;
      st.className = "ustate ok";
      st.textContent = `added ${n} image${n === 1 ? "" : "s"}` + (skipped.length ? `; ${skipped.length} file(s) skipped` : "");
      if (skipped.length) st.title = skipped.map((s) => `${s.file}: ${s.reason}`).join("\n");
    } catch (e) {
      st.className = "ustate err";
      const err = e as api.ApiError;
      st.innerHTML = `${esc(err.plain ?? String(e))} <button class="link">Details</button><pre hidden>${esc(err.detail ?? "")}</pre>`;
      st.querySelector("button")!.addEventListener("click", () => {
        const pre = st.querySelector("pre")!;
        pre.hidden = !pre.hidden;
      });
    }
  }
  if (added) await loadWorklist();
}

export const drop = $("#left");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("dragging");
  if (!e.dataTransfer) return;
  void unitsFromDrop(e.dataTransfer).then(uploadUnits).catch((err) => showError(err, "Upload"));
});
$input("#file-input").addEventListener("change", () => {
  const files = Array.from($input("#file-input").files ?? []);
  $input("#file-input").value = "";
  void uploadUnits(files.map((f) => ({ name: f.name, files: [f] })));
});
$input("#folder-input").addEventListener("change", () => {
  const files = Array.from($input("#folder-input").files ?? []);
  $input("#folder-input").value = "";
  if (files.length) void uploadUnits([{ name: `${files[0].webkitRelativePath.split("/")[0]}/`, files }]);
});
