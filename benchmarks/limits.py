"""Machine limits measured in the benchmark's own process: matmul FLOP/s and memory bandwidth.

Every efficiency the benchmark reports is achieved / one of these, measured minutes apart in the same run, never
against a datasheet (these shared 2-core machines drift ±10–15 % and more while other jobs run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.common import time_calls


def compile_stats(compiled) -> dict:
    """Memory (bytes) and XLA cost-analysis figures of a compiled executable; missing fields are omitted."""
    out = {}
    try:
        m = compiled.memory_analysis()
        out.update(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
                   alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes))
        # What the executable needs at once: live arguments + fresh outputs + scratch (donated outputs alias).
        out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                              + out["temp_bytes"])
    except (AttributeError, NotImplementedError, RuntimeError):
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost:
            out["xla_flops"] = float(cost.get("flops", 0.0))
            out["xla_bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
    except (AttributeError, NotImplementedError, RuntimeError):
        pass
    return out


def matmul_flops(n: int, dtype, *, max_time_s: float) -> dict:
    """FLOP/s of an (n, n) @ (n, n) matmul with float32 output (bf16 inputs: float32 accumulation)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    t = time_calls(lambda: f(a, b).block_until_ready(), warmup=2, min_reps=5, max_reps=50, min_time_s=1.0,
                   max_time_s=max_time_s)
    flops = 2.0 * n ** 3
    return {"n": n, "flop_per_s": flops / t["median_s"], "best_flop_per_s": flops / t["min_s"], **t}


def copy_bandwidth(nbytes: int, *, max_time_s: float) -> dict:
    """Bytes/s of an elementwise update that reads and writes a donated float32 buffer in place (2·nbytes moved).

    Donation matters: a fresh ≥ 64 MiB output runs at 5–9 GB/s on these CPUs (page faults), in place at ~80.
    """
    n = nbytes // 4
    f = jax.jit(lambda x: x * 0.999 + 1.0, donate_argnums=0)
    state = {"x": jnp.zeros((n,), jnp.float32) + 1.0}

    def call():
        state["x"] = f(state["x"])
        state["x"].block_until_ready()

    t = time_calls(call, warmup=2, min_reps=5, max_reps=30, min_time_s=1.0, max_time_s=max_time_s)
    moved = 2.0 * n * 4
    return {"bytes": n * 4, "bytes_per_s": moved / t["median_s"], "best_bytes_per_s": moved / t["min_s"], **t}


def fresh_output_bandwidth(nbytes: int, *, max_time_s: float) -> dict:
    """Same update without donation: every call writes a fresh buffer (for the report; not a ceiling)."""
    n = nbytes // 4
    f = jax.jit(lambda x: x * 0.999 + 1.0)
    x = jnp.zeros((n,), jnp.float32) + 1.0
    t = time_calls(lambda: f(x).block_until_ready(), warmup=2, min_reps=5, max_reps=30, min_time_s=1.0,
                   max_time_s=max_time_s)
    return {"bytes": n * 4, "bytes_per_s": 2.0 * n * 4 / t["median_s"], **t}


def probe_f32_matmul(seconds: float = 1.0) -> float:
    """A ~1 s f32 matmul probe (1024³) taken right before a configuration: its FLOP/s says how much of the CPU the
    configuration got (other jobs come and go within minutes), and gives a same-minute efficiency denominator."""
    return matmul_flops(1024, jnp.float32, max_time_s=seconds)["flop_per_s"]


def measure_limits(quick: bool, gpu: bool = False) -> dict:
    """f32 and bf16→f32 matmul FLOP/s, donated copy and fresh-output bandwidth.

    CPU: 2048³ matmuls, 256 MiB / 1 GiB buffers. GPU: 8192³ matmuls (a 2048³ product is launch-bound on an H100)
    and 4 GiB buffers (well past the L2); the f32 matmul runs at XLA's default precision, which on NVIDIA tensor-core
    GPUs is TF32, i.e. what an f32 model gets without a precision flag.
    """
    budget = 4.0 if quick else 8.0
    n = 8192 if gpu else 2048
    size = (4096 if gpu else 256 if quick else 1024) * 2**20
    return {
        "f32_matmul": matmul_flops(n, jnp.float32, max_time_s=budget),
        "bf16_f32_matmul": matmul_flops(n, jnp.bfloat16, max_time_s=budget),
        "copy_donated": copy_bandwidth(size, max_time_s=budget),
        "copy_fresh_output": fresh_output_bandwidth(size // 4, max_time_s=budget),
    }


def combine_limits(runs: list[dict]) -> dict:
    """The ceilings used as denominators: the best median over the measurement rounds (start and end of the run).

    The best is the least disturbed by other jobs, so efficiencies are conservative (never inflated by a slow
    limit measurement).
    """
    return {
        "f32_matmul_flop_per_s": max(r["f32_matmul"]["flop_per_s"] for r in runs),
        "bf16_f32_matmul_flop_per_s": max(r["bf16_f32_matmul"]["flop_per_s"] for r in runs),
        "copy_bytes_per_s": max(r["copy_donated"]["bytes_per_s"] for r in runs),
        "fresh_output_bytes_per_s": max(r["copy_fresh_output"]["bytes_per_s"] for r in runs),
    }
