"""Builds reports/seg_patch/ from the sweep's workdirs (configs/sweeps/seg_patch.py):

    python reports/seg_patch/make_report.py --root runs/seg_patch --out reports/seg_patch

* `runs.csv`: one row per finished run (arch, p, seed, head, tokens, final eval mIoU / pixel accuracy / loss, wall
  seconds of the whole run from the sweep's DONE file);
* `miou_vs_patch.png`: mIoU and eval loss against p per architecture (runs as dots, seed means as lines, the
  pixel_shuffle run as a star);
* `loss/` and `miou/`: `python -m pixeltok.scaling` on the linear-head runs, fitted quantity the eval loss and
  `error` = 1 - mIoU (the analyzer's segmentation error), law L(p) = E + A·p^α per architecture.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NAME = re.compile(r"^(adventurer|vit)_p(\d+)(_shuffle)?_s(\d+)$")


def collect(root: str) -> list[dict]:
    rows = []
    for wd in sorted(glob.glob(os.path.join(root, "*"))):
        m = NAME.match(os.path.basename(wd))
        if not m or not os.path.exists(os.path.join(wd, "DONE")):
            continue
        evals = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))
                 if '"eval"' in line]
        evals = [r for r in evals if r.get("split") == "eval"]
        conf = json.load(open(os.path.join(wd, "config.json")))
        done = json.load(open(os.path.join(wd, "DONE")))
        final = evals[-1]
        rows.append({"run": os.path.basename(wd), "arch": m.group(1), "p": int(m.group(2)),
                     "head": "pixel_shuffle" if m.group(3) else "linear", "seed": int(m.group(4)),
                     "tokens": conf["tokens_per_image"], "params": conf["num_params"], "step": final["step"],
                     "miou": final["miou"], "pixel_accuracy": final["pixel_accuracy"], "loss": final["loss"],
                     "wall_s": round(float(done.get("seconds", float("nan"))), 1)})
    return rows


def plot(rows: list[dict], path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"adventurer": "tab:blue", "vit": "tab:orange"}
    for key, ax in zip(("miou", "loss"), axes):
        for arch in ("adventurer", "vit"):
            lin = [r for r in rows if r["arch"] == arch and r["head"] == "linear"]
            if not lin:
                continue
            ps = sorted({r["p"] for r in lin})
            ax.scatter([r["p"] for r in lin], [r[key] for r in lin], color=colors[arch], alpha=0.5, s=18)
            ax.plot(ps, [np.mean([r[key] for r in lin if r["p"] == p]) for p in ps], color=colors[arch],
                    label=f"{arch} (linear head)")
            for r in rows:
                if r["arch"] == arch and r["head"] == "pixel_shuffle":
                    ax.scatter([r["p"]], [r[key]], marker="*", s=120, color=colors[arch],
                               label=f"{arch} pixel_shuffle head")
        if key == "miou":
            ax.axhline(0.0696, color="gray", ls=":", label="all background (mIoU 7.0 %)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
        ax.invert_xaxis()
        ax.set_xlabel("patch size p (pixels)")
        ax.set_ylabel({"miou": "eval mIoU", "loss": "eval loss (per-pixel CE)"}[key])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("fashion_mnist_seg 32x32, width 32 / depth 2, 120 steps x 32, decoder-free head")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/seg_patch")
    ap.add_argument("--out", default="reports/seg_patch")
    args = ap.parse_args()
    rows = collect(args.root)
    if not rows:
        print(f"no finished runs in {args.root}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["arch"], r["head"], -r["p"], r["seed"])))
    plot(rows, os.path.join(args.out, "miou_vs_patch.png"))
    linear = [os.path.join(args.root, r["run"]) for r in rows if r["head"] == "linear"]
    for metric, sub in (("loss", "loss"), ("error", "miou")):
        subprocess.run([sys.executable, "-m", "pixeltok.scaling", "--runs", *linear, "--out",
                        os.path.join(args.out, sub), "--metric", metric], check=False)
    print(f"wrote {args.out}/runs.csv, miou_vs_patch.png, loss/, miou/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
