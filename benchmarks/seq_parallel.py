"""Sequence parallelism: step time and compiled per-device memory for seq = 1, 2, 4, 8 (docs/sharding.md).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.seq_parallel [--out PATH] [--quick]

A small Adventurer and ViT (width 64, depth 2, remat) at 4,096 patches (64x64 images, p = 1), one image,
train-mode loss + gradients, jitted under a mesh {"data": 1, "seq": S} of S virtual CPU devices. Memory is XLA's
`memory_analysis()` of the compiled step per device (temp + arguments), exact and reproducible. Step time is the
median of a few runs after warm-up; on virtual CPU devices all S shards share the same 2 cores, so the time shows
the overhead of the sharded program (collectives, padding, the extra SSD correction), not a speed-up; a real
multi-device machine is needed for throughput scaling. Writes a Markdown table (default
benchmarks/results/seq_parallel_cpu.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from pixeltok import sharding  # noqa: E402
from pixeltok.models import create_model  # noqa: E402
from pixeltok.ops import seq_parallel  # noqa: E402

_all_gather, _ring = seq_parallel.attention, seq_parallel.ring_attention

MIB = 1024**2
MODELS = {
    "adventurer_tiny": dict(width=64, depth=2, d_state=16, head_dim=32, chunk_size=128),
    "vit_tiny": dict(width=64, depth=2),
    "vit_tiny/all_gather": dict(width=64, depth=2),  # the ViT with all-gathered K/V instead of ring attention
}


def measure(name: str, seq: int, *, image: int = 64, repeats: int = 3) -> dict:
    """Compiled per-device memory and median step time of one train-mode loss+grad step on a seq-S mesh."""
    kw = dict(MODELS[name], num_classes=10, num_channels=1, remat="nothing_saveable")
    mesh = sharding.make_mesh({"data": 1, "seq": seq}, jax.devices()[:seq])
    # A/B of the ViT's sharded attention: the model calls `seq_parallel.ring_attention`, swapped here for the
    # all-gather form.
    seq_parallel.ring_attention = _all_gather if name.endswith("/all_gather") else _ring
    model = create_model(name.split("/")[0], 1, image, **kw)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = np.random.default_rng(0).standard_normal((1, image, image, 1)).astype(np.float32)
    labels = np.zeros((1,), np.int32)

    def loss_fn(params, images, labels):
        m = nnx.merge(graphdef, params, rest)
        return optax.softmax_cross_entropy_with_integer_labels(m(images, train=True), labels).mean()

    replicated = NamedSharding(mesh, P())
    with jax.set_mesh(mesh):
        params = jax.device_put(params, replicated)
        images, labels = jax.device_put((images, labels), replicated)
        step = jax.jit(jax.value_and_grad(loss_fn))
        t0 = time.perf_counter()
        compiled = step.lower(params, images, labels).compile()
        compile_s = time.perf_counter() - t0
        ma = compiled.memory_analysis()
        jax.block_until_ready(compiled(params, images, labels))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, images, labels))
            times.append(time.perf_counter() - t0)
    seq_parallel.ring_attention = _ring
    return dict(model=name, seq=seq, tokens=(image * image) + 1 + (name.startswith("adventurer")),
                temp_mib=ma.temp_size_in_bytes / MIB, arg_mib=ma.argument_size_in_bytes / MIB,
                per_device_mib=(ma.temp_size_in_bytes + ma.argument_size_in_bytes) / MIB,
                step_s=statistics.median(times), compile_s=compile_s)


def render(rows: list[dict]) -> str:
    lines = ["# Sequence parallelism on virtual CPU devices", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; "
             "`python -m benchmarks.seq_parallel`.", "",
             "One 64x64 image at p = 1 (4,096 patches), width 64, depth 2, remat `nothing_saveable`, train-mode "
             "loss + grads. Memory: XLA `memory_analysis()` per device (temp + arguments). Time: median step; the "
             "S virtual devices share the same CPU cores, so a time ratio > 1 is the sharded program's overhead, "
             "not a slow-down a real S-device mesh would see.", "",
             "| model | seq | tokens | temp MiB | args MiB | per-device MiB | vs seq=1 | step s | vs seq=1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["model"]: r for r in rows if r["seq"] == 1}
    for r in rows:
        b = base.get(r["model"], r)
        lines.append(f"| {r['model']} | {r['seq']} | {r['tokens']:,} | {r['temp_mib']:.2f} | {r['arg_mib']:.2f} | "
                     f"{r['per_device_mib']:.2f} | {r['per_device_mib'] / b['per_device_mib']:.3f} | "
                     f"{r['step_s']:.3f} | {r['step_s'] / b['step_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/seq_parallel_cpu.md")
    ap.add_argument("--quick", action="store_true", help="seq 1 and 4 only, one timed run")
    args = ap.parse_args()
    seqs = (1, 4) if args.quick else (1, 2, 4, 8)
    rows = []
    for name in MODELS:
        for s in seqs:
            rows.append(measure(name, s, repeats=1 if args.quick else 3))
            print(rows[-1], flush=True)
    text = render(rows)
    print(text)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
