"""``segloop export-dataset``: the store's labelled images as an MSD or nnU-Net v2 training set."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from segloop.cli.common import add_data_arg, counting_bar, open_store, print_json


def cmd_export_dataset(args: argparse.Namespace) -> int:
    from segloop.store.export_dataset import export_dataset

    store = open_store(args.data)
    with counting_bar("exporting", disable=args.json) as bar:

        def progress(done: int, total: int) -> None:
            if done == 0:  # after the checks: OUT is usable and there is something to write
                print(f"exporting {total} case(s) to {args.output} ({args.format}) ...", file=sys.stderr)
            bar(done, total)

        result = export_dataset(
            store,
            args.output,
            args.format,
            final_only=args.final_only,
            revision_policy=args.revision_policy,
            force=args.force,
            progress=progress,
        )
    if args.json:
        print_json(result.to_dict())
        return 0
    drafts = sum(1 for c in result.cases if c["status"] != "final")
    print(f"wrote {len(result.cases)} case(s) ({drafts} from draft revisions) to {result.out}")
    if result.skipped:
        reasons = Counter(_reason_kind(s["reason"]) for s in result.skipped)
        why = ", ".join(f"{n} {kind}" for kind, n in sorted(reasons.items()))
        print(f"skipped {len(result.skipped)} image(s): {why}")
        for s in result.skipped:
            print(f"  skipped {s['image_id']}: {s['reason']}", file=sys.stderr)
    renumbered = {k: v for k, v in result.label_map.items() if k != v}
    if renumbered:
        print("labels renumbered for nnU-Net: " + ", ".join(f"{k}->{v}" for k, v in sorted(renumbered.items())))
    return 0


def _reason_kind(reason: str) -> str:
    """A short group for the summary line ("revision 3 is a draft" -> "draft")."""
    if reason.endswith("is a draft"):
        return "draft"
    if "not in the schema" in reason:
        return "values not in the schema"
    return reason


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-dataset",
        help="write every labelled image as an MSD or nnU-Net v2 training set",
        description="Write the data folder's labelled images (image + chosen label revision) to OUT: "
        "msd: imagesTr/NAME.nii.gz, labelsTr/NAME.nii.gz, dataset.json (Medical Segmentation Decathlon); "
        "nnunet: imagesTr/NAME_0000.nii.gz, labelsTr/NAME.nii.gz, dataset.json (nnU-Net v2 raw layout; "
        "labels renumbered 0, 1, 2, ... as nnU-Net needs; name OUT DatasetNNN_NAME under nnUNet_raw). "
        "OUT is written whole or not at all; a non-empty OUT is refused unless --force.",
    )
    add_data_arg(p)
    p.add_argument("--format", required=True, choices=["msd", "nnunet"], help="dataset layout")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="dataset folder to write")
    p.add_argument("--revision-policy", choices=["latest", "final"], default="latest",
                   help="which label revision of each image: its latest (default), or its latest final one "
                        "(images without a final revision are skipped)")
    p.add_argument("--final-only", action="store_true", help="skip images whose chosen revision is a draft")
    p.add_argument("--force", action="store_true", help="replace the content of a non-empty OUT")
    p.add_argument("--json", action="store_true", help="print the result (cases, skipped, label map) as JSON")
    p.set_defaults(func=cmd_export_dataset)
