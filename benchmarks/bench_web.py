"""Web app benchmark: opening a 256x256x128 volume and a click's round trip, in a real browser.

Headless Debian Chromium (software WebGL: ``--disable-gpu``) driven by Playwright against a real
``segloop serve`` process on loopback with the built web app and a tiny model, measured by the
app itself (``window.segloop.stats``; ``performance.now()`` in the page):

1. **Open**: worklist click → a 2-D preview of the middle slices is shown (images over 2 M
   voxels), and → NiiVue's first frame of the 256x256x128 volume, with its label, is on screen (fetched, decoded, drawn, the GPU done with the frame — a fence — and the next
   frame begun). Also the wall time seen by the driver until the app is ready (revision list,
   evaluations loaded).
2. **Click**: a positive click in the axial tile → the updated mask is on screen. Split into the
   model's time as the server reports it (``X-Segloop-Seconds``), the HTTP round trip (request sent
   → response received, which includes the model's time and encoding), decoding, and the frames
   until the new mask is shown (changed voxels uploaded, the GPU done with the frame, next frame
   begun). Measured with the 3-D tile shown (the 2x2 view) and hidden
   (axial view only).
3. **Stroke push** (when the server has ``PUT /sessions/{id}/label``): a brush stroke's end →
   the stroke is in the interactive session (the box of changed voxels is sent when the server
   takes box uploads, else the whole label).

``load_avg_1_5_15_at_start``/``_at_end`` are recorded: other work on the machine slows software
WebGL, the page and the server alike, so compare builds only in runs made back to back (``--dist``
serves another build, ``--note`` says which).

The volume is made of real Task04_Hippocampus crops tiled to 256x256x128 (as in
``bench_server.py``); the model is trained for one step (its quality does not matter here).

Usage::

    .venv/bin/python benchmarks/bench_web.py --out benchmarks/results/web.json
    .venv/bin/python benchmarks/bench_web.py --quick
    .venv/bin/python benchmarks/bench_web.py --dist OTHER/dist   # another build of the app

Needs ``scripts/web.sh build`` and ``scripts/web.sh install-browser``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import BIG_SHAPE, ROOT, ServerProc, build_data  # noqa: E402
from benchlib import loadavg, machine, pct, write_json  # noqa: E402

CHROMIUM = Path(os.environ.get("SEGLOOP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT: Any = {"width": 1366, "height": 768}
BIG = "big_256x256x128"
SMALL = "hippocampus_001"


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 50), "p95_ms": pct(values, 95), "min_ms": min(values) if values else float("nan"),
            "n": len(values)}


def train_tiny(data: Path) -> None:
    exe = Path(sys.executable).parent / "segloop"
    subprocess.run([str(exe), "train", "tiny", "--data", str(data), "--epochs", "1", "--steps-per-epoch", "1",
                    "--batch-size", "1", "--val-split", "0.25", "--quiet", "--device", "cpu"],
                   check=True, stdout=subprocess.DEVNULL, timeout=900)


def axial_tile(page: Any) -> dict[str, float]:
    """The axial tile's rectangle in page pixels."""
    rect: dict[str, float] = page.evaluate("""() => {
        const nv = window.segloopDebug.viewer.nv;
        const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
        const s = nv.screenSlices.find((t) => t.axCorSag === 0);
        const box = document.querySelector('#gl').getBoundingClientRect();
        const [l, t, w, h] = s.leftTopWidthHeight;
        return { x: box.left + l / dpr, y: box.top + t / dpr, w: w / dpr, h: h / dpr };
    }""")
    return rect


def open_image(page: Any, image_id: str) -> tuple[dict[str, Any], float]:
    n = int(page.evaluate("() => window.segloop.stats.opens ?? 0"))
    t0 = time.perf_counter()
    page.click(f"#worklist tr[data-id='{image_id}']")
    page.wait_for_function("n => Number(document.body.dataset.opens ?? 0) > n", arg=n, timeout=120_000)
    wall = (time.perf_counter() - t0) * 1e3
    stats: dict[str, Any] = page.evaluate("() => window.segloop.stats")
    return stats, wall


