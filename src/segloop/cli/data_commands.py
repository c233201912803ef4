"""Data commands: ``import``, ``images``, ``export``, ``demo``."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

import segloop
from segloop.cli.common import CommandError, add_data_arg, open_store, print_json
from segloop.imaging.nifti import write_nifti


def _fmt_spacing(spacing: tuple[float, ...] | list[float]) -> str:
    return "×".join(f"{s:.3g}" for s in spacing)


def _fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "×".join(str(s) for s in shape)


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def _progress_bar(quiet: bool) -> tuple[Any, Any]:
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet or total < 20:
            return
        bar = bars.get(stage)
        if bar is None:
            desc = {"read": "reading", "store": "storing"}.get(stage, stage)
            bar = bars[stage] = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def cmd_import(args: argparse.Namespace) -> int:
    from segloop.store.ingest import IngestError, import_paths

    store = open_store(args.data, must_exist=False)
    progress, close = _progress_bar(args.json)
    try:
        report = import_paths(
            store,
            args.paths,
            labels_dir=args.labels,
            author=args.author,
            draft=args.draft,
            modality=args.modality,
            progress=progress,
            deidentify=args.deidentify,
            deid_map=args.deid_map,
        )
    except IngestError as exc:
        close()
        for line in exc.problems:
            print(f"segloop import: error: {line}", file=sys.stderr)
        print(f"segloop import: nothing was imported ({len(exc.problems)} problem(s))", file=sys.stderr)
        return 2
    close()
    from segloop.imaging.dicom_header import SEG_REASON

    segs = [Path(path) for path, reason in report.skipped if reason == SEG_REASON]
    for path, reason in report.skipped:
        if reason != SEG_REASON:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    seg_revisions, seg_failures = _import_segs(store, segs, args)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    items = [(item.record, item.revision) for item in report.images]
    for image_id, (record, revision) in seg_revisions.items():
        at = next((n for n, (r, _) in enumerate(items) if r.id == image_id), None)
        if at is None:
            items.append((record, revision))  # a SEG of an image imported earlier
        else:
            items[at] = (record, revision)
    code = 2 if seg_failures else 0
    if args.json:
        print_json([{**rec.to_dict(), "revision": rev.to_dict() if rev else None} for rec, rev in items])
        return code
    for rec, rev in items:
        label = f"  label r{rev.revision} ({rev.status}, {rev.source})" if rev else ""
        print(
            f"{rec.id}  {_fmt_shape(rec.shape)}  {_fmt_spacing(rec.spacing)} mm  {rec.modality or '-'}{label}"
        )
    n_labels = sum(1 for i in report.images if i.revision) + len(seg_revisions)
    print(f"imported {len(report.images)} image(s), {n_labels} label revision(s) into {args.data}", file=sys.stderr)
    return code


def _import_segs(store: Any, segs: list[Path], args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """DICOM SEGs found among the inputs become label revisions of the series they reference
    (as ``segloop import-seg`` does), after the images are in. With ``--deidentify`` each SEG
    is de-identified with the images' UID map first (``--deid-map``; without one the new UIDs
    are unknown and the SEGs are not imported). Returns ``{image id: (record,
    revision)}`` and how many SEGs failed: each is named with its reason; the images and the
    other SEGs stay imported."""
    from segloop.imaging.errors import ImagingError
    from segloop.store.errors import NotFoundError, ValidationError
    from segloop.store.seg_import import import_dicom_seg

    done: dict[str, Any] = {}
    failed = 0
    # a store without classes before these SEGs takes their segments as its schema (all of them:
    # several SEGs of one import extend it); an existing schema must fit (import-seg --extend-schema)
    extend = not store.get_schema().foreground
    tmp = Path(tempfile.mkdtemp(prefix="seg-", dir=store.staging_dir())) if segs and args.deidentify else None
    try:
        for path in segs:
            try:
                if not path.is_file():  # a member of an archive: extracted to a folder that is gone now
                    raise ImagingError(path, "a SEG inside an archive is not imported by segloop import; "
                                             "extract it and use segloop import-seg")
                source = path if tmp is None else _deidentified_seg(path, args.deid_map, tmp)
                result = import_dicom_seg(store, source, author=args.author, status="draft" if args.draft else "final",
                                          extend_schema=extend)
            except (ImagingError, ValidationError, NotFoundError) as exc:
                failed += 1
                print(f"segloop import: error: {path}: SEG not imported: {exc} "
                      f"(fix it, then: segloop import-seg {path})", file=sys.stderr)
                continue
            rev = result.revision
            done[result.image.id] = (result.image, rev)
            print(f"{path}: label r{rev.revision} ({rev.status}) of {result.image.id}", file=sys.stderr)
            _print_overlaps(result, path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return done, failed


def _deidentified_seg(path: Path, deid_map: Path | None, folder: Path) -> Path:
    """A copy of the SEG in ``folder`` de-identified with the same UID map as the images of this
    import (``deid_map``), so that its references point at their new UIDs."""
    import json

    import pydicom

    from segloop.imaging.deidentify import Deidentifier
    from segloop.imaging.errors import ImagingError

    if deid_map is None or not Path(deid_map).is_file():
        raise ImagingError(path, "with --deidentify the images get new UIDs, and the SEG can only be matched "
                                 "to its series through the de-identification map: give --deid-map FILE")
    ds = pydicom.dcmread(path)
    Deidentifier(json.loads(Path(deid_map).read_text())).apply(ds, where=str(path))
    out = folder / path.name
    ds.save_as(out, enforce_file_format=True)
    return out


def _print_overlaps(result: Any, path: Path | None = None) -> None:
    """Say exactly what flattening the SEG's overlapping segments into one label map dropped."""
    if result.overlap_voxels:
        where = f"{path}: " if path else ""
        print(f"note: {where}{result.overlap_voxels} voxel(s) were in several segments; a label map holds one "
              "class per voxel, so the highest segment number was kept and these were dropped:", file=sys.stderr)
        for line in result.overlap_lines():
            print(f"  {line}", file=sys.stderr)


