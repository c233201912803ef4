// Slice interpolation: label a class on a few slices, and the slices between them are filled by
// shape-based interpolation (each labelled slice's signed distance map, moved along with the
// shapes' centres and blended linearly between the two nearest labelled slices; a voxel is in
// where the blend is negative). Only unlabelled voxels are filled; the result is one undo step.

import { $, notify } from "./ui";
import { S, viewer, editor, className } from "./app";
import { lastTile } from "./tools";

/** Distance (mm, chamfer) from each pixel of a slice to the nearest pixel where `inSet` is 1. */
function distanceTo(inSet: Uint8Array, nu: number, nv: number, wu: number, wv: number): Float32Array {
  const d = new Float32Array(nu * nv);
  const wd = Math.hypot(wu, wv);
  for (let i = 0; i < d.length; i++) d[i] = inSet[i] ? 0 : 1e9;
  for (let b = 0; b < nv; b++) {
    for (let a = 0; a < nu; a++) {
      const i = a + nu * b;
      let m = d[i];
      if (a > 0) m = Math.min(m, d[i - 1] + wu);
      if (b > 0) {
        m = Math.min(m, d[i - nu] + wv);
        if (a > 0) m = Math.min(m, d[i - nu - 1] + wd);
        if (a < nu - 1) m = Math.min(m, d[i - nu + 1] + wd);
      }
      d[i] = m;
    }
  }
  for (let b = nv - 1; b >= 0; b--) {
    for (let a = nu - 1; a >= 0; a--) {
      const i = a + nu * b;
      let m = d[i];
      if (a < nu - 1) m = Math.min(m, d[i + 1] + wu);
      if (b < nv - 1) {
        m = Math.min(m, d[i + nu] + wv);
        if (a < nu - 1) m = Math.min(m, d[i + nu + 1] + wd);
        if (a > 0) m = Math.min(m, d[i + nu - 1] + wd);
      }
      d[i] = m;
    }
  }
  return d;
}

/** The centre of a slice's mask (pixels). */
function centroid(m: Uint8Array, nu: number): number[] {
  let n = 0, sa = 0, sb = 0;
  for (let i = 0; i < m.length; i++) {
    if (!m[i]) continue;
    n++;
    sa += i % nu;
    sb += Math.floor(i / nu);
  }
  return n ? [sa / n, sb / n] : [0, 0];
}

/**
 * The voxels (file-order indices) to set to `value` so that the slices normal to `axis` between
 * any two slices holding `value` hold an interpolated shape. `label`: file order, dims [nx, ny, nz].
 */
export function interpolatedVoxels(label: Uint8Array, dims: number[], spacing: number[], axis: number, value: number): number[] {
  const stride = [1, dims[0], dims[0] * dims[1]];
  const [u, v] = [0, 1, 2].filter((a) => a !== axis);
  const nu = dims[u], nv = dims[v], ns = dims[axis];
  const at = (s: number, a: number, b: number) => s * stride[axis] + a * stride[u] + b * stride[v];
  const slice = (s: number): Uint8Array => {
    const m = new Uint8Array(nu * nv);
    for (let b = 0; b < nv; b++) for (let a = 0; a < nu; a++) m[a + nu * b] = label[at(s, a, b)] === value ? 1 : 0;
    return m;
  };
  const signed = (m: Uint8Array): Float32Array => {
    const outside = m.map((x) => 1 - x);
    const toIn = distanceTo(m, nu, nv, spacing[u], spacing[v]);
    const toOut = distanceTo(outside, nu, nv, spacing[u], spacing[v]);
    return toIn.map((d, i) => (m[i] ? -toOut[i] : d));
  };
  const labelled: number[] = [];
  for (let s = 0; s < ns; s++) if (slice(s).some((x) => x)) labelled.push(s);
  const out: number[] = [];
  for (let k = 1; k < labelled.length; k++) {
    const s0 = labelled[k - 1], s1 = labelled[k];
    if (s1 - s0 < 2) continue;
    const m0 = slice(s0), m1 = slice(s1);
    const d0 = signed(m0), d1 = signed(m1);
    const c0 = centroid(m0, nu), c1 = centroid(m1, nu);
    // sampled at the pixel shifted by the centroids' travel, so shapes that move between the two
    // slices (not overlapping) do not shrink to nothing half-way
    const sample = (d: Float32Array, a: number, b: number): number =>
      a < 0 || b < 0 || a >= nu || b >= nv ? 1e9 : d[a + nu * b];
    for (let s = s0 + 1; s < s1; s++) {
      const t = (s - s0) / (s1 - s0);
      const c = [(1 - t) * c0[0] + t * c1[0], (1 - t) * c0[1] + t * c1[1]];
      const o0 = [Math.round(c[0] - c0[0]), Math.round(c[1] - c0[1])];
      const o1 = [Math.round(c[0] - c1[0]), Math.round(c[1] - c1[1])];
      for (let b = 0; b < nv; b++) {
        for (let a = 0; a < nu; a++) {
          const blend = (1 - t) * sample(d0, a - o0[0], b - o0[1]) + t * sample(d1, a - o1[0], b - o1[1]);
          if (blend >= 0) continue;
          const i = at(s, a, b);
          if (label[i] === 0) out.push(i);
        }
      }
    }
  }
  return out;
}

/** Interpolate the chosen class along the normal of the view under the mouse (key I). */
export function interpolateNow(): void {
  if (!viewer.header) return;
  const axis = viewer.normalAxis(lastTile());
  const idx = interpolatedVoxels(editor.current(), viewer.dims, viewer.header.spacing, axis, S.classValue);
  if (!idx.length) {
    notify(`Nothing to interpolate: label ${className(S.classValue)} on two slices with unlabelled slices between them first.`, "info");
    return;
  }
  editor.apply(idx, S.classValue);
  document.body.dataset.interpolated = String(idx.length);
}

$("#interp").addEventListener("click", interpolateNow);
