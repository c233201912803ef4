// The /api/v1 client: JSON and binary requests, errors turned into plain words with the
// server's detail kept for the "details" disclosure, upload progress, live events.

export const API = "api/v1";

export interface LabelClass { value: number; name: string; color: [number, number, number] }
export interface Schema { classes: LabelClass[] }
export interface ImageRecord {
  id: string; name: string; modality: string | null; shape: number[]; spacing: number[];
  label_state: "none" | "draft" | "final"; latest_revision: number | null; latest_author: string | null;
  created_at: string; source: string; metadata?: Record<string, unknown>;
}
export interface Revision {
  image_id: string; revision: number; parent: number | null; author: string; source: string;
  status: "draft" | "final"; created_at: string; voxel_counts?: Record<string, number>;
}
export interface ModelVersion { version: number; created_at: string; metrics: Record<string, unknown>; [k: string]: unknown }
export interface ModelRecord {
  name: string; current_version: number | null; versions: ModelVersion[]; training_job: string | null;
  [k: string]: unknown;
}
export interface Job {
  id: string; kind: string; params: Record<string, unknown>; state: string; progress: number | null;
  message: string; detail: Record<string, unknown> | null; result: Record<string, unknown> | null;
  error: string | null; owner: string; created_at: string; finished_at: string | null;
  metrics?: Array<Record<string, unknown>>;
}
export interface Evaluation {
  id: string; kind: string; params: Record<string, unknown>; result: Record<string, any>;
  created_at: string; author: string; discrepancy_url: string | null;
}
export interface LiveEvent { type: string; seq: number; time?: string; data: Record<string, any> }

/** An error from the server (or the network) in words a clinician understands. */
export class ApiError extends Error {
  constructor(
    public readonly status: number,
    public readonly code: string,
    public readonly plain: string,
    public readonly detail: string,
    public readonly body: Record<string, any> | null = null,
  ) {
    super(plain);
  }
}

const PLAIN: Record<string, string> = {
  stale_revision: "Someone else saved a newer label for this image while you were working.",
  busy: "The server is busy with other requests. Please try again in a moment.",
  unauthorized: "Please sign in again.",
  forbidden: "Your account is not allowed to do this.",
  not_found: "This item no longer exists on the server (it may have been deleted or expired).",
  invalid_upload: "The file could not be imported.",
  invalid_image: "The file is not a readable image.",
  geometry_mismatch: "The label does not fit the image (different size or position).",
  job_conflict: "A training job for this model is already running.",
  too_large: "The file is larger than the server accepts.",
  internal_error: "Something went wrong on the server.",
  no_reference: "There is no final label to compare with. Choose a reference revision.",
  invalid_clicks: "That click could not be used.",
  no_previous_version: "There is no earlier model version to go back to.",
  nothing_to_redo: "There is nothing to redo.",
  invalid_label: "The label could not be used by the model session.",
  not_dicom: "This image was not imported from DICOM, so it cannot be exported as DICOM SEG. Export NIfTI instead.",
  not_final: "Only final labels can be sent to the PACS. Save the label as final first (reviewer role).",
  pacs_error: "The PACS did not accept the label, or cannot be reached. Nothing was stored there; try again later, or ask your PACS administrator.",
  no_dicomweb: "This server is not connected to a PACS.",
  unsent_labels: "This image holds a label that was not sent to the PACS yet, so its local copy was kept.",
  scoring_failed: "Ranking the images with this model failed a moment ago. Try again in a minute, or choose another queue.",
  strategy_unavailable: "This ranking cannot be used with the chosen model.",
};

function plainFor(status: number, code: string, message: string): string {
  if (code in PLAIN) {
    // upload problems name the file and reason; they are already readable
    if (code === "invalid_upload" || code === "invalid_image") return `${PLAIN[code]} ${message}`;
    return PLAIN[code];
  }
  if (status === 422) return `The request was not accepted: ${message}`;
  if (status >= 500) return PLAIN.internal_error;
  return message || `Request failed (${status}).`;
}

let token: string | null = sessionStorage.getItem("segloop.token");
export function setToken(t: string | null): void {
  token = t;
  if (t) sessionStorage.setItem("segloop.token", t);
  else sessionStorage.removeItem("segloop.token");
}
export function authHeaders(): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}
export function getToken(): string | null {
  return token;
}

async function toError(res: Response, what: string): Promise<ApiError> {
  let body: Record<string, any> | null = null;
  let text = "";
  try {
    text = await res.text();
    body = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  const err = body?.error ?? {};
  const code: string = err.code ?? (res.status === 429 ? "busy" : "error");
  const message: string = err.message ?? (text.slice(0, 300) || res.statusText);
  const detail = `${what}\nHTTP ${res.status} ${res.statusText}\n${body ? JSON.stringify(body, null, 2) : text.slice(0, 2000)}`;
  return new ApiError(res.status, code, plainFor(res.status, code, message), detail, err);
}

export type Listener401 = () => void;
let on401: Listener401 | null = null;
export function onUnauthorized(fn: Listener401): void {
  on401 = fn;
}

export async function request(method: string, path: string, body?: unknown, init: RequestInit = {}): Promise<Response> {
  const headers: Record<string, string> = { ...authHeaders(), ...(init.headers as Record<string, string> | undefined) };
  let payload: BodyInit | undefined;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const what = `${method} /${API}${path}`;
  let res: Response;
  try {
    res = await fetch(`${API}${path}`, { ...init, method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached. Check that segloop is running.", `${what}\n${String(e)}`);
  }
  if (!res.ok) {
    if (res.status === 401 && on401) on401();
    throw await toError(res, what);
  }
  return res;
}

export async function json<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await request(method, path, body);
  return (await res.json()) as T;
}
export const get = <T>(path: string) => json<T>("GET", path);
export const post = <T>(path: string, body?: unknown) => json<T>("POST", path, body ?? {});

export async function binary(method: string, path: string, body?: unknown): Promise<{ data: ArrayBuffer; headers: Headers }> {
  const res = await request(method, path, body);
  return { data: await res.arrayBuffer(), headers: res.headers };
}

/** Multipart upload with progress (fetch has no upload progress; XMLHttpRequest does). */
export function upload(path: string, form: FormData, onProgress: (fraction: number) => void): Promise<any> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}${path}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      let body: any = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* ignore */
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      const err = body?.error ?? {};
      const code = err.code ?? "error";
      const msg = err.message ?? xhr.statusText;
      reject(new ApiError(xhr.status, code, plainFor(xhr.status, code, msg),
        `POST /${API}${path}\nHTTP ${xhr.status}\n${body ? JSON.stringify(body, null, 2) : xhr.responseText.slice(0, 2000)}`, err));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "The upload was interrupted (server unreachable).", `POST /${API}${path}`));
    xhr.send(form);
  });
}

/** Live events over the WebSocket, reconnecting with back-off. */
export function connectEvents(onEvent: (e: LiveEvent) => void, onStatus: (up: boolean) => void): void {
  let delay = 500;
  const open = () => {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const base = new URL(`${API}/events/ws`, location.href);
    base.protocol = proto;
    if (token) base.searchParams.set("access_token", token);
    const ws = new WebSocket(base.toString());
    ws.onopen = () => {
      delay = 500;
      onStatus(true);
    };
    ws.onmessage = (m) => {
      try {
        onEvent(JSON.parse(String(m.data)) as LiveEvent);
      } catch {
        /* ignore malformed */
      }
    };
    ws.onclose = () => {
      onStatus(false);
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  open();
}