def cmd_images(args: argparse.Namespace) -> int:
    store = open_store(args.data)
    images = store.list_images(label_state=args.state)
    if args.json:
        print_json([img.to_dict() for img in images])
        return 0
    if not images:
        print("no images")
        return 0
    width = max(len(img.id) for img in images)
    print(f"{'id':<{width}}  {'shape':<12} {'spacing (mm)':<16} {'modality':<8} {'label':<6} {'rev':>4}  author")
    for img in images:
        rev = "-" if img.latest_revision is None else str(img.latest_revision)
        print(
            f"{img.id:<{width}}  {_fmt_shape(img.shape):<12} {_fmt_spacing(img.spacing):<16} "
            f"{img.modality or '-':<8} {img.label_state:<6} {rev:>4}  {img.latest_author or '-'}"
        )
    return 0


def _segments(store: Any) -> list[tuple[int, str, tuple[int, int, int]]]:
    return [(c.value, c.name, tuple(c.color)) for c in store.get_schema().foreground]


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store(args.data)
    record = store.get_image(args.image)
    out: Path = args.output
    if args.format == "dicom-seg":
        return _export_dicom_seg(args, store, record.id, out)
    ext = {"nifti": (".nii", ".nii.gz"), "nrrd": (".nrrd",)}[args.format]
    single = out.name.lower().endswith(ext)
    if single and args.what == "both":
        raise CommandError(f"{out}: one file can hold the image or the label; pass --what image|label, or a folder")

    def write(volume: Any, stem: str, label: bool) -> Path:
        if args.format == "nrrd":
            from segloop.imaging.nrrd import write_nrrd

            path = out if single else out / f"{stem}{'.seg' if label else ''}.nrrd"
            return write_nrrd(volume, path, segments=_segments(store) if label else None)
        return write_nifti(volume, out if single else out / f"{stem}.nii.gz")

    written: list[Path] = []
    if args.what in ("image", "both"):
        written.append(write(store.load_image(record.id), record.id, label=False))
    if args.what in ("label", "both"):
        if record.latest_revision is None:
            raise CommandError(f"image {record.id!r} has no label revision to export")
        rev = store.get_revision(record.id, args.revision)
        written.append(write(store.load_label(record.id, rev.revision), f"{record.id}_label-r{rev.revision}", label=True))
    for path in written:
        print(path)
    return 0


def _export_dicom_seg(args: argparse.Namespace, store: Any, image_id: str, out: Path) -> int:
    from segloop.store.seg_import import export_dicom_seg

    if args.what == "image":
        raise CommandError("--format dicom-seg writes a label; the image stays in its DICOM series")
    rev = store.get_revision(image_id, args.revision)
    path = out if out.suffix.lower() == ".dcm" else out / f"{image_id}_label-r{rev.revision}.seg.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    _, segments = export_dicom_seg(store, image_id, rev.revision, args.source_dicom, path)
    print(path)
    print(f"{len(segments)} segment(s): " + ", ".join(s.label for s in segments), file=sys.stderr)
    return 0


