"""SSD scan benchmark: `pixeltok.ops.ssd` chunked vs recurrent vs a full-length associative scan of per-step states.

Shapes are Adventurer-Tiny's mixer (heads 8 × head_dim 64, d_state 64, one group), batch 1, lengths 1k … 64k
(GPU: batch 8, up to 256k).
Forward and forward+backward (gradient of <y, g> for a fixed random g w.r.t. all five inputs). Configurations
whose compiled memory exceeds the budget are compiled but not run, with the reason recorded.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from benchmarks.common import log, time_calls
from benchmarks.limits import compile_stats
from pixeltok.ops.ssd import ssd, ssd_flops

HEADS, HEAD_DIM, STATE, GROUPS = 8, 64, 64, 1


def ssd_assoc_full(x, dt, A, B, C):
    """The SSD recurrence as ONE `associative_scan` over every token's (log-decay, state) pair.

    Materialises the per-step states (batch, length, heads, head_dim, state) in float32: memory ~ L·D·N, which is
    why pixeltok's `ssd` scans over chunk states instead (docs/ssd.md, "Memory"). Exponents are dt·A ≤ 0.
    x: (b, L, H, P); dt: (b, L, H); A: (H,); B, C: (b, L, G, N) -> y (b, L, H, P) in x.dtype.
    """
    reps = x.shape[2] // B.shape[2]
    bh = jnp.repeat(B.astype(jnp.float32), reps, axis=2)
    ch = jnp.repeat(C.astype(jnp.float32), reps, axis=2)
    dt = dt.astype(jnp.float32)
    a = dt * A.astype(jnp.float32)
    u = (x.astype(jnp.float32) * dt[..., None])[..., :, None] * bh[..., None, :]      # (b, L, H, P, N)

    def combine(left, right):
        (a1, s1), (a2, s2) = left, right
        return a1 + a2, jnp.exp(a2)[..., None, None] * s1 + s2

    _, states = jax.lax.associative_scan(combine, (a, u), axis=1)
    return jnp.einsum("blhpn,blhn->blhp", states, ch).astype(x.dtype)


def nominal_flops(impl: str, length: int, chunk: int) -> float:
    """Forward FLOPs each algorithm performs (×3 for forward+backward, the usual convention).

    chunked: GEMM work of docs/ssd.md "FLOPs" (`pixeltok.ops.ssd.ssd_flops`, padded length). recurrent: 5·N·D per
    token (decay·S, outer product, add, y = S·C). assoc: 7·N·D (outer product, ~2L combines of 2·N·D, y).
    """
    d = HEADS * HEAD_DIM
    if impl == "chunked":
        return ssd_flops(length, HEADS, HEAD_DIM, STATE, GROUPS, chunk)
    return float(length * (5 if impl == "recurrent" else 7) * STATE * d)


def make_inputs(batch: int, length: int, dtype):
    """Realistic SSD inputs: dt in Mamba's init range [1e-3, 1e-1], A in [-16, -1], unit-variance x, B, C."""
    k = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(k[0], (batch, length, HEADS, HEAD_DIM), jnp.float32).astype(dtype)
    dt = jnp.exp(jax.random.uniform(k[1], (batch, length, HEADS), jnp.float32, jnp.log(1e-3), jnp.log(1e-1)))
    A = -jax.random.uniform(k[2], (HEADS,), jnp.float32, 1.0, 16.0)
    B = (jax.random.normal(k[3], (batch, length, GROUPS, STATE), jnp.float32) / STATE ** 0.5).astype(dtype)
    C = (jax.random.normal(k[4], (batch, length, GROUPS, STATE), jnp.float32) / STATE ** 0.5).astype(dtype)
    g = jax.random.normal(k[5], (batch, length, HEADS, HEAD_DIM), jnp.float32).astype(dtype)
    return (x, dt, A, B, C), g


def scan_fn(impl: str, chunk: int, backward: bool):
    """The jitted function to time: forward y, or all five input gradients of <y, g>."""
    if impl == "assoc":
        fwd = ssd_assoc_full
    else:
        def fwd(x, dt, A, B, C):
            return ssd(x, dt, A, B, C, chunk_size=chunk or 128, impl=impl)
    if not backward:
        return jax.jit(lambda args, g: fwd(*args))

    def loss(args, g):
        return jnp.vdot(fwd(*args).astype(jnp.float32), g.astype(jnp.float32))
    return jax.jit(jax.grad(loss))


