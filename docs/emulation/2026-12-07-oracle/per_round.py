"""Per round, an arm against random in an `segloop emulate --aggregate` output: mean test Dice of
each, the paired difference (same seed = same splits and pre-training) and the seeds above 0, and
the clicked Dice of each arm's picks (how hard the picked images were for the model).

    python per_round.py AGGREGATE_DIR ARM
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str, arm: str) -> None:
    agg = json.loads((Path(folder) / "aggregate.json").read_text())
    base, other = agg["arms"]["random"], agg["arms"][arm]
    print(f"{'labelled':>8} {'random':>8} {arm:>14} {'paired':>8} {'above':>6}")
    for b, o in zip(base, other, strict=True):
        rb, ro = b["test_mean_dice"]["values"], o["test_mean_dice"]["values"]
        diffs = [y - x for x, y in zip(rb, ro, strict=True)]
        above = sum(d > 0 for d in diffs)
        print(f"{int(b['labelled']['mean']):>8} {sum(rb) / len(rb):8.3f} {sum(ro) / len(ro):14.3f} "
              f"{sum(diffs) / len(diffs):+8.4f} {above:>3}/{len(diffs)}")
    for name in ("random", arm):
        s = agg["summary"][name]
        print(f"{name}: minutes per volume {s['minutes_per_volume']['mean']:.2f}, "
              f"clicked Dice of the last round's picks {s['last_clicked_dice']['mean']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