def measure_opens(page: Any, reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"preview": [], "first_slices": [], "wall": []}
    for r in range(reps + 1):
        open_image(page, SMALL)  # so that every measured open replaces another image
        stats, wall = open_image(page, BIG)
        if r == 0:
            continue  # warm-up
        if stats.get("previewMs") is not None:
            out["preview"].append(float(stats["previewMs"]))
        out["first_slices"].append(float(stats["openMs"]))
        out["wall"].append(wall)
    return {k: v for k, v in out.items() if v}


def measure_clicks(page: Any, view_key: str, reps: int, rng: np.random.Generator, pace_ms: int = 150) -> dict[str, list[float]]:
    page.locator("#gl").focus()
    page.keyboard.press(view_key)
    page.wait_for_timeout(300)
    page.keyboard.press("1")
    page.keyboard.press("p")
    tile = axial_tile(page)
    out: dict[str, list[float]] = {k: [] for k in ("server", "round_trip", "decode", "shown", "frames", "wall")}
    for r in range(reps + 2):
        n = int(page.evaluate("() => window.segloop.stats.clicks"))
        fx, fy = rng.uniform(0.3, 0.7, size=2)
        t0 = time.perf_counter()
        page.mouse.click(tile["x"] + tile["w"] * fx, tile["y"] + tile["h"] * fy)
        # the very first click opens the session: a whole-volume prediction of the big volume
        page.wait_for_function("n => window.segloop.stats.clicks > n", arg=n, timeout=900_000 if r == 0 else 120_000)
        wall = (time.perf_counter() - t0) * 1e3
        stats = page.evaluate("() => window.segloop.stats")
        if r < 2:
            continue  # warm-up (the first click also opens the session)
        log = stats.get("clickLog") or []
        if log:
            rec = log[-1]
            out["server"].append(float(rec["serverMs"]))
            out["round_trip"].append(float(rec["roundTripMs"]))
            out["decode"].append(float(rec["decodeMs"]))
            out["shown"].append(float(rec["shownMs"]))
            out["frames"].append(float(rec["shownMs"] - rec["roundTripMs"] - rec["decodeMs"]))
        else:  # an older build of the app: round trip and on-screen time only
            out["round_trip"].append(float(stats["clickServerMs"]))
            out["shown"].append(float(stats["clickShownMs"]))
            out["frames"].append(float(stats["clickShownMs"] - stats["clickServerMs"]))
        out["wall"].append(wall)
        page.wait_for_timeout(pace_ms)
    return {k: v for k, v in out.items() if v}