def cmd_import_label(args: argparse.Namespace) -> int:
    """Import a DICOM SEG as a label revision of the image whose series it references."""
    from segloop.store.seg_import import import_dicom_seg

    store = open_store(args.data)
    result = import_dicom_seg(
        store,
        args.seg,
        author=args.author,
        status="draft" if args.draft else "final",
        image_id=args.image,
        extend_schema=args.extend_schema,
    )
    rev = result.revision
    print(f"{result.image.id}  label r{rev.revision} ({rev.status}, source {rev.source})")
    _print_overlaps(result)
    return 0


def default_demo_dataset() -> Path:
    """``../shared/data/Task04_Hippocampus`` beside the checkout (or beside the working folder)."""
    checkout = Path(segloop.__file__).resolve().parents[2]
    for base in (checkout.parent, Path.cwd().parent, Path.cwd()):
        candidate = base / "shared" / "data" / "Task04_Hippocampus"
        if candidate.is_dir():
            return candidate
    return checkout.parent / "shared" / "data" / "Task04_Hippocampus"


def _hold_back_labels(labels_dir: Path, out: Path, fraction: float) -> list[str]:
    """Copy the label files to ``out`` except a ``fraction`` of them (chosen with a fixed seed, so
    every demo holds back the same cases); returns the names held back. At least two labels stay
    (training needs them) and, when the fraction is above 0, at least one is held back."""
    files = sorted(p for p in labels_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.endswith((".nii", ".nii.gz", ".nrrd")))
    n_hold = min(len(files) - 2, max(1, round(fraction * len(files)))) if len(files) >= 3 else 0
    held = set(random.Random(0).sample([p.name for p in files], n_hold)) if n_hold > 0 else set()
    for p in files:
        if p.name not in held:
            shutil.copyfile(p, out / p.name)
    return sorted(held)


