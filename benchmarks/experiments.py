"""A/B experiments behind the optimisation proposals in the benchmark report (noisy machine: variants alternate).

    # one measurement (prints one JSON line): train step of a model, or an ssd call
    .venv/bin/python -m benchmarks.experiments step adventurer_tiny --patch 1 --image 32 --batch 4 --set dtype=bfloat16
    .venv/bin/python -m benchmarks.experiments ssd --length 16384 --chunk 128 --backward --variant decay_diff
    # A/B of environment variants (XLA flags must be set before jax starts, so each run is its own process;
    # variants alternate `--rounds` times and the medians are compared)
    .venv/bin/python -m benchmarks.experiments ab --rounds 2 --env "" \
        --env "XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot" -- step vit_tiny --patch 1 --image 32
    # A/B of in-process variants (same process, calls interleaved)
    .venv/bin/python -m benchmarks.experiments ssd-ab --length 16384 --backward
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _parse_set(items):
    out = {}
    for item in items or []:
        k, v = item.split("=", 1)
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                pass
        out[k] = None if v in ("None", "") else v
    return out


def cmd_step(args) -> dict:
    import jax

    from benchmarks.common import time_calls
    from benchmarks.train_step import build_step
    overrides = _parse_set(args.set)
    t0 = time.perf_counter()
    fn, fargs, make_call, _ = build_step(args.model, args.patch, args.image, batch=args.batch,
                                         classes=10 if args.image < 224 else 1000, overrides=overrides,
                                         fwd_bwd_only=args.fwd_bwd)
    compiled = fn.lower(*fargs).compile()
    compile_s = time.perf_counter() - t0
    t = time_calls(make_call(compiled), warmup=1, min_reps=args.reps, max_reps=args.reps, min_time_s=0,
                   max_time_s=600)
    mem = compiled.memory_analysis()
    return {"median_s": t["median_s"], "times_s": t["times_s"], "compile_s": compile_s,
            "temp_bytes": int(mem.temp_size_in_bytes), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__}


# ------------------------------------------------------------------------------------------- ssd variants (patches)
def _decay_matrix_diff(a):
    """Candidate `pixeltok.ops.ssd._decay_matrix`: L[i, j] = exp(min(cs_i - cs_j, 0)) for i >= j, 0 above.

    One broadcast subtraction that XLA fuses with the mask, exp and the cb multiply, instead of cumsums over
    (Q, Q) blocks. Within a chunk |cs| ≤ Q·max|dt·A|, so the difference loses ~|cs|·2⁻²⁴ absolute in the
    exponent;
    the clamp keeps every exponent ≤ 0 (docs/ssd.md, "Numerics rules": the upstream Mamba-2 fix).
    """
    import jax
    import jax.numpy as jnp
    q = a.shape[-1]
    cs = jnp.cumsum(a, axis=-1)
    rows = jax.lax.broadcasted_iota(jnp.int32, (q, q), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (q, q), 1)
    seg = jnp.minimum(cs[..., :, None] - cs[..., None, :], 0.0)
    return jnp.exp(jnp.where(rows >= cols, seg, -jnp.inf))


class _Variant:
    """Context manager patching pixeltok.ops.ssd for one variant while a function is traced."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        import jax

        import pixeltok.ops.ssd as ssd_mod
        self.saved = (ssd_mod._decay_matrix, jax.checkpoint)
        if "decay_diff" in self.name:
            ssd_mod._decay_matrix = _decay_matrix_diff
        if "noremat" in self.name:
            jax.checkpoint = lambda f, *a, **k: f
        return self

    def __exit__(self, *exc):
        import jax

        import pixeltok.ops.ssd as ssd_mod
        ssd_mod._decay_matrix, jax.checkpoint = self.saved


def _ssd_compiled(variant, length, chunk, backward, dtype):
    from benchmarks.limits import compile_stats
    from benchmarks.scan import make_inputs, scan_fn
    args, g = make_inputs(1, length, dtype)
    with _Variant(variant):
        compiled = scan_fn("chunked", chunk, backward).lower(args, g).compile()
    return compiled, args, g, compile_stats(compiled)


def cmd_ssd_ab(args) -> dict:
    """Compiles every variant, then interleaves their calls `rounds` times; medians and ratios to the first."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    built = {v: _ssd_compiled(v, args.length, args.chunk, args.backward, dtype) for v in args.variants}
    ref = None
    for v, (c, a, g, _) in built.items():
        out = jax.block_until_ready(c(a, g))
        leaf = np.asarray(jax.tree.leaves(out)[0], np.float32)
        if ref is None:
            ref = leaf
        err = float(np.max(np.abs(leaf - ref)) / (np.max(np.abs(ref)) + 1e-30))
        built[v] = (c, a, g, {**built[v][3], "max_rel_diff_vs_first": err})
    times = {v: [] for v in built}
    for _ in range(args.rounds):
        for v, (c, a, g, _) in built.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(a, g))
            times[v].append(time.perf_counter() - t0)
    base = statistics.median(times[args.variants[0]])
    return {v: {"median_s": statistics.median(ts), "ratio_to_first": statistics.median(ts) / base,
                "temp_mib": built[v][3].get("temp_bytes", 0) / 2**20,
                "max_rel_diff_vs_first": built[v][3]["max_rel_diff_vs_first"]} for v, ts in times.items()}


def cmd_ab(args, rest) -> dict:
    """Alternates subprocess runs of `rest` (a `step ...` command line) under each env variant."""
    results = {e: [] for e in args.env}
    for _ in range(args.rounds):
        for e in args.env:
            env = dict(os.environ)
            if e:
                k, v = e.split("=", 1)
                env[k] = v
            out = subprocess.run([sys.executable, "-m", "benchmarks.experiments", *rest], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[e].append(json.loads(out))
    base = statistics.median(r["median_s"] for r in results[args.env[0]])
    return {e or "(default)": {"median_s": statistics.median(r["median_s"] for r in rs),
                               "ratio_to_first": statistics.median(r["median_s"] for r in rs) / base,
                               "runs": [round(r["median_s"], 3) for r in rs]} for e, rs in results.items()}


def main():
    argv = sys.argv[1:]
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("model")
    s.add_argument("--patch", type=int, default=1)
    s.add_argument("--image", type=int, default=32)
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--fwd-bwd", action="store_true")
    s.add_argument("--set", action="append", help="create_model override key=value (repeatable)")
    a = sub.add_parser("ab")
    a.add_argument("--env", action="append", required=True, help='"" or NAME=value (repeatable)')
    a.add_argument("--rounds", type=int, default=2)
    x = sub.add_parser("ssd-ab")
    x.add_argument("--length", type=int, default=16384)
    x.add_argument("--chunk", type=int, default=128)
    x.add_argument("--backward", action="store_true")
    x.add_argument("--dtype", default="float32")
    x.add_argument("--rounds", type=int, default=5)
    x.add_argument("--variants", nargs="+", default=["current", "decay_diff", "noremat", "decay_diff+noremat"])
    args = ap.parse_args(argv)
    if args.cmd == "step":
        out = cmd_step(args)
    elif args.cmd == "ab":
        out = cmd_ab(args, rest)
    else:
        out = cmd_ssd_ab(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
