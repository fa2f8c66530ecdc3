"""SYNTHETIC run workdirs from a known law, for tests and the notebook fallback (no training involved).

Writes `config.json` + `metrics.jsonl` in the run-workdir format of docs/architecture.md for each
(model, patch size, seed):
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


# A joint law L(p, C) = E + A p^alpha + B (C / F(p))^(-beta), F(p) = 6 N tokens(p): its compute-optimal patch size
# moves from ~4.7 at 1e12 FLOPs to ~1.4 at 3.2e13 on 16x16 images (the frontier tests and notebook fallback).
FRONTIER_LAW = {"E": 0.30, "A": 0.05, "alpha": 0.5, "B": 40.0, "beta": 0.6, "num_params_non_embedding": 2e5}


def frontier_flops_per_image(p: float, image_size: int, law: dict = FRONTIER_LAW, extra_tokens: int = 2) -> float:
    """Training FLOPs per image of the synthetic frontier runs: 6 N (tokens), tokens = (R/p)² + extra."""
    return FLOPS_PER_TOKEN_PER_PARAM * law["num_params_non_embedding"] * ((image_size / p) ** 2 + extra_tokens)


def frontier_law(p, C, image_size: int = 16, law: dict = FRONTIER_LAW):
    """The generating law of `write_synthetic_frontier_runs` at patch sizes p and FLOPs C (broadcast)."""
    p, C = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(C, np.float64))
    F = FLOPS_PER_TOKEN_PER_PARAM * law["num_params_non_embedding"] * ((image_size / p) ** 2 + 2)
    return law["E"] + law["A"] * p ** law["alpha"] + law["B"] * (C / F) ** (-law["beta"])


def write_synthetic_frontier_runs(root: str, *, law: dict | None = None, patch_sizes=(8, 4, 2, 1), seeds=(0, 1),
                                  budgets=tuple(1e12 * 2.0 ** k for k in range(6)), image_size: int = 16,
                                  noise: float = 3e-3, batch_size: int = 64, model: str = "adventurer_tiny",
                                  rng_seed: int = 0, decay_fraction: float = 0.2) -> list[str]:
    """WSD families from a known joint law: per (p, seed) one long run at max(budgets) and a cooldown branch at
    every other budget, each with a final eval = law(p, budget)·exp(ε), ε ~ N(0, noise²), at flops = budget (and
    two earlier, unannealed evals). Returns the workdirs (sorted). Every config carries `"synthetic": true`."""
    law = FRONTIER_LAW if law is None else law
    rng = np.random.default_rng(rng_seed)
    paths = []
    budgets = sorted(float(b) for b in budgets)
    for p in patch_sizes:
        fpi = frontier_flops_per_image(p, image_size, law)
        for seed in seeds:
            long_steps = int(round(budgets[-1] / (fpi * batch_size)))
            for C in budgets:
                steps = int(round(C / (fpi * batch_size)))
                name = f"{model.split('_')[0]}_p{p}_s{seed}_n{steps}"
                path = os.path.join(root, name)
                os.makedirs(path, exist_ok=True)
                branch = steps != long_steps
                cfg = {"synthetic": True, "synthetic_law": {"form": "E + A*p**alpha + B*(C/F(p))**(-beta)", **law,
                                                            "noise_log": noise},
                       "model_name": model, "patch_size": p, "image_size": image_size, "seed": seed,
                       "dataset": "fashion_mnist", "task": "classification", "batch_size": batch_size,
                       "total_steps": steps, "schedule": "wsd", "wsd_decay_fraction": decay_fraction,
                       "cooldown_from": (f"{model.split('_')[0]}_p{p}_s{seed}_n{long_steps}:"
                                         f"{steps - max(int(round(decay_fraction * steps)), 1)}" if branch else ""),
                       "num_params_non_embedding": law["num_params_non_embedding"],
                       "tokens_per_image": (image_size // p) ** 2 + 2, "train_flops_per_image": fpi}
                with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
                    json.dump(cfg, f, indent=1)
                final = float(frontier_law(p, C, image_size, law)) * float(np.exp(rng.normal(0.0, noise)))
                with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
                    for frac, v in ((0.25, None), (0.5, None), (1.0, final)):
                        s = max(int(round(frac * steps)), 1)
                        val = v if v is not None else 1.1 * float(frontier_law(p, fpi * batch_size * s, image_size,
                                                                              law))
                        acc = float(np.clip(1.0 - 0.35 * val, 0.0, 1.0))
                        f.write(json.dumps({"step": s, "split": "eval", "examples_seen": s * batch_size,
                                            "flops": (C if v is not None else fpi * batch_size * s), "loss": val,
                                            "accuracy": acc, "best_accuracy": acc}) + "\n")
                paths.append(path)
    return sorted(paths)


if __name__ == "__main__":   # regenerate the committed fixtures: python -m pixeltok.scaling.synthetic DIR
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/scaling_runs"
    print(f"wrote {len(write_synthetic_runs(out))} synthetic runs to {out}")
