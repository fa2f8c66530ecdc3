"""One long-sequence training step in a fresh process: Adventurer-B at p=1, 224² (50,178 tokens), batch 1.

A fresh process per configuration, because the device allocator's `peak_bytes_in_use` only ever grows: run after
other configurations it would report theirs. `benchmarks/run.py` (section `long`) runs this as a subprocess:

    python -m benchmarks.long_step --model adventurer_base --patch 1 --image 224 --out row.json

The row holds the step time (median of timed steps after a warm-up), the analytic FLOPs and the model FLOP
utilisation against a bf16 matmul measured in the same process after the step (so its buffers do not count in the
peak), XLA's compiled memory and the allocator's peak bytes.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from benchmarks.common import log, write_json
from benchmarks.limits import matmul_flops
from benchmarks.train_step import bench_train_config
from pixeltok.models import ADVENTURER_DEFAULTS, resolve_architecture


def peak_device_bytes() -> int | None:
    """The device allocator's peak bytes in use since the process started (GPU/TPU; None where not reported)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def ssd_chunk(model: str, chunk_size: int | None) -> int | None:
    """The SSD chunk length a row reports: the given one, Adventurer's default, or None for a ViT."""
    if resolve_architecture(model)[0] != "adventurer":
        return None
    return chunk_size or ADVENTURER_DEFAULTS["chunk_size"]


def run_long_step(model: str, patch: int, image: int, batch: int, *, remat: str, dtype: str, classes: int,
                  max_time_s: float, chunk_size: int | None = None) -> dict:
    """Compiles and times one train step; returns the result row with peak device memory and MFU."""
    overrides = {"dtype": dtype, "remat": remat}
    if chunk_size:
        overrides["chunk_size"] = chunk_size
    row = bench_train_config(model, patch, image, batch, classes=classes, overrides=overrides, limits=None,
                             mem_budget=2**62, max_time_s=max_time_s)
    row["peak_bytes_in_use"] = peak_device_bytes()
    gpu = jax.default_backend() == "gpu"
    bf16 = matmul_flops(8192 if gpu else 2048, jnp.bfloat16, max_time_s=4.0)["flop_per_s"]
    row["bf16_f32_matmul_flop_per_s"] = bf16
    row["mfu_bf16"] = row["flop_per_s"] / bf16
    row["device_kind"] = jax.devices()[0].device_kind
    row["chunk_size"] = ssd_chunk(model, chunk_size)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="adventurer_base")
    ap.add_argument("--patch", type=int, default=1)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--remat", default="nothing_saveable", help="jax.checkpoint_policies name, 'full' or ''")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--chunk-size", type=int, default=None, help="SSD chunk length (Adventurer; default 128)")
    ap.add_argument("--max-time-s", type=float, default=30.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    log(f"long step {args.model} p{args.patch} {args.image}² ×{args.batch} on {jax.devices()[0].device_kind}")
    try:
        row = run_long_step(args.model, args.patch, args.image, args.batch, remat=args.remat, dtype=args.dtype,
                            classes=args.classes, max_time_s=args.max_time_s, chunk_size=args.chunk_size)
    except Exception as e:  # noqa: BLE001 - the parent records the reason in the report
        row = {"model": args.model, "patch": args.patch, "image": args.image, "batch": args.batch,
               "remat": args.remat, "chunk_size": ssd_chunk(args.model, args.chunk_size),
               "skipped": f"{type(e).__name__}: {str(e)[:300]}"}
    write_json(args.out, row)
    msg = row.get("skipped") or (f"{row['step_s']:.3f} s/step, MFU {row['mfu_bf16']:.1%}, peak "
                                 f"{(row['peak_bytes_in_use'] or 0) / 2**30:.2f} GiB, compiled "
                                 f"{row.get('total_bytes', 0) / 2**30:.2f} GiB")
    log(f"  {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
