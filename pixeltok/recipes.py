"""What every ImageNet config file shares: argument checks, the data plumbing, and the run-book helpers.

The recipes themselves (learning rates, batch sizes, epochs, augmentation, stage hand-offs) are written out in each
`configs/*.py` file, one visible assignment per setting with its reason; docs/paper_targets.md ("Training recipes")
has the paper's tables they come from. This module keeps only what is identical for every such file: checking the
`pN,res=R,stage=S` argument, the ImageNet data settings, the evaluation crop rule, when long sequences need remat,
and the cost table the config docstrings quote. Cost estimates use pixeltok.flops and ~100 TFLOP/s sustained per
A100, the rate implied by the paper's compute table (Adv-B p16 and p1 at 224 both work out to 95-98 TFLOP/s per
GPU, DeiT-B to 103-112; docs/paper_targets.md, "Compute").
"""

from __future__ import annotations

import ml_collections

IMAGENET_TRAIN = 1_281_167
A100_TFLOPS = 100.0          # sustained, fitted to the paper's compute table (see module docstring)

# The three Adventurer stages (docs/paper_targets.md, "Training recipes"): stage 1 "pretrain" at 64/128 from
# scratch, stage 2 "intermediate" at 224 from the stage-1 run at 128, stage 3 "finetune" from the previous stage.
STAGES = ("pretrain", "intermediate", "finetune")
RESOLUTIONS = (64, 128, 224)     # the paper's training resolutions; any positive res is accepted (e.g. 448)


def check_patch_res(patch: int, res: int) -> None:
    """Any positive res works (the paper trains at 64, 128, 224); p must divide it (docs/architecture.md, "Public
    API")."""
    if res <= 0:
        raise ValueError(f"res={res} must be positive (paper: {', '.join(map(str, RESOLUTIONS))})")
    if patch <= 0 or res % patch:
        valid = [q for q in (1, 2, 4, 8, 16, 32) if res % q == 0]
        raise ValueError(f"patch size {patch} does not divide image size {res}; valid: {', '.join(map(str, valid))}")


def check_stage(stage: str, res: int) -> None:
    """Rejects an unknown stage, and stage 2 at any resolution but 224 (it exists to move a 128 run to 224)."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is unknown; valid: {', '.join(STAGES)}")
    if stage == "intermediate" and res != 224:
        raise ValueError(f"stage=intermediate runs at res=224 (paper Table 9), not res={res}")


def imagenet_data(c: ml_collections.ConfigDict, *, patch: int, res: int) -> None:
    """Where ImageNet-1k comes from and how it is evaluated: identical for every ViT and Adventurer config.

    pixeltok never downloads ImageNet: `--config.data_dir` must hold the TFDS imagenet2012 ArrayRecord build.
    Augmentation is not set here; each config file sets it visibly.
    """
    c.dataset = "imagenet2012"
    c.num_classes = 1000
    c.num_channels = 3
    c.train_split = "train"
    c.eval_split = "validation"
    c.crop_ratio = eval_crop_ratio(patch, res)
    c.eval_batch_size = 1000


def eval_crop_ratio(patch: int, res: int) -> float:
    """The official README's rule: 0.875 for 64² inputs, 1.0 for p < 16 and for > 224, else 0.875.

    Evaluation resizes to int(res / crop_ratio) and centre-crops res (docs/paper_targets.md, "Training recipes").
    """
    if res == 64:
        return 0.875
    if patch < 16 or res > 224:
        return 1.0
    return 0.875


def long_sequence_remat(patch: int, res: int) -> str:
    """Per-block remat from 4,096 patches up (p <= 2 at 128/224, p = 1 at 64): there only the block inputs may live
    across the backward pass, or one image no longer fits an 80 GB device (docs/ssd.md, "Memory")."""
    return "nothing_saveable" if (res // patch) ** 2 >= 4096 else ""


def cost_table(model_name: str, resolutions=(64, 128, 224), patches=(16, 8, 4, 2, 1), epochs: float = 300.0) -> str:
    """Text table: train TFLOP/img and A100-hours for `epochs` ImageNet epochs per (res, p) (docstring helper)."""
    from pixeltok import flops
    rows = []
    for res in resolutions:
        cells = []
        for p in patches:
            f = flops.train_flops_per_image(model_name, p, res)
            hours = f * IMAGENET_TRAIN * epochs / (A100_TFLOPS * 1e12) / 3600
            cells.append(f"p{p}: {f / 1e12:.3g} TF/img, {hours:,.0f} A100-h")
        rows.append(f"{res}²  " + " | ".join(cells))
    return "\n".join(rows)
