// Does the chosen model fit the open image? The model version's training fingerprint (the
// modality, channels, voxel spacing and extent of the images it was trained on, from its
// trained_on list) against the open image; a warning above the viewer when it does not.

import * as api from "./api";
import { $, esc } from "./ui";
import type { ImageRecord } from "./api";
import { S } from "./app";

interface Fingerprint { images: number; modalities: Set<string>; channels: number | null; spacing: number[][]; extent: number[][] }

const cache = new Map<string, Promise<Fingerprint | null>>();

/** A modality code to compare ("MRI" and DICOM's "MR" alike); "" when not known. */
function modality(m: string | null | undefined): string {
  const u = (m ?? "").trim().toUpperCase();
  return u === "MRI" ? "MR" : ["", "UNKNOWN", "OT", "NONE"].includes(u) ? "" : u;
}

/** Axis values in ascending order (images of one dataset may store their axes in another order). */
function sorted(v: number[]): number[] {
  return [...v].sort((a, b) => a - b);
}

function describe(recs: ImageRecord[], channels: number | null): Fingerprint {
  const geo = recs.filter((r) => r.shape?.length >= 3 && r.spacing?.length >= 3);
  return {
    images: recs.length,
    modalities: new Set(recs.map((r) => modality(r.modality)).filter(Boolean)),
    channels,
    spacing: geo.map((r) => sorted(r.spacing.slice(0, 3))),
    extent: geo.map((r) => sorted(r.shape.slice(0, 3).map((n, k) => n * r.spacing[k]))),
  };
}

async function fingerprint(model: string, version: number): Promise<Fingerprint | null> {
  const key = `${model}@${version}`;
  let p = cache.get(key);
  if (!p) {
    p = (async () => {
      const v = S.models.find((m) => m.name === model)?.versions.find((x) => x.version === version);
      const ids = new Set(((v?.trained_on ?? []) as Array<[string, number]>).map((t) => t[0]));
      if (!ids.size) return null;
      const recs: ImageRecord[] = [];
      for (let offset = 0; ; offset += 1000) {
        const page = await api.get<{ items: ImageRecord[]; total: number }>(`/images?offset=${offset}&limit=1000`);
        recs.push(...page.items.filter((r) => ids.has(r.id)));
        if (!page.items.length || offset + page.items.length >= page.total) break;
      }
      const ch = (v?.config as { image_channels?: number } | undefined)?.image_channels ?? null;
      return recs.length ? describe(recs, ch) : null;
    })();
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return p;
}

const mm = (v: number) => (v >= 10 ? v.toFixed(0) : v.toFixed(2));
const range = (vals: number[]) => {
  const lo = Math.min(...vals), hi = Math.max(...vals);
  return lo === hi ? `${mm(lo)}` : `${mm(lo)}–${mm(hi)}`;
};

/** Why the open image does not fit the model's training images (empty: it fits, or unknown). */
export function misfits(fp: Fingerprint, im: ImageRecord): string[] {
  const out: string[] = [];
  const mod = modality(im.modality);
  if (mod && fp.modalities.size && !fp.modalities.has(mod)) out.push(`modality ${mod}, trained on ${[...fp.modalities].join(", ")}`);
  const ch = im.shape.length > 3 ? im.shape[3] : 1;
  if (fp.channels !== null && ch !== fp.channels) out.push(`${ch} channel(s), trained on ${fp.channels}`);
  if (!fp.spacing.length || im.shape.length < 3 || im.spacing.length < 3) return out;
  const sp = sorted(im.spacing.slice(0, 3));
  const ext = sorted(im.shape.slice(0, 3).map((n, k) => n * im.spacing[k]));
  for (let a = 0; a < 3; a++) {
    const s = fp.spacing.map((x) => x[a]);
    if (sp[a] < Math.min(...s) / 2 || sp[a] > Math.max(...s) * 2) {
      out.push(`voxel spacing ${sp.map(mm).join("×")} mm, trained on ${[0, 1, 2].map((k) => range(fp.spacing.map((x) => x[k]))).join("×")} mm`);
      break;
    }
  }
  for (let a = 0; a < 3; a++) {
    const e = fp.extent.map((x) => x[a]);
    if (ext[a] < Math.min(...e) / 3 || ext[a] > Math.max(...e) * 3) {
      out.push(`extent ${ext.map(mm).join("×")} mm, trained on ${[0, 1, 2].map((k) => range(fp.extent.map((x) => x[k]))).join("×")} mm`);
      break;
    }
  }
  return out;
}

let checking = 0;
/** Show or clear the warning for the open image and the chosen model (call after either changes). */
export async function checkFit(): Promise<void> {
  const mine = ++checking;
  const box = $("#fit-warning");
  const im = S.image;
  const m = S.models.find((x) => x.name === S.model);
  const version = m?.current_version ?? null;
  let why: string[] = [];
  if (im && m && version) {
    const fp = await fingerprint(m.name, version).catch(() => null);
    if (mine !== checking) return;
    if (fp) why = misfits(fp, im);
  }
  box.hidden = !why.length;
  box.innerHTML = why.length
    ? `⚠ ${esc(m!.name)} v${version} was trained on images unlike this one (${why.map(esc).join("; ")}): its segmentation and clicks may be poor here.`
    : "";
  document.body.dataset.fit = why.length ? "misfit" : "ok";
}
