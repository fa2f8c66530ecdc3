"""Issue-6 sweep: loss vs patch size on Fashion-MNIST (28x28 zero-padded to 32x32), Adventurer and ViT.

    python launch/sweep.py --sweep configs/sweeps/fashion_mnist_patch.py --root runs/fmnist_patch
    python -m pixeltok.scaling --runs runs/fmnist_patch/adventurer_* --out reports/fmnist_patch_adventurer
    python -m pixeltok.scaling --runs runs/fmnist_patch/vit_* --out reports/fmnist_patch_vit

Grid: {adventurer, vit} x patch {16, 8, 4, 2, 1} x seed {0, 1} = 20 runs, named `<arch>_p<P>_s<seed>`. Every run uses
the same recipe and length: width 64, depth 4 (Adventurer: `adventurer_tiny` layout, d_inner 128, 2 heads, chunk 32;
ViT: `vit_tiny` layout, 1 head of 64), batch 64, 200 steps (12,800 images, ~0.2 epoch), 20 warmup steps, lr 2e-3,
the quickstart's data recipe (no augmentation), final eval on the first 20 x 256 = 5,120 test images. Tokens per image:
ViT n+1 = 5, 17, 65, 257, 1,025; Adventurer n+2 = 6, 18, 66, 258, 1,026 (ViT at p1 is 1,025 tokens: plain XLA
attention is fine).

Expected cost on the 2-core development machine (measured, not guessed, for the dominant point only):
Adventurer p1 at width 64/depth 4/chunk 128 ran at 2.75 img/s with the machine shared (load average ~8; alone it is
roughly 3x faster). Train FLOPs/img (pixeltok.flops): Adventurer p1 ~2.2 G (chunk 32), p2 0.55 G, p4 and below
< 0.15 G; ViT p1 4.4 G, p2 0.51 G. Taking ~8 img/s for Adventurer p1 and ~4-5 img/s for ViT p1 on an idle machine:
Adventurer p1 ~27 min/run, ViT p1 ~50 min/run, the p2 runs ~5-8 min, p4-p16 ~1-2 min each (compile + eval dominate),
i.e. about **3-3.5 hours** for all 20 runs sequentially (`--parallel 1`, the right choice on 2 cores). The p1 runs
are 75 % of it; `--only 'p(16|8|4|2)_'` gives the rest in ~40 min. Re-measure with a 30-step run before relying on
it if the machine differs.
"""

ARCHS = {"adventurer": "adventurer_tiny", "vit": "vit_tiny"}
PATCHES = (16, 8, 4, 2, 1)
SEEDS = (0, 1)

# One recipe for every point (the scaling fit compares patch sizes, so nothing may vary with p).
RECIPE = {
    "model.width": 64,
    "model.depth": 4,
    "batch_size": 64,
    "total_steps": 200,
    "warmup_steps": 20,
    "lr": 2e-3,
    "eval_every_steps": 200,
    "checkpoint_every_steps": 100,
    "eval_max_batches": 20,
}


def get_sweep(res: int = 32) -> list[dict]:
    """[{name, config, overrides}] for launch/sweep.py, seed by seed, Adventurer first, large patches first.

    `res` is the square input side: 32 pads the 28x28 images, anything smaller resizes them (data.small_image_mode).
    """
    runs = []
    # Seed outermost: a sweep cut short still has every (arch, p) point of the first seed.
    for seed in SEEDS:
        for arch, model_name in ARCHS.items():
            for p in PATCHES:
                overrides = {"model_name": model_name, "seed": seed, **RECIPE}
                if arch == "adventurer":
                    overrides["model.chunk_size"] = 32          # 1,026 tokens: 33 chunks; less (Q,Q) work than 128
                runs.append({"name": f"{arch}_p{p}_s{seed}", "config": f"configs/quickstart.py:p{p},res={res}",
                             "overrides": overrides})
    return runs
