// Live events from the server (jobs, models, labels, images, schema).

import * as api from "./api";
import { notify } from "./ui";
import type { Job, Schema } from "./api";
import { S, viewer, editor, labelLut } from "./app";
import { loadWorklist, onScoringState } from "./worklist";
import { loadRevisions } from "./image";
import { updateOverlay } from "./overlays";
import { renderClasses } from "./tools";
import { renderSendPacs } from "./export";
import { loadModels, loadJobs, watchJob, renderJobs, renderChart } from "./models";
import { loadEvaluations } from "./evaluation";
import { loadDatasetEvaluations, onEvaluateJobDone } from "./dataset_eval";

let refreshTimer = 0;
export function soon(fn: () => Promise<void>, ms = 400): void {
  clearTimeout(refreshTimer);
  refreshTimer = window.setTimeout(() => void fn().catch(() => undefined), ms);
}
export function onEvent(ev: api.LiveEvent): void {
  const d = ev.data ?? {};
  switch (ev.type) {
    case "job.progress": {
      if (d.job_id === S.scoringJob) onScoringState({ id: d.job_id, state: "running", progress: d.progress ?? 0, message: d.message ?? "" });
      const j = S.jobs.find((x) => x.id === d.job_id);
      if (j) {
        j.progress = d.progress ?? j.progress;
        j.message = d.message ?? j.message;
        j.state = "running";
        renderJobs();
      } else soon(loadJobs);
      break;
    }
    case "job.metrics":
      if (d.job_id === S.watchedJob) {
        S.jobMetrics.push(d);
        renderChart();
      }
      break;
    case "job.state": {
      if (d.id === S.scoringJob) onScoringState(d as Job);
      const i = S.jobs.findIndex((x) => x.id === d.id);
      if (i >= 0) S.jobs[i] = { ...S.jobs[i], ...(d as Job) };
      else S.jobs.unshift(d as Job);
      renderJobs();
      if (d.kind === "train" && d.state === "running" && !S.jobs.some((x) => x.id === S.watchedJob && (x.state === "running" || x.state === "queued"))) watchJob(d.id, []);
      if (["done", "failed", "cancelled"].includes(d.state)) void loadModels().catch(() => undefined);
      if (d.kind === "evaluate" && d.state === "done") onEvaluateJobDone(d as Job);
      break;
    }
    case "model.version":
      // a shown prediction follows the model's current version
      void loadModels().then(() => updateOverlay("prediction")).catch(() => undefined);
      break;
    case "label.revision":
      if (S.image && d.image_id === S.image.id) {
        void loadRevisions().catch(() => undefined);
        if (d.revision > (S.baseRevision ?? 0) && d.author !== S.me.name && editor.dirty) {
          notify(`${d.author} saved revision ${d.revision} of this image. Saving now will ask how to resolve it.`, "info");
        }
      }
      soon(loadWorklist);
      break;
    case "image.added":
    case "image.deleted":
      soon(loadWorklist);
      break;
    case "label.sent":
      S.sent.set(`${d.image_id}:${d.revision}`, { at: ev.time ?? new Date().toISOString(), sop: String(d.sop_instance_uid ?? "") });
      if (S.image && d.image_id === S.image.id && !S.sending) renderSendPacs();
      break;
    case "schema.changed":
      S.schema = d as Schema;
      renderClasses();
      viewer.setLabelColors(labelLut());
      break;
    case "evaluation":
      if (S.image && d.image_id === S.image.id) void loadEvaluations().catch(() => undefined);
      if (!d.image_id) void loadDatasetEvaluations().catch(() => undefined); // a whole-dataset one
      break;
  }
}
