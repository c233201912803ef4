"""Pure conversions between MONAI Label's request/response shapes and segloop's objects.

No HTTP and no store here: parsing the ``params`` of ``/infer`` into `Click` objects, encoding a
label map as the file a client asked for, reading a label file a client uploaded, and building
the ``multipart/form-data`` response MONAI Label's clients parse.
"""

from __future__ import annotations

import json
import math
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segloop.imaging.volume import Volume
from segloop.ml.clicks import Click, check_point
from segloop.store.records import LabelSchema

RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
MEDIA_TYPES = {".nii.gz": "application/gzip", ".nii": "application/octet-stream",
               ".nrrd": "application/octet-stream", ".seg.nrrd": "application/octet-stream"}
# Keys of /infer params that are never class names (MONAI Label's own request vocabulary).
RESERVED_KEYS = frozenset({
    "foreground", "background", "label", "labels", "result_extension", "result_dtype", "result_compress",
    "restore_label_idx", "client_id", "device", "label_info", "roi", "sidx", "largest_cc", "points",
    "point_labels", "label_prompt", "model", "version", "image", "session", "cache_transforms",
})


class ParamsError(ValueError):
    """A request parameter that cannot be honoured (HTTP 422); the message names it."""


def parse_params(text: str | None) -> dict[str, Any]:
    """The ``params`` form field (a JSON object; empty → ``{}``)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"params is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamsError(f"params must be a JSON object, got {type(value).__name__}")
    return value


def _points(value: Any, what: str, shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """A list of IJK points; numbers are rounded to the nearest voxel index (clients send
    ``round()``-ed floats); each must lie inside ``shape``."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ParamsError(f"{what} must be a list of [i, j, k] voxel indices")
    out = []
    for p in value:
        if not isinstance(p, (list, tuple)) or len(p) < 3:
            raise ParamsError(f"{what}: point {p!r} is not [i, j, k]")
        try:
            ijk = [float(v) for v in p[:3]]
        except (TypeError, ValueError):
            raise ParamsError(f"{what}: point {p!r} is not numeric") from None
        if not all(math.isfinite(v) for v in ijk):
            raise ParamsError(f"{what}: point {p!r} is not finite")
        try:
            out.append(check_point([int(round(v)) for v in ijk], shape))
        except ValueError as exc:
            raise ParamsError(f"{what}: {exc}") from None
    return out


def class_value(name: Any, schema: LabelSchema) -> int:
    """Schema value of a class given by name (case-insensitive) or value; ParamsError otherwise."""
    if isinstance(name, bool):
        raise ParamsError(f"unknown label {name!r}")
    if isinstance(name, int) and name in schema.values:
        return name
    if isinstance(name, str):
        try:
            return schema.by_name(name.strip()).value
        except KeyError:
            pass
    known = ", ".join(c.name for c in schema.foreground)
    raise ParamsError(f"unknown label {name!r} (this server's labels: {known})")


@dataclass
class ClickRequest:
    """The clicks of one ``/infer`` request and the label it is about (None: all classes)."""

    clicks: list[Click]
    label: int | None


def parse_clicks(params: Mapping[str, Any], schema: LabelSchema, shape: Sequence[int]) -> ClickRequest:
    """Clicks from MONAI Label's ``/infer`` params, all as IJK voxel indices of the image:

    - ``foreground`` / ``background`` (DeepGrow shape): positive clicks for ``label`` (a class
      name; optional when the schema has a single foreground class), negative clicks (class 0);
    - ``{"<class name>": [[i, j, k], ...], ...}`` (DeepEdit shape, multi-label): positive clicks
      per class; a ``background`` list is negative clicks.

    Raises:
        ParamsError: unknown class, point outside the volume, malformed point.
    """
    label: int | None = None
    raw_label = params.get("label")
    if raw_label not in (None, "", []):
        label = class_value(raw_label, schema)
        if label == 0:
            label = None
    clicks: list[Click] = []
    fg = _points(params.get("foreground"), "foreground", shape)
    if fg:
        value = label
        if value is None:
            fgc = schema.foreground
            if len(fgc) != 1:
                names = ", ".join(c.name for c in fgc)
                raise ParamsError(f"foreground points need 'label' naming the class they belong to (one of: {names})")
            value = fgc[0].value
        clicks += [Click(value, p) for p in fg]
    for key, value in params.items():
        if key in RESERVED_KEYS or not isinstance(value, (list, tuple)) or not value:
            continue
        try:
            v = schema.by_name(str(key)).value
        except KeyError:
            continue  # other clients' options (e.g. per-model config lists) are not click lists
        clicks += [Click(v, p) for p in _points(value, str(key), shape)]
    clicks += [Click(0, p) for p in _points(params.get("background"), "background", shape)]
    return ClickRequest(clicks, label)


def result_format(params: Mapping[str, Any]) -> tuple[str, str, bool]:
    """``(extension, dtype, compress)`` asked for by ``result_extension`` / ``result_dtype`` /
    ``result_compress`` (defaults ``.nii.gz``, ``uint8``, compressed)."""
    ext = str(params.get("result_extension") or ".nii.gz").strip().lower()
    if not ext.startswith("."):
        ext = "." + ext
    if ext not in RESULT_EXTENSIONS:
        raise ParamsError(f"result_extension {ext!r} is not supported (use one of {', '.join(RESULT_EXTENSIONS)})")
    dtype = str(params.get("result_dtype") or "uint8").strip().lower()
    if dtype not in RESULT_DTYPES:
        raise ParamsError(f"result_dtype {dtype!r} is not supported (use one of {', '.join(RESULT_DTYPES)})")
    compress = params.get("result_compress", True)
    compress = not (compress is False or str(compress).strip().lower() in ("false", "0", "no"))
    if ext == ".nii.gz" and not compress:
        ext = ".nii"
    return ext, dtype, bool(compress)


