"""python -m pixeltok.scaling --runs DIR... --out DIR [--eval] [--metric loss] [--frontier] [--n-bootstrap N]

Reads run workdirs (config.json, metrics.jsonl; with --eval their checkpoints), fits L(p) = E + A·p^α per group and
writes fit.json, loss_vs_patch.png, residuals.png, frontier.png and summary.md. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from pixeltok.scaling import analysis, bootstrap


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pixeltok.scaling", description=__doc__.splitlines()[2])
    ap.add_argument("--runs", nargs="+", required=True,
                    help="run workdirs, or folders containing run workdirs")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--eval", action="store_true",
                    help="re-evaluate each run's latest checkpoint (pixeltok.evaluate.evaluate_checkpoint)")
    ap.add_argument("--metric", default="loss", help="eval field to fit ('loss', or 'error' = 1 - the task's metric: "
                    "accuracy for classification, miou for segmentation)")
    ap.add_argument("--select", default="final", choices=("final", "best"), help="final or best eval row")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", default="auto", choices=bootstrap.METHODS)
    ap.add_argument("--frontier", action="store_true",
                    help="compute-frontier analysis: learning curves at common FLOP budgets, per-budget L(p) fits, "
                         "joint L(p, C) laws, compute-optimal patch size p*(C), held-out largest budget (loss and "
                         "error); the per-patch fit then uses each (arch, p, seed)'s largest-budget run")
    ap.add_argument("--frontier-bootstrap", type=int, default=200,
                    help="bootstrap resamples of the joint-law and per-budget fits (--frontier)")
    ap.add_argument("--skip-bad", action="store_true",
                    help="leave out runs with missing/non-finite metrics (with a warning) instead of failing")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.n_bootstrap < 0:
            raise ValueError(f"--n-bootstrap must be >= 0, got {args.n_bootstrap}")
        runs, warns = analysis.load_runs(args.runs, skip_bad=args.skip_bad, need_metrics=not args.eval)
        if args.eval:
            analysis.evaluate_checkpoints(runs)
        frontier, all_runs = None, runs
        if args.frontier:
            if args.frontier_bootstrap < 0:
                raise ValueError(f"--frontier-bootstrap must be >= 0, got {args.frontier_bootstrap}")
            frontier = analysis.analyze_frontier(runs, metrics=tuple(dict.fromkeys((args.metric, "loss", "error"))),
                                                 n_bootstrap=args.frontier_bootstrap, seed=args.seed)
            runs = analysis.longest_runs(runs)
        res = analysis.analyze(runs, metric=args.metric, select=args.select, n_bootstrap=args.n_bootstrap,
                               seed=args.seed, bootstrap=args.bootstrap, skip_bad=args.skip_bad, require_fit=False)
        res["warnings"] = warns + res["warnings"]
        files = analysis.write_outputs(res, args.out, args={k: v for k, v in vars(args).items()},
                                       frontier=frontier, all_runs=all_runs)
        if res.get("error"):        # fit.json keeps the data gathered so far; still a failure
            raise ValueError(res["error"] + f" (run data written to {files[0]})")
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"pixeltok.scaling: error: {msg}", file=sys.stderr)
        return 2
    for g in res["groups"]:
        f = g["fit"]
        if f is not None:
            lo, hi = f.ci["alpha"]
            print(f"{g['label']}: alpha = {f.alpha:.4g} (95% [{lo:.3g}, {hi:.3g}]), E = {f.E:.4g}, A = {f.A:.3g}")
    if frontier is not None and args.metric in frontier:
        for label, g in frontier[args.metric]["groups"].items():
            co = g["compute_optimal"]
            if co:
                print(f"{label}: joint law {g['winner']}; p*(C) {co[0]['patch_size']:.3g} at {co[0]['flops']:.3g} "
                      f"FLOPs -> {co[-1]['patch_size']:.3g} at {co[-1]['flops']:.3g}")
    print(f"wrote {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