def bench_scan_config(impl: str, length: int, chunk: int | None, backward: bool, *, dtype=jnp.float32,
                      batch: int = 1, mem_budget: int, max_time_s: float,
                      run: bool = True) -> dict:
    """Compiles (always) and times (if it fits) one scan configuration; returns a result row."""
    row = {"impl": impl, "length": length, "chunk": chunk, "pass": "fwd+bwd" if backward else "fwd",
           "batch": batch, "dtype": jnp.dtype(dtype).name}
    args, g = make_inputs(batch, length, dtype)
    f = scan_fn(impl, chunk or 0, backward)
    t0 = time.perf_counter()
    try:
        compiled = f.lower(args, g).compile()
    except Exception as e:  # noqa: BLE001 - a compile failure is a result to record, not a crash
        row["skipped"] = f"compile failed: {type(e).__name__}: {str(e)[:160]}"
        return row
    row["compile_s"] = time.perf_counter() - t0
    row.update(compile_stats(compiled))
    if row.get("total_bytes", 0) > mem_budget:
        row["skipped"] = (f"compiled memory {row['total_bytes'] / 2**30:.1f} GiB > budget "
                          f"{mem_budget / 2**30:.1f} GiB")
        return row
    if not run:
        row["skipped"] = "not timed (grid)"
        return row
    try:
        t = time_calls(lambda: jax.block_until_ready(compiled(args, g)), warmup=1, min_reps=3, max_reps=20,
                       min_time_s=1.0, max_time_s=max_time_s)
    except Exception as e:  # noqa: BLE001 - e.g. a GPU allocator that fragments past the compiled estimate
        row["skipped"] = f"run failed: {type(e).__name__}: {str(e)[:160]}"
        return row
    row.update(time_s=t["median_s"], min_s=t["min_s"], reps=t["reps"])
    flops = nominal_flops(impl, length, chunk or 0) * (3.0 if backward else 1.0) * batch
    row["nominal_flops"] = flops
    row["flop_per_s"] = flops / t["median_s"]
    if "xla_bytes_accessed" in row:
        row["bytes_per_s"] = row["xla_bytes_accessed"] / t["median_s"]
    return row  # fractions of the machine limits: run.attach_fractions, against the best of the limit rounds


def scan_grid(quick: bool, gpu: bool = False) -> list[dict]:
    """(impl, length, chunk, backward) configurations, cheapest first (GPU: up to 256k tokens)."""
    lengths = [1024, 4096] if quick else [1024, 4096, 16384, 65536] + ([262144] if gpu else [])
    if os.environ.get("BENCH_SCAN_LENGTHS"):  # e.g. "4096,65536": a subset (a GPU lease's last minutes)
        lengths = [int(x) for x in os.environ["BENCH_SCAN_LENGTHS"].split(",")]
    chunks = [128] if quick else [64, 128, 256]
    grid = []
    for length in lengths:
        for backward in (False, True):
            grid += [dict(impl="chunked", length=length, chunk=q, backward=backward) for q in chunks]
            grid.append(dict(impl="recurrent", length=length, chunk=None, backward=backward))
            grid.append(dict(impl="assoc", length=length, chunk=None, backward=backward))
    return grid


def run_scan_bench(quick: bool, mem_budget: int, gpu: bool = False, save=None) -> list[dict]:
    """Runs the scan grid; one row per configuration (skipped ones carry a `skipped` reason).

    On a GPU the batch is 8 (batch 1 at 1k tokens is a few microseconds of work per kernel: launch-bound) and the
    sequential recurrence stops at 16k tokens (a few kernel launches per token: seconds per call beyond that).
    """
    rows = []
    for cfg in scan_grid(quick, gpu):
        if gpu and cfg["impl"] == "recurrent" and cfg["length"] > 16384:
            continue
        row = bench_scan_config(cfg["impl"], cfg["length"], cfg["chunk"], cfg["backward"], mem_budget=mem_budget,
                                max_time_s=2.0 if gpu else 4.0 if quick else 8.0,
                                batch=8 if gpu else 1)
        msg = row.get("skipped") or f"{row['time_s'] * 1e3:.1f} ms, {row.get('total_bytes', 0) / 2**20:.0f} MiB"
        log(f"scan {cfg['impl']:9s} L={cfg['length']:6d} b={row['batch']} Q={cfg['chunk']} {row['pass']:7s}: {msg}")
        rows.append(row)
        if save:
            save(rows)  # a run cut short keeps what it measured
    return rows