def encode_label(label: Volume, ext: str, dtype: str, schema: LabelSchema, compress: bool = True) -> bytes:
    """The label map as a file of the requested format (geometry from the volume's affine).

    NRRD is written in LPS (what 3D Slicer writes), gzip-encoded unless ``compress`` is false
    (OHIF asks for raw); ``.seg.nrrd`` also describes the present classes as Slicer segments
    (names and colours from the schema)."""
    from segloop.imaging.nifti import nifti_bytes
    from segloop.imaging.nrrd import write_nrrd
    from segloop.server.maskcodec import label_nifti_gz

    arr = np.asarray(label.array)
    if ext == ".nii.gz":
        if dtype == "uint8":
            return label_nifti_gz(label)
        return nifti_bytes(label, np.dtype(dtype))
    with tempfile.TemporaryDirectory(prefix="segloop-ml-") as tmp:
        vol = label.with_array(arr.astype(np.dtype(dtype), copy=False))
        if ext == ".nii":
            import nibabel as nib

            img = nib.Nifti1Image(vol.array, vol.affine)
            img.header.set_qform(vol.affine, code=1)
            img.header.set_sform(vol.affine, code=1)
            return bytes(img.to_bytes())
        path = Path(tmp) / f"label{ext}"
        segments = None
        if ext == ".seg.nrrd":
            if not np.issubdtype(vol.array.dtype, np.integer):
                vol = vol.with_array(arr.astype(np.uint8))
            segments = [(c.value, c.name, c.color) for c in schema.foreground]
            present = {int(v) for v in np.unique(vol.array)} - {0}
            known = {s[0] for s in segments}
            segments += [(v, f"label_{v}", (128, 128, 128)) for v in sorted(present - known)]
        write_nrrd(vol, path, segments=segments)
        if not compress:
            import nrrd

            voxels, header = nrrd.read(str(path))
            header["encoding"] = "raw"
            raw = Path(tmp) / f"raw{ext}"
            nrrd.write(str(raw), voxels, header)
            return raw.read_bytes()
        return path.read_bytes()


def result_filename(stem: str, ext: str) -> str:
    """A unique, path-free file name: MONAI Label's client saves the part under this name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80].strip("._") or "label"
    return f"{safe}-{secrets.token_hex(4)}{ext}"


def multipart(params: Mapping[str, Any], filename: str, data: bytes, media_type: str) -> tuple[bytes, str]:
    """``multipart/form-data`` with a ``params`` JSON part and an ``image`` file part (what
    MONAI Label's ``/infer`` answers by default). Returns ``(body, content_type)``."""
    boundary = "segloop-" + secrets.token_hex(16)
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="params"\r\n'
        "Content-Type: application/json\r\n\r\n"
        f"{json.dumps(params, default=str)}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def read_label_file(path: Path, original_name: str, image_shape: Sequence[int]) -> Volume | np.ndarray:
    """An uploaded label: NIfTI, NRRD (``.seg.nrrd`` segments merged), or OHIF's ``.bin`` (raw
    uint8 voxels of the image, first index fastest — the viewer's own buffer order, which is
    segloop's stored order; returned as an array without geometry)."""
    from segloop.imaging.nifti import read_nifti
    from segloop.imaging.nrrd import read_nrrd

    name = original_name.lower()
    if name.endswith(".bin"):
        raw = np.fromfile(path, dtype=np.uint8)
        n = int(np.prod(image_shape))
        if raw.size != n:
            raise ParamsError(f"binary label has {raw.size} voxels, the image has {n} {tuple(image_shape)}")
        return raw.reshape(tuple(int(s) for s in image_shape), order="F")
    if name.endswith((".nrrd", ".nhdr")):
        return read_nrrd(path)
    return read_nifti(path)


def remap_label_info(arr: np.ndarray, label_info: Any, schema: LabelSchema) -> np.ndarray:
    """Slicer exports segments as values 1..N and sends ``label_info`` = ``[{"name", "idx"}]``:
    map each ``idx`` to the schema value of ``name``. Applied only when every non-zero value in
    the map is one of the given ``idx`` (otherwise the values are taken as schema values)."""
    if not isinstance(label_info, list) or not label_info:
        return arr
    mapping: dict[int, int] = {}
    for item in label_info:
        if not isinstance(item, dict) or "name" not in item:
            return arr
        idx = item.get("idx", item.get("id"))
        if isinstance(idx, bool) or not isinstance(idx, int):
            return arr
        if str(item["name"]).lower() == "background":
            continue
        mapping[idx] = class_value(str(item["name"]), schema)
    present = {int(v) for v in np.unique(arr)} - {0}
    if not present or not present <= set(mapping):
        return arr
    lut = np.zeros(max(max(present), max(mapping)) + 1, dtype=np.uint16)
    for idx, value in mapping.items():
        lut[idx] = value
    out = lut[arr.astype(np.int64)]
    return out.astype(np.uint8 if out.max(initial=0) <= 255 else np.uint16)
