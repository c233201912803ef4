"""``segloop models import PATH``: a MONAI bundle (folder or zip) or a TorchScript file becomes a model version.

Registered as a sub-command of ``segloop models`` (the listing stays ``segloop models --data D``),
so this module must come after `segloop.cli.ml_commands` in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from segloop.cli.common import CommandError, add_data_arg, open_store, print_json


def _default_name(path: Path) -> str:
    stem = path.name
    for suffix in (".zip", ".ts", ".pt", ".pth", ".jit", ".torchscript"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_")[:128]
    return slug or "imported"


def cmd_models_import(args: argparse.Namespace) -> int:
    from segloop.ml.imported import ModelImportError
    from segloop.ml.model_import import import_model

    path = Path(args.path)
    name = args.name or _default_name(path)
    store = open_store(args.data)
    try:
        version, imported = import_model(
            store, path, name, model_json=args.config, add_classes=args.add_classes, make_current=not args.keep_current
        )
    except ModelImportError as exc:
        raise CommandError(f"{exc} (nothing was imported)") from exc
    if args.json:
        print_json({**version.to_dict(), "fine_tunable": imported.fine_tunable, "notes": imported.notes,
                    "added_classes": [c.name for c in imported.new_classes]})
        return 0
    spec = imported.spec
    classes = ", ".join(f"{n} ({v})" for v, n in zip(spec.class_values, spec.class_names, strict=True) if v)
    current = "current" if not args.keep_current else "not made current"
    print(f"{name} version {version.version} ({current}): imported {imported.kind} {path.name}; classes {classes}; "
          f"input: automatic, {spec.image_channels} image channel(s), no clicks")
    if imported.fine_tunable:
        print(f"  fine-tune it on your final labels: segloop train {name} --data {args.data} --fine-tune {version.version}")
    else:
        print("  it cannot be fine-tuned (TorchScript: no network definition to train)")
    for c in imported.new_classes:
        print(f"  added class {c.name!r} (value {c.value}) to the label schema")
    for note in imported.notes:
        print(f"  note: {note}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.choices.get("models")
    if models is None:
        raise CommandError("segloop.cli.models_import_command must be registered after the `models` command")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = False
    p = actions.add_parser(
        "import",
        help="import a MONAI bundle (folder or .zip) or a TorchScript file as a new model version",
        description="Import a model users bring: a MONAI bundle (configs/metadata.json, configs/inference.json, "
                    "models/model.pt or models/model.ts) or a TorchScript file with a model JSON "
                    '({"classes": [...], "patch_size": [...], "spacing": [...], "intensity": {...}}). '
                    "Everything is checked first; a refused import changes nothing. See docs/models.md.",
    )
    p.add_argument("path", metavar="PATH", type=Path, help="bundle folder, bundle .zip, or TorchScript file")
    add_data_arg(p)
    p.add_argument("--name", help="model name (default: from PATH); an existing model must have the same network and classes")
    p.add_argument("--config", type=Path, metavar="FILE.json",
                   help="model JSON: classes, image_channels, patch_size, spacing, intensity (required for TorchScript "
                        "unless PATH with .json beside it exists; overrides a bundle's values)")
    p.add_argument("--add-classes", action="store_true", dest="add_classes",
                   help="add the model's classes that the label schema lacks (default: refuse)")
    p.add_argument("--keep-current", action="store_true", dest="keep_current",
                   help="add the version without making it the model's current one")
    p.add_argument("--json", action="store_true", help="print the new version as JSON")
    p.set_defaults(func=cmd_models_import)
