"""Segmentation patch-size sweep on the embedded fashion_mnist_seg set (decoder-free linear head), both architectures.

    python launch/sweep.py --sweep configs/sweeps/seg_patch.py --root runs/seg_patch
    python reports/seg_patch/make_report.py --root runs/seg_patch --out reports/seg_patch
(make_report.py writes runs.csv and the figure and runs `python -m pixeltok.scaling` on the loss and on 1 - mIoU.)

Grid: {adventurer, vit} x patch {16, 8, 4, 2, 1} x seed {0, 1} = 20 runs named `<arch>_p<P>_s<seed>`, plus
`adventurer_p16_shuffle_s0` (the pixel_shuffle head at the largest patch). One recipe for every point: width 32,
depth 2 (Adventurer: `adventurer_tiny` layout with d_state 16 and chunk 32; ViT: `vit_tiny` layout, 1 head of 32),
batch 32, 120 steps (3,840 canvases, ~0.2 epoch), 12 warmup steps, lr 3e-3 (unscaled), cosine to 1e-5, flips,
one eval at the end on the first 2 x 250 = 500 test canvases (512,000 labelled pixels). Tokens per image: ViT n+1 =
5, 17, 65, 257, 1,025; Adventurer n+2 = 6, 18, 66, 258, 1,026.

Sized for a 2-core machine shared with other jobs (measured with the jitted train step, CPU ms per image: Adventurer
p1 ~35, ViT p1 ~46, p4 ~2): the p1 runs dominate. Measured wall times per run are in reports/seg_patch/README.md.
"""

ARCHS = ("adventurer", "vit")  # configs/seg_quickstart.py: adventurer_tiny / vit_tiny layouts
PATCHES = (16, 8, 4, 2, 1)
SEEDS = (0, 1)

MODEL = "width=32,depth=2,dstate=16,chunk=32"   # dstate/chunk: Adventurer only
RECIPE = {
    "batch_size": 32,
    "total_steps": 120,
    "warmup_steps": 12,
    "lr": 3e-3,
    "eval_every_steps": 120,
    "checkpoint_every_steps": 120,
    "log_every_steps": 40,
    "eval_batch_size": 250,
    "eval_max_batches": 2,
}


def get_sweep() -> list[dict]:
    """[{name, config, overrides}] for launch/sweep.py: seed outermost (a sweep cut short still has every
    (arch, p) point of the first seed), large patches first, the pixel_shuffle run after the first seed."""
    runs = []
    for seed in SEEDS:
        for arch in ARCHS:
            for p in PATCHES:
                runs.append({"name": f"{arch}_p{p}_s{seed}",
                             "config": f"configs/seg_quickstart.py:p{p},arch={arch},{MODEL}",
                             "overrides": {"seed": seed, **RECIPE}})
        if seed == SEEDS[0]:
            runs.append({"name": "adventurer_p16_shuffle_s0",
                         "config": f"configs/seg_quickstart.py:p16,arch=adventurer,head=pixel_shuffle,{MODEL}",
                         "overrides": {"seed": 0, **RECIPE}})
    return runs
