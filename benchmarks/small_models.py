"""Throughput of the small models a patch-size sweep trains: img/s of the trainer's step per (arch, p, variant).

    .venv/bin/python -m benchmarks.small_models                                   # width 64, depth 4, 32², batch 64
    .venv/bin/python -m benchmarks.small_models --patches 2,1 --variant dtype=float32 \\
        --variant dtype=bfloat16 --variant dtype=bfloat16,chunk_size=64

Every variant of one (arch, p) is compiled first, then timed in interleaved rounds (variant A, B, C, A, B, C, ...),
so a change of machine load hits all of them alike; the table gives the median step time per variant, its img/s
and the analytic training GFLOP/s (`pixeltok.flops`). The step is `benchmarks.train_step.build_step`, i.e. the
trainer's own jitted step (`pixeltok.train.make_train_step`) on one synthetic batch. Variants are model overrides
(`dtype`, `chunk_size`, `scan_layers`, `remat`, ...), comma-separated KEY=VALUE; Adventurer-only keys are dropped for
ViT rows. Prints a Markdown table (and `--json PATH` writes the rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from benchmarks.common import load_average, log
from benchmarks.experiments import _parse_set
from benchmarks.train_step import build_step
from pixeltok.models import ADVENTURER_DEFAULTS


def _variant(text: str) -> dict:
    return _parse_set([item for item in text.split(",") if item]) if text else {}


def measure(arch: str, patch: int, variants: list[dict], *, width: int, depth: int, image: int, batch: int,
            rounds: int) -> list[dict]:
    """Compiles each variant of (arch, patch), then times `rounds` interleaved rounds; one row per variant."""
    name = f"{arch}_tiny"
    calls, rows = [], []
    for overrides in variants:
        kept = {k: v for k, v in overrides.items() if arch == "adventurer" or k not in ADVENTURER_DEFAULTS}
        t0 = time.perf_counter()
        fn, args, make_call, plan = build_step(name, patch, image, batch=batch, classes=10,
                                               overrides={"width": width, "depth": depth, **kept})
        call = make_call(fn.lower(*args).compile())
        call()                                                   # warm-up: first-touch allocations
        calls.append(call)
        rows.append({"arch": arch, "patch": patch, "tokens": plan.model.tokens_per_image, "overrides": kept,
                     "compile_s": time.perf_counter() - t0, "flops_per_image": plan.model.train_flops_per_image,
                     "times_s": []})
    for _ in range(rounds):
        for call, row in zip(calls, rows):
            t0 = time.perf_counter()
            call()
            row["times_s"].append(time.perf_counter() - t0)
    for row in rows:
        row["step_s"] = statistics.median(row["times_s"])
        row["img_per_s"] = batch / row["step_s"]
        row["gflop_per_s"] = row["flops_per_image"] * batch / row["step_s"] / 1e9
        log(f"{arch} p{patch} {row['overrides']}: {row['step_s']:.3f} s/step, {row['img_per_s']:.1f} img/s")
    jax.clear_caches()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| arch | p | tokens | variant | s/step | img/s | GFLOP/s | vs first variant |",
             "|---|---|---|---|---|---|---|---|"]
    first = {}
    for r in rows:
        base = first.setdefault((r["arch"], r["patch"]), r["step_s"])
        variant = ",".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults"
        lines.append(f"| {r['arch']} | {r['patch']} | {r['tokens']} | {variant} | {r['step_s']:.3f} | "
                     f"{r['img_per_s']:.1f} | {r['gflop_per_s']:.1f} | {base / r['step_s']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="adventurer,vit")
    ap.add_argument("--patches", default="8,4,2,1")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed calls per variant (interleaved)")
    ap.add_argument("--variant", action="append", help="comma list of KEY=VALUE overrides (repeatable); "
                    "default: one variant with the model defaults")
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args(argv)
    variants = [_variant(v) for v in (args.variant or [""])]
    load0 = load_average()
    rows = []
    for arch in args.archs.split(","):
        for patch in (int(p) for p in args.patches.split(",")):
            rows += measure(arch, patch, variants, width=args.width, depth=args.depth, image=args.image,
                            batch=args.batch, rounds=args.rounds)
    print(f"width {args.width}, depth {args.depth}, {args.image}², batch {args.batch}, {args.rounds} interleaved "
          f"rounds; load average {load0} at start, {load_average()} at end ({jax.default_backend()})")
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
