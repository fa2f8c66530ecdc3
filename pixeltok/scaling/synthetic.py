"""SYNTHETIC run workdirs from a known law, for tests and the notebook fallback (no training involved).

Writes `config.json` + `metrics.jsonl` in the workdir format of CONTRACT §3 for each (model, patch size, seed):
final eval loss = (E + A·p^α)·exp(ε), ε ~ N(0, noise²) in log space; the eval curve decays to it as
L(t) = L_final·(1 + c·((T/t)^0.5 − 1)); FLOPs = train_flops_per_image × batch × step with train FLOPs per image
∝ tokens. Every config carries `"synthetic": true` and the generating law so nothing mistakes it for a result.
"""

from __future__ import annotations

import json
import os

import numpy as np

# Laws of the committed fixtures (tests/fixtures/scaling_runs): two architectures at one size, plus a second
# Adventurer size with the same exponent (for the joint fit).
DEFAULT_LAWS = {
    "vit_tiny": {"E": 0.30, "A": 0.020, "alpha": 1.0, "num_params_non_embedding": 5.4e6},
    "adventurer_tiny": {"E": 0.28, "A": 0.025, "alpha": 0.8, "num_params_non_embedding": 8.6e6},
    "adventurer_small": {"E": 0.25, "A": 0.020, "alpha": 0.8, "num_params_non_embedding": 3.3e7},
}
FLOPS_PER_TOKEN_PER_PARAM = 6.0     # ≈ 3 × forward (2 FLOPs per param per token): a made-up but sane scale


def write_synthetic_runs(root: str, *, laws: dict | None = None, patch_sizes=(14, 7, 4, 2, 1), seeds=(0, 1),
                         image_size: int = 28, noise: float = 2e-3, total_steps: int = 1000, eval_every: int = 100,
                         batch_size: int = 128, rng_seed: int = 0) -> list[str]:
    """Writes one workdir per (model, p, seed) under `root`; returns their paths (sorted)."""
    laws = DEFAULT_LAWS if laws is None else laws
    rng = np.random.default_rng(rng_seed)
    paths = []
    for model, law in laws.items():
        for p in patch_sizes:
            for seed in seeds:
                tokens = (image_size // p) ** 2 + (2 if model.startswith("adventurer") else 1)
                n_ne = float(law.get("num_params_non_embedding", 1e6))
                fpi = FLOPS_PER_TOKEN_PER_PARAM * n_ne * tokens
                final = (law["E"] + law["A"] * p ** law["alpha"]) * float(np.exp(rng.normal(0.0, noise)))
                name = f"{model}_p{p}_s{seed}"
                path = os.path.join(root, name)
                os.makedirs(path, exist_ok=True)
                cfg = {"synthetic": True, "synthetic_law": {"form": "E + A * p**alpha", **law, "noise_log": noise},
                       "model_name": model, "patch_size": p, "image_size": image_size, "seed": seed,
                       "dataset": "fashion_mnist", "batch_size": batch_size, "total_steps": total_steps,
                       "num_params": n_ne + 1e3 * tokens, "num_params_non_embedding": n_ne,
                       "tokens_per_image": tokens, "train_flops_per_image": fpi, "num_devices": 1,
                       "mesh": {"data": 1, "fsdp": 1}}
                with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
                    json.dump(cfg, f, indent=1)
                with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
                    for step in range(eval_every // 2, total_steps + 1, eval_every // 2):
                        curve = final * (1.0 + 0.5 * ((total_steps / step) ** 0.5 - 1.0))
                        common = {"step": step, "examples_seen": step * batch_size,
                                  "tokens_seen": step * batch_size * tokens, "flops": fpi * batch_size * step,
                                  "wall_time": 0.01 * step * tokens}
                        f.write(json.dumps({**common, "split": "train", "loss": curve * 1.05, "lr": 1e-3,
                                            "grad_norm": 1.0, "img_per_sec": 1e5 / tokens}) + "\n")
                        if step % eval_every == 0:
                            acc = float(np.clip(1.0 - 0.35 * curve, 0.0, 1.0))
                            f.write(json.dumps({**common, "split": "eval", "loss": curve, "accuracy": acc}) + "\n")
                paths.append(path)
    return sorted(paths)


if __name__ == "__main__":   # regenerate the committed fixtures: python -m pixeltok.scaling.synthetic DIR
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/scaling_runs"
    print(f"wrote {len(write_synthetic_runs(out))} synthetic runs to {out}")