def measure_pushes(page: Any, reps: int) -> dict[str, list[float]]:
    if "putLabel" not in (page.evaluate("() => document.body.dataset.features") or ""):
        return {}
    page.locator("#gl").focus()
    page.keyboard.press("b")
    tile = axial_tile(page)
    out: dict[str, list[float]] = {"push": []}
    for r in range(reps + 1):
        n = int(page.evaluate("() => window.segloop.stats.pushes"))
        y = tile["y"] + tile["h"] * (0.35 + 0.3 * r / max(1, reps))
        page.mouse.move(tile["x"] + tile["w"] * 0.4, y)
        page.mouse.down()
        page.mouse.move(tile["x"] + tile["w"] * 0.6, y, steps=5)
        page.mouse.up()
        page.wait_for_function("n => window.segloop.stats.pushes > n", arg=n, timeout=120_000)
        if r:
            out["push"].append(float(page.evaluate("() => window.segloop.stats.pushMs")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=7, help="measured opens of the big volume")
    ap.add_argument("--clicks", type=int, default=15, help="measured clicks per view")
    ap.add_argument("--click-pace-ms", type=int, default=150,
                    help="pause after a click's mask is on screen before the next click (a person's clicks are "
                         "seconds apart; the 2x2 view redraws its 3-D tile once editing pauses, 350 ms)")
    ap.add_argument("--quick", action="store_true", help="smoke run (3 opens, 5 clicks per view)")
    ap.add_argument("--dist", type=Path, help="the built web app to serve (default: web/dist)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--note", default="", help="free text recorded in the JSON (e.g. which build of the app)")
    args = ap.parse_args()
    if args.quick:
        args.opens, args.clicks = 3, 5
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is missing: run scripts/web.sh install-browser", file=sys.stderr)
        return 2
    dist = (args.dist or ROOT / "web" / "dist").resolve()
    if not (dist / "index.html").is_file():
        print(f"{dist} has no built app: run scripts/web.sh build", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "volume_shape": list(BIG_SHAPE),
        "viewport": VIEWPORT,
        "click_pace_ms": args.click_pace_ms,
        "dist": str(dist),
        "note": args.note,
        # other work on the machine slows the software WebGL, the server and the page alike
        "load_avg_1_5_15_at_start": loadavg(None),
    }
    server: ServerProc | None = None
    old_dist = os.environ.get("SEGLOOP_WEB_DIST")
    try:
        print("preparing data and a tiny model ...", file=sys.stderr)
        data = build_data(work)
        train_tiny(data)
        os.environ["SEGLOOP_WEB_DIST"] = str(dist)
        server = ServerProc(data, work / "server.log")
        base = server.api.removesuffix("/api/v1")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            results["browser"] = f"chromium {browser.version} (headless, software WebGL)"
            page = browser.new_context(viewport=VIEWPORT).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=120_000)
            results["features"] = page.evaluate("() => document.body.dataset.features ?? ''")
            print("opening the volume ...", file=sys.stderr)
            results["open"] = {k: summary(v) for k, v in measure_opens(page, args.opens).items()}
            rng = np.random.default_rng(0)
            results["click"] = {}
            for name, key in (("with_3d", "m"), ("axial_only", "a")):
                print(f"clicking ({name}) ...", file=sys.stderr)
                results["click"][name] = {k: summary(v) for k, v in measure_clicks(page, key, args.clicks, rng, args.click_pace_ms).items()}
            pushes = measure_pushes(page, max(3, args.clicks // 3))
            if pushes:
                results["stroke_push"] = {k: summary(v) for k, v in pushes.items()}
            browser.close()
            if errors:
                raise RuntimeError(f"errors in the page: {errors}")
    finally:
        if old_dist is None:
            os.environ.pop("SEGLOOP_WEB_DIST", None)
        else:
            os.environ["SEGLOOP_WEB_DIST"] = old_dist
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def row(name: str, s: dict[str, float]) -> str:
        return f"{name:<44}{s['p50_ms']:>9.0f}{s['p95_ms']:>9.0f}{s['n']:>5}"

    print(f"\nweb benchmark: {results['browser']}, {results['machine']['cpus']} CPUs, viewport "
          f"{VIEWPORT['width']}x{VIEWPORT['height']}; volume {'x'.join(map(str, BIG_SHAPE))} float32")
    print(f"{'ms':<44}{'p50':>9}{'p95':>9}{'n':>5}")
    o = results["open"]
    if "preview" in o:
        print(row("open: 2-D preview of the middle slices shown", o["preview"]))
    print(row("open: viewer's first frame (with label) on screen", o["first_slices"]))
    print(row("open: worklist click → app ready (driver)", o["wall"]))
    for name, c in results["click"].items():
        view = "2x2 view with 3-D tile" if name == "with_3d" else "axial view only"
        for key, label in (("server", "model time (server-reported)"), ("round_trip", "HTTP round trip"),
                           ("decode", "decode (gunzip + parse)"), ("frames", "frames until shown"),
                           ("shown", "click → mask on screen")):
            if key in c:
                print(row(f"click, {view}: {label}", c[key]))
    if "stroke_push" in results:
        print(row("brush stroke pushed into the session", results["stroke_push"]["push"]))
    results["load_avg_1_5_15_at_end"] = loadavg(None)
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
