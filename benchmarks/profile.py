"""Where a pixeltok train step (or SSD call) spends its time on XLA:CPU: a profiler trace aggregated by op.

    .venv/bin/python -m benchmarks.profile train adventurer_tiny --patch 1 --image 32 --batch 4 [--dtype bfloat16]
        [--set width=64 --set depth=4]
    .venv/bin/python -m benchmarks.profile ssd --length 16384 --chunk 128 [--backward]

Prints the top XLA ops (fusions, dots, copies) by total time over the profiled steps, with their share of the step.
Uses `jax.profiler` with a Perfetto trace (no extra dependency to read it).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax


def _aggregate(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"no perfetto trace under {trace_dir}")
    with gzip.open(files[0], "rt") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "")
        total[name] += e["dur"] / 1e6
        count[name] += 1
    return total, count


_CONTAINERS = ("ThunkExecutor", "SlinkyThreadPool", "$")


def profile(call, steps: int = 2, top: int = 30) -> tuple[list, list]:
    """Runs `call` once untraced, then `steps` times under the profiler.

    Returns ([(op, seconds/step, calls)] for the top single XLA ops, [(kind, seconds/step, calls)] by op kind, i.e.
    the name without its numeric suffix: `ynn_fusion` (YNNPACK dots), `loop_fusion`, `copy_bitcast_fusion`, ...).
    """
    call()
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(steps):
            call()
        jax.profiler.stop_trace()
        total, count = _aggregate(tmp)
    ops = {n: t for n, t in total.items() if not n.startswith(_CONTAINERS)}
    kinds, kcount = collections.Counter(), collections.Counter()
    for n, t in ops.items():
        k = re.sub(r"\.\d+$", "", n)
        kinds[k] += t
        kcount[k] += count[n]
    single = [(n, t / steps, count[n] // steps) for n, t in collections.Counter(ops).most_common(top)]
    by_kind = [(k, t / steps, kcount[k] // steps) for k, t in kinds.most_common(top)]
    return single, by_kind


def _print(rows, step_s=None):
    for name, t, n in rows:
        share = f"{100 * t / step_s:5.1f} %" if step_s else ""
        short = re.sub(r"\s+", " ", name)[:110]
        print(f"{t * 1e3:10.1f} ms {share} ×{n:<5d} {short}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("train", "ssd"))
    ap.add_argument("model", nargs="?", default="adventurer_tiny")
    ap.add_argument("--patch", type=int, default=1)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--remat", default="")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--fwd-bwd", action="store_true", help="profile value_and_grad only (no AdamW)")
    ap.add_argument("--set", action="append", help="extra model override KEY=VALUE, e.g. width=64 (repeatable)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--hlo", type=int, default=0, help="print the HLO line of the N slowest single ops")
    args = ap.parse_args()
    if args.what == "train":
        from benchmarks.train_step import build_step
        overrides = {"dtype": args.dtype, "remat": args.remat or None}
        if args.model.startswith("adventurer"):
            overrides["chunk_size"] = args.chunk
        from benchmarks.experiments import _parse_set
        overrides.update(_parse_set(args.set))
        fn, fargs, make_call, _ = build_step(args.model, args.patch, args.image, batch=args.batch,
                                             classes=10 if args.image < 224 else 1000, overrides=overrides,
                                             fwd_bwd_only=args.fwd_bwd)
        compiled = fn.lower(*fargs).compile()
        call = make_call(compiled)
    else:
        from benchmarks.scan import make_inputs, scan_fn
        fargs, g = make_inputs(1, args.length, jax.numpy.float32)
        compiled = scan_fn("chunked", args.chunk, args.backward).lower(fargs, g).compile()

        def call():
            jax.block_until_ready(compiled(fargs, g))
    compiled_text = [compiled.as_text()]
    import time
    t0 = time.perf_counter()
    call()
    step_s = time.perf_counter() - t0
    print(f"one call: {step_s:.3f} s")
    single, by_kind = profile(call, args.steps, args.top)
    print("-- by op kind")
    _print(by_kind, step_s)
    print("-- top single ops")
    _print(single, step_s)
    if args.hlo:
        text = compiled_text[0]
        for name, _, _ in single[:args.hlo]:
            m = re.search(rf"^\s*(ROOT )?%?{re.escape(name)} = [^\n]*", text, re.M)
            print(f"{name}: {m.group(0).strip()[:300] if m else '?'}")


if __name__ == "__main__":
    main()
