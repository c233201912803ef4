// Minimal NIfTI-1 reading/writing for label maps: the server's label responses are parsed here
// (fast, no re-upload to NiiVue's loader) and saved labels are written on the image's header.

export interface NiftiHeaderInfo {
  dims: [number, number, number];
  datatype: number;
  voxOffset: number;
  littleEndian: boolean;
  affine: number[][]; // 4x4 voxel -> mm (sform when set, else pixdim/qoffset)
  spacing: [number, number, number];
  raw: Uint8Array; // the first 348 bytes
}

export async function gunzipIfNeeded(buf: ArrayBuffer): Promise<ArrayBuffer> {
  const u8 = new Uint8Array(buf);
  if (u8.length < 2 || u8[0] !== 0x1f || u8[1] !== 0x8b) return buf;
  const stream = new Blob([buf]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).arrayBuffer();
}

export async function gzip(data: Uint8Array): Promise<Blob> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new CompressionStream("gzip"));
  return await new Response(stream).blob();
}

export function parseHeader(raw: ArrayBuffer): NiftiHeaderInfo {
  const dv = new DataView(raw);
  let le = true;
  if (dv.getInt32(0, true) !== 348) {
    if (dv.getInt32(0, false) !== 348) throw new Error("not a NIfTI-1 file");
    le = false;
  }
  const dims: [number, number, number] = [dv.getInt16(42, le), dv.getInt16(44, le), Math.max(1, dv.getInt16(46, le))];
  const datatype = dv.getInt16(70, le);
  const voxOffset = Math.max(352, Math.round(dv.getFloat32(108, le)));
  const pix = [dv.getFloat32(80, le), dv.getFloat32(84, le), dv.getFloat32(88, le)].map((v) => Math.abs(v) || 1);
  const sformCode = dv.getInt16(254, le);
  let affine: number[][];
  if (sformCode > 0) {
    affine = [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => dv.getFloat32(280 + r * 16 + c * 4, le)));
  } else {
    // quaternion (qform) or plain pixdim
    const qformCode = dv.getInt16(252, le);
    if (qformCode > 0) {
      const b = dv.getFloat32(256, le), c = dv.getFloat32(260, le), d = dv.getFloat32(264, le);
      const a = Math.sqrt(Math.max(0, 1 - (b * b + c * c + d * d)));
      const qfac = dv.getFloat32(76, le) < 0 ? -1 : 1;
      const R = [
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
      ];
      const off = [dv.getFloat32(268, le), dv.getFloat32(272, le), dv.getFloat32(276, le)];
      affine = [0, 1, 2].map((r) => [R[r][0] * pix[0], R[r][1] * pix[1], R[r][2] * pix[2] * qfac, off[r]]);
    } else {
      affine = [[pix[0], 0, 0, 0], [0, pix[1], 0, 0], [0, 0, pix[2], 0]];
    }
  }
  affine.push([0, 0, 0, 1]);
  const spacing = [0, 1, 2].map((c) => Math.hypot(affine[0][c], affine[1][c], affine[2][c]) || 1) as [number, number, number];
  return { dims, datatype, voxOffset, littleEndian: le, affine, spacing, raw: new Uint8Array(raw.slice(0, 348)) };
}

/** A label NIfTI (any integer type) → its voxels as Uint8Array in file (i-fastest) order. */
export async function readLabel(buf: ArrayBuffer): Promise<{ header: NiftiHeaderInfo; data: Uint8Array }> {
  const raw = await gunzipIfNeeded(buf);
  const header = parseHeader(raw);
  const n = header.dims[0] * header.dims[1] * header.dims[2];
  const dv = new DataView(raw, header.voxOffset);
  const le = header.littleEndian;
  let data: Uint8Array;
  switch (header.datatype) {
    case 2: // uint8
      data = new Uint8Array(raw, header.voxOffset, n).slice();
      break;
    case 256: // int8
      data = Uint8Array.from(new Int8Array(raw, header.voxOffset, n));
      break;
    case 4: case 512: // int16/uint16
      data = new Uint8Array(n);
      for (let i = 0; i < n; i++) data[i] = dv.getUint16(i * 2, le);
      break;
    case 8: case 768: // int32/uint32
      data = new Uint8Array(n);
      for (let i = 0; i < n; i++) data[i] = dv.getUint32(i * 4, le);
      break;
    case 16: // float32
      data = new Uint8Array(n);
      for (let i = 0; i < n; i++) data[i] = Math.round(dv.getFloat32(i * 4, le));
      break;
    default:
      throw new Error(`label datatype ${header.datatype} is not supported`);
  }
  return { header, data };
}

/** A uint8 NIfTI-1 on the grid of `like` (its header: dims, pixdim, qform, sform copied). */
export function writeLabel(like: NiftiHeaderInfo, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(352 + data.length);
  out.set(like.raw, 0);
  const dv = new DataView(out.buffer);
  const le = like.littleEndian;
  dv.setInt16(40, 3, le); // dim[0]
  dv.setInt16(48, 1, le); // dim[4]
  dv.setInt16(50, 1, le);
  dv.setInt16(52, 1, le);
  dv.setInt16(54, 1, le);
  dv.setInt16(70, 2, le); // DT_UINT8
  dv.setInt16(72, 8, le); // bitpix
  dv.setFloat32(108, 352, le); // vox_offset
  dv.setFloat32(112, 1, le); // scl_slope
  dv.setFloat32(116, 0, le); // scl_inter
  dv.setFloat32(124, 0, le); // cal_max
  dv.setFloat32(128, 0, le); // cal_min
  dv.setUint8(123, 0); // xyzt_units keep; slice_code 0
  // intent_code 0, description left as is; 4 extension bytes stay zero
  out.set(data, 352);
  return out;
}

export function invert4(m: number[][]): number[][] {
  // general 4x4 inverse (Gauss-Jordan)
  const a = m.map((r, i) => [...r, ...[0, 1, 2, 3].map((j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c] || 1e-12;
    for (let j = 0; j < 8; j++) a[c][j] /= d;
    for (let r = 0; r < 4; r++) {
      if (r === c) continue;
      const f = a[r][c];
      for (let j = 0; j < 8; j++) a[r][j] -= f * a[c][j];
    }
  }
  return a.map((r) => r.slice(4));
}
