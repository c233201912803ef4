import re, json, numpy as np
rows = {}
for k in ("box", "base"):
    for s in range(5):
        for line in open(f"docs/emulation/2026-12-06-box-model/{k}{s}.txt"):
            m = re.match(r"(\S+)\s+([0-9.]+)\s", line)
            if m and not line.strip().isdigit():
                rows.setdefault(k, {}).setdefault(m.group(1), [None]*5)[s] = float(m.group(2))
out = {}
for k, prot in rows.items():
    for p, v in prot.items():
        print(f"{k:5} {p:10} {np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}  {v}")
    gap = np.array(prot["box+1"]) - np.array(prot["clicks-3"])
    print(f"{k:5} box+1 - clicks-3: {gap.mean():+.4f} (min {gap.min():+.3f}, max {gap.max():+.3f}) {np.round(gap,3).tolist()}")
    out[k] = {p: {"per_seed": v, "mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v, ddof=1)), 4)} for p, v in prot.items()}
    out[k]["box+1 minus clicks-3"] = {"per_seed": np.round(gap, 4).tolist(), "mean": round(float(gap.mean()), 4)}
for p in rows["box"]:
    d = np.array(rows["box"][p]) - np.array(rows["base"][p])
    print(f"box-model minus click-model {p:10} {d.mean():+.4f} (min {d.min():+.3f}, max {d.max():+.3f})")
json.dump(out, open("docs/emulation/2026-12-06-box-model/summary.json", "w"), indent=1)