def cmd_demo(args: argparse.Namespace) -> int:
    from segloop.store.ingest import IngestError, import_paths
    from segloop.store.msd import find_dataset_json, open_msd

    dataset: Path = args.dataset or default_demo_dataset()
    if not dataset.is_dir():
        raise CommandError(f"{dataset}: sample dataset not found (pass --dataset PATH to a folder in the MSD or nnU-Net raw layout)")
    msd = open_msd(dataset, require_labels=False)
    store = open_store(args.data, must_exist=False)
    if store.count_images() == 0:
        print(f"importing {msd.name} from {dataset} into {args.data} ...", file=sys.stderr)
        progress, close = _progress_bar(False)
        labels_dir = dataset / "labelsTr" if (dataset / "labelsTr").is_dir() else None
        with tempfile.TemporaryDirectory(prefix="segloop-demo-labels-") as kept_dir:
            held: list[str] = []
            if labels_dir is not None and args.unlabelled > 0:
                held = _hold_back_labels(labels_dir, Path(kept_dir), args.unlabelled)
                labels_dir = Path(kept_dir)
                ds_json = find_dataset_json(dataset / "labelsTr")
                if ds_json is not None:  # the class names and modality, read beside the labels
                    shutil.copyfile(ds_json, labels_dir / "dataset.json")
            try:
                report = import_paths(
                    store,
                    [dataset / "imagesTr"],
                    labels_dir=labels_dir,
                    author="reference",
                    modality=msd.modality or None,
                    progress=progress,
                )
            except IngestError as exc:
                close()
                for line in exc.problems:
                    print(f"segloop demo: error: {line}", file=sys.stderr)
                return 2
        close()
        print(f"imported {len(report.images)} image(s)", file=sys.stderr)
        if held:
            print(f"held back the labels of {len(held)} image(s) (--unlabelled {args.unlabelled:g}): they are the "
                  "unlabelled pool that 'Next image' and active learning choose from", file=sys.stderr)
    else:
        print(f"{args.data} already holds {store.count_images()} image(s); not importing again", file=sys.stderr)
    schema = store.get_schema()
    counts = {state: store.count_images(label_state=state) for state in ("none", "draft", "final")}
    print(f"data folder: {args.data.resolve()}")
    print(f"dataset:     {msd.name} ({dataset})")
    print("classes:     " + ", ".join(f"{c.value}={c.name}" for c in schema.classes))
    print(f"images:      {store.count_images()} (final labels: {counts['final']}, drafts: {counts['draft']}, unlabelled: {counts['none']})")

    from segloop.cli import build_parser

    parser = build_parser()
    models = store.list_models()
    if not models and not args.no_train:
        print(
            f"training model {args.model!r} on the final labels for up to {args.train_minutes:g} min "
            "(the saved labels retrain it later; `segloop train` for a longer run) ...",
            file=sys.stderr,
        )
        train_args = parser.parse_args(
            ["train", args.model, "--data", str(args.data), "--max-minutes", str(args.train_minutes)]
        )
        code = int(train_args.func(train_args) or 0)
        if code:
            return code
        models = store.list_models()
    for m in models:
        current = m.version() if m.current_version is not None else None
        dice = (current.metrics.get("val_dice") if current else None) or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in dice.items()) if dice else "no validation yet"
        print(f"model:       {m.name} v{m.current_version} (validation Dice: {shown})")
    if args.no_serve:
        return 0
    serve_args = parser.parse_args(["serve", "--data", str(args.data), "--host", args.host, "--port", str(args.port)])
    print(f"open http://{args.host}:{args.port}/ in a browser (API: http://{args.host}:{args.port}/api/v1/docs); Ctrl+C stops", flush=True)
    return int(serve_args.func(serve_args) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import NIfTI files, DICOM series folders or zips",
        description="Import images. Every input is validated first; if any is bad, nothing is imported. "
                    "DICOM SEG files among the inputs then become label revisions of the series they reference "
                    "(as import-seg does); a SEG that cannot be imported is named and the exit code is 2.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="NIfTI file, DICOM folder/file, folder or zip; a dataset folder (MSD or nnU-Net raw layout) imports imagesTr with the labels of its labelsTr, and imagesTs unlabelled")
    add_data_arg(p)
    p.add_argument("--labels", type=Path, metavar="LABEL_DIR", help="folder of label maps matched by file name")
    p.add_argument("--author", default="import", help="author recorded on imported label revisions")
    p.add_argument("--draft", action="store_true", help="import labels as drafts instead of final references")
    p.add_argument("--modality", help="modality to record when the files do not say (e.g. MR, CT)")
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM: apply the basic confidentiality profile (pseudonymous patient, no dates, "
                        "names, institutions or private tags, new UIDs; geometry kept)")
    p.add_argument("--deid-map", type=Path, metavar="FILE",
                   help="with --deidentify: keep the original -> pseudonym mapping in FILE (reused if it exists)")
    p.add_argument("--json", action="store_true", help="print the imported images as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("images", help="list images with their label state")
    add_data_arg(p)
    p.add_argument("--state", choices=["none", "draft", "final"], help="only images in this label state")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("export", help="write an image and/or a label revision to files")
    p.add_argument("image", metavar="IMAGE", help="image id")
    add_data_arg(p)
    p.add_argument("--format", default="nifti", choices=["nifti", "nrrd", "dicom-seg"],
                   help="nifti (default), nrrd (labels as Slicer .seg.nrrd), dicom-seg (label only)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="folder, or one file (.nii.gz / .nrrd / .dcm) with --what")
    p.add_argument("--what", choices=["image", "label", "both"], default="both")
    p.add_argument("--revision", type=int, help="label revision number (default: latest)")
    p.add_argument("--source-dicom", type=Path, metavar="DIR",
                   help="with dicom-seg: folder holding the image's source DICOM series (default: the headers "
                        "kept when the image was imported)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import-seg",
        help="import a DICOM SEG as a label revision of the image it references",
        description="The image is found by the SeriesInstanceUID the SEG references (import the series first). "
        "Overlapping segments: the highest segment number wins, and the overlap is reported.",
    )
    p.add_argument("seg", type=Path, metavar="SEG.dcm")
    add_data_arg(p)
    p.add_argument("--image", help="image id (default: found from the SEG's referenced series)")
    p.add_argument("--author", default="import")
    p.add_argument("--draft", action="store_true", help="store as a draft instead of final")
    p.add_argument("--extend-schema", action="store_true", help="add segments missing from the label schema as new classes")
    p.set_defaults(func=cmd_import_label)

    p = sub.add_parser(
        "demo",
        help="import the sample dataset, train a first model and serve it",
        description="Import the sample dataset (once), train a first model when there is none, then serve the "
        "data folder on 127.0.0.1 and print the URL.",
    )
    p.add_argument("--dataset", type=Path, help="dataset folder in the MSD or nnU-Net raw layout (default: ../shared/data/Task04_Hippocampus)")
    p.add_argument("--data", type=Path, default=Path("data/demo"), metavar="DIR", help="data folder (default: data/demo)")
    p.add_argument("--model", default="hippocampus", help="name of the model trained by the demo")
    p.add_argument("--unlabelled", type=_fraction, default=0.25, metavar="F",
                   help="share of the dataset's images imported without their label, the pool that 'Next image' "
                        "and active learning choose from (default 0.25; 0 imports every label)")
    p.add_argument("--train-minutes", type=float, default=5.0, metavar="M", help="training budget (default 5)")
    p.add_argument("--no-train", action="store_true", help="do not train a model")
    p.add_argument("--no-serve", action="store_true", help="stop after importing (and training)")
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="server port (default 8000)")
    p.set_defaults(func=cmd_demo)
