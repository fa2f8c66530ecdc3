"""Issue-15 sweep: patch size on the compute frontier (Fashion-MNIST at 16x16, Adventurer and ViT, p = 8, 4, 2, 1).

    python launch/sweep.py --sweep configs/sweeps/patch_frontier.py --root runs/patch_frontier
    python -m pixeltok.scaling --runs runs/patch_frontier --out reports/patch_frontier --frontier

Design (reports/patch_frontier/README.md has the sizing, throughput.md the measured throughput):
- One WSD lineage per (arch, p, seed): a long run at the largest FLOP budget C_max and a cooldown branch at every
  smaller budget (launch/sweep.py `wsd_budgets`): the branch restores the long run's state at its own decay start
  and finishes with its own cooldown, so every budget gets a properly annealed loss at the cost of its cooldown.
- Budgets (training FLOPs per run, the same for every patch size: iso-FLOP slices): C_max / 2^k, k = 0..5, i.e.
  5.6e11 ... 1.8e13 (32x). In steps of batch 64: n = round(C / (64 F(p))), F(p) = training FLOPs per image
  (pixeltok.flops, `FLOPS_PER_IMAGE` below). A budget that gives fewer than MIN_STEPS steps is not run for that p (a
  p = 1 run of 16 or 33 steps is all warmup; it is nowhere near the frontier), so p = 1 has 4 budgets, every other
  p all 6, and every budget has >= 3 patch sizes.
- Recipe, identical at every point: width 64, depth 4 (Adventurer chunk 128), batch 64, AdamW lr 2e-3 (not batch
  scaled), 20 warmup steps, WSD with a 20 % 1-sqrt cooldown to 1e-5; regularisation by weight decay 0.3 and no
  augmentation, the whole 16x16 image at eval (crop_ratio 1.0): the measured pair in reports/patch_frontier/README.md
  (shift/flip augmentation at 16x16 cost 0.06-0.3 in eval loss at these budgets; wd 0.3 lowered the final loss and
  halved its rise after the minimum); evals on a fixed 2,560-image test subset at 10 log-spaced steps and 8 steps
  evenly over each run's cooldown (`eval_schedule=log:10+cooldown:8`): a branch records the parent's evals up to its
  branch step, and the cooldown ones give even a 53-step branch 8 points of its own.
- Seeds 0 and 1; seed outermost, large patches first, Adventurer first: a sweep cut short still has complete
  lineages of seed 0.
"""

# Training FLOPs per image (pixeltok.flops.train_flops_per_image at image_size 16, width 64, depth 4; Adventurer
# chunk_size ADVENTURER_CHUNK): fixed numbers so loading the sweep does not import JAX; tests/test_launch.py checks them.
FLOPS_PER_IMAGE = {
    ("adventurer_tiny", 8): 15_206_400, ("adventurer_tiny", 4): 45_619_200,
    ("adventurer_tiny", 2): 167_270_400, ("adventurer_tiny", 1): 653_875_200,
    ("vit_tiny", 8): 5_975_040, ("vit_tiny", 4): 20_941_824,
    ("vit_tiny", 2): 89_656_320, ("vit_tiny", 1): 506_072_064,
}
ARCHS = {"adventurer": "adventurer_tiny", "vit": "vit_tiny"}
PATCHES = (8, 4, 2, 1)
SEEDS = (0, 1)
RES = 16
BATCH = 64
C_MAX = 1.8e13
BUDGETS = tuple(C_MAX / 2 ** k for k in range(5, -1, -1))      # 5.6e11 ... 1.8e13 FLOPs
MIN_STEPS = 50
# chunk_size 128 puts every sequence here but p = 1's (258 tokens: 3 chunks of 86) in one chunk, which skips the
# chunk states and the inter-chunk scan: 1.5-3.5x faster SSD steps than chunk 32 (throughput.md). The count in
# FLOPS_PER_IMAGE follows pixeltok.flops' convention (the SSD term at the nominal Q = chunk_size per token), so the
# Adventurer FLOPs are 1.21x those at chunk 32 for every p alike: the comparison across patch sizes is unchanged.
ADVENTURER_CHUNK = 128
DECAY_FRACTION = 0.2

RECIPE = {
    "model.width": 64,
    "model.depth": 4,
    "batch_size": BATCH,
    "warmup_steps": 20,
    "lr": 2e-3,
    "lr_scale_batch": 0,
    "wd": 0.3,
    "end_lr": 1e-5,
    "wsd_decay_shape": "sqrt",
    "train_augment": "none",
    "hflip": False,
    "crop_ratio": 1.0,
    "eval_schedule": "log:10+cooldown:8",
    "eval_batch_size": 256,
    "eval_max_batches": 10,
    "checkpoint_every_steps": 1000,
    "log_every_steps": 50,
}


def budget_steps(model_name: str, p: int) -> list[int]:
    """Step counts of the budgets this (model, p) runs: round(C / (batch · F(p))) >= MIN_STEPS."""
    f = FLOPS_PER_IMAGE[(model_name, p)]
    steps = [int(round(c / (BATCH * f))) for c in BUDGETS]
    return [n for n in steps if n >= MIN_STEPS]


def get_sweep() -> list[dict]:
    """One WSD family entry per (seed, arch, p) for launch/sweep.py (expanded there into long run + branches)."""
    out = []
    for seed in SEEDS:
        for arch, model_name in ARCHS.items():
            for p in PATCHES:
                overrides = {"model_name": model_name, "seed": seed, **RECIPE}
                if arch == "adventurer":
                    overrides["model.chunk_size"] = ADVENTURER_CHUNK
                out.append({"name": f"{arch}_p{p}_s{seed}", "config": f"configs/quickstart.py:p{p},res={RES}",
                            "overrides": overrides, "wsd_budgets": budget_steps(model_name, p),
                            "wsd_decay_fraction": DECAY_FRACTION})
    return out
