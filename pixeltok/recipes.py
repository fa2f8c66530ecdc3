"""Training recipes of the paper as config edits (paper.md §3): the tables every `configs/*.py` file draws on.

Adventurer: the multi-stage recipe of Tables 8-10 (stage 1 "pretrain", stage 2 "intermediate" at 224, stage 3
"finetune"). ViT: the official DeiT recipe for Tiny/Small/Base, MAE's supervised from-scratch recipe for Large
(paper §4.1). Cost estimates use pixeltok.flops and ~100 TFLOP/s sustained per A100, the rate implied by the paper's
Table 6 (Adv-B p16 and p1 at 224 both work out to 97-98 TFLOP/s per GPU).
"""

from __future__ import annotations

import ml_collections

from pixeltok import config_utils

IMAGENET_TRAIN = 1_281_167
A100_TFLOPS = 100.0          # sustained, fitted to paper Table 6 (see module docstring)

# Stage hyper-parameters (paper.md §3.1 Tables 8-10). "unscaled" lr: lr_scale_batch = 0 ("unscale-lr").
ADVENTURER_STAGES = {
    "pretrain": {
        "small_models": dict(lr=5e-4, wd=0.05, num_epochs=300.0, b2=0.999, batch_size=1024, warmup_epochs=5.0,
                             label_smoothing=0.0, three_augment=True),
        "large": dict(lr=2e-4, wd=0.3, num_epochs=200.0, b2=0.95, batch_size=4096, warmup_epochs=20.0,
                      label_smoothing=0.0, three_augment=True),
        "drop_path": {"tiny": 0.1, "small": 0.1, "base": 0.1, "large": 0.2},
    },
    "intermediate": {
        "small_models": dict(lr=5e-4, wd=0.05, num_epochs=100.0, b2=0.999, batch_size=1024, warmup_epochs=5.0,
                             label_smoothing=0.0, three_augment=True),
        "large": dict(lr=8e-4, wd=0.3, num_epochs=50.0, b2=0.95, batch_size=4096, warmup_epochs=20.0,
                      label_smoothing=0.0, three_augment=True),
        # Table 9 lists S 0.2 / B 0.4 / L 0.4; Tiny has no entry, 0.1 (its stage-1 rate) is our assumption.
        "drop_path": {"tiny": 0.1, "small": 0.2, "base": 0.4, "large": 0.4},
    },
    "finetune": {
        "small_models": dict(lr=1e-5, lr_scale_batch=0, wd=0.1, num_epochs=20.0, b2=0.999, batch_size=512,
                             warmup_epochs=5.0, label_smoothing=0.1, three_augment=False),
        "large": dict(lr=2e-5, lr_scale_batch=0, wd=0.1, num_epochs=50.0, b2=0.95, batch_size=512,
                      warmup_epochs=5.0, label_smoothing=0.1, three_augment=False),
        # Table 10: S 0.4 / B 0.6 / L 0.6; Tiny unlisted, 0.2 is our assumption.
        "drop_path": {"tiny": 0.2, "small": 0.4, "base": 0.6, "large": 0.6},
    },
}
STAGES = tuple(ADVENTURER_STAGES)
RESOLUTIONS = (64, 128, 224)


def imagenet_defaults(c: ml_collections.ConfigDict, *, patch: int, res: int) -> None:
    """Data settings shared by all ImageNet configs (paper.md §3.2)."""
    c.dataset = "imagenet2012"
    c.num_classes = 1000
    c.num_channels = 3
    c.train_split = "train"
    c.eval_split = "validation"
    c.patch_size = patch
    c.image_size = res
    c.train_augment = "rrc"
    c.mixup_alpha = 0.8            # on in every stage of the official code (paper.md §3.2)
    c.cutmix_alpha = 1.0
    c.mix_switch_prob = 0.5
    c.mix_prob = 1.0
    c.warmup_init_lr = 1e-6
    c.end_lr = 1e-5
    c.lr_scale_batch = 512
    c.b1 = 0.9
    c.crop_ratio = eval_crop_ratio(patch, res)
    c.eval_batch_size = 1000
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    c.log_every_steps = 100


def eval_crop_ratio(patch: int, res: int) -> float:
    """README rule (paper.md §3.2): 0.875 for 64² inputs, 1.0 for p < 16 and for > 224, else 0.875."""
    if res == 64:
        return 0.875
    if patch < 16 or res > 224:
        return 1.0
    return 0.875


def check_patch_res(patch: int, res: int) -> None:
    """Any positive res works (the paper uses 64, 128, 224); p must divide it (CONTRACT §2)."""
    if res <= 0:
        raise ValueError(f"res={res} must be positive (paper: {', '.join(map(str, RESOLUTIONS))})")
    if patch <= 0 or res % patch:
        valid = [q for q in (1, 2, 4, 8, 16, 32) if res % q == 0]
        raise ValueError(f"patch size {patch} does not divide image size {res}; valid: {', '.join(map(str, valid))}")


def adventurer_config(size: str, arg: str | None) -> ml_collections.ConfigDict:
    """Adventurer-{size} on ImageNet-1k, arg `pN,res=R,stage=S` (paper Tables 8-10).

    stage pretrain: stage 1 at `res` (64/128 as in the paper; 224 directly is allowed but is not the paper's
    route). intermediate: 224 only, from a stage-1 run at 128 (`--config.init_from=<stage-1 workdir>`; the pos-embed
    is resized 128 -> 224). finetune: at `res` from the previous stage (`--config.init_from=...`).
    """
    a = config_utils.parse_arg(arg, patch=16, res=224, stage="pretrain")
    check_patch_res(a.patch, a.res)
    if a.stage not in ADVENTURER_STAGES:
        raise ValueError(f"stage={a.stage!r} is unknown; valid: {', '.join(STAGES)}")
    if a.stage == "intermediate" and a.res != 224:
        raise ValueError(f"stage=intermediate runs at res=224 (paper Table 9), not res={a.res}")
    c = config_utils.base_config()
    c.model_name = f"adventurer_{size}"
    imagenet_defaults(c, patch=a.patch, res=a.res)
    table = ADVENTURER_STAGES[a.stage]
    for key, value in table["large" if size == "large" else "small_models"].items():
        c[key] = value
    c.model.drop_path = table["drop_path"][size]
    c.model.drop_path_schedule = "released_code"
    c.model.flip_rule = "alternate"
    c.dtype = "bfloat16"           # the official runs use bf16 autocast (paper.md §3.2)
    c.remat = long_sequence_remat(a.patch, a.res)
    c.stage = a.stage
    c.init_from = ""               # intermediate/finetune: pass --config.init_from=<previous stage workdir>
    return c


# DeiT recipe (paper.md §3.2): lr 5e-4 x bs/512, batch 1024, wd 0.05, 300 ep, warmup 5, drop path 0.1, label
# smoothing 0.1, mixup 0.8 / cutmix 1.0. RandAugment and random erasing are not in pixeltok's pipeline: we use
# 3-Augment instead (DeiT-III's replacement, also what Adventurer stages 1-2 use).
VIT_RECIPES = {
    "tiny": dict(lr=5e-4, wd=0.05, num_epochs=300.0, b2=0.999, batch_size=1024, warmup_epochs=5.0,
                 label_smoothing=0.1, drop_path=0.1, ema_decay=0.0, lr_scale_batch=512),
    "small": dict(lr=5e-4, wd=0.05, num_epochs=300.0, b2=0.999, batch_size=1024, warmup_epochs=5.0,
                  label_smoothing=0.1, drop_path=0.1, ema_decay=0.0, lr_scale_batch=512),
    "base": dict(lr=5e-4, wd=0.05, num_epochs=300.0, b2=0.999, batch_size=1024, warmup_epochs=5.0,
                 label_smoothing=0.1, drop_path=0.1, ema_decay=0.0, lr_scale_batch=512),
    # MAE supervised from-scratch ViT-L: blr 1e-4 x bs/256, batch 4096, wd 0.3, betas (0.9, 0.95), 200 ep,
    # warmup 20, drop path 0.2, label smoothing 0.1, EMA 0.9999.
    "large": dict(lr=1e-4, wd=0.3, num_epochs=200.0, b2=0.95, batch_size=4096, warmup_epochs=20.0,
                  label_smoothing=0.1, drop_path=0.2, ema_decay=0.9999, lr_scale_batch=256),
}


def vit_config(size: str, arg: str | None) -> ml_collections.ConfigDict:
    """ViT-{size} (DeiT layout) on ImageNet-1k with the DeiT recipe, arg `pN,res=R`."""
    a = config_utils.parse_arg(arg, patch=16, res=224)
    check_patch_res(a.patch, a.res)
    c = config_utils.base_config()
    c.model_name = f"vit_{size}"
    imagenet_defaults(c, patch=a.patch, res=a.res)
    recipe = dict(VIT_RECIPES[size])
    c.model.drop_path = recipe.pop("drop_path")
    c.model.drop_path_schedule = "linear"      # timm's usual rate·i/(depth-1)
    for key, value in recipe.items():
        c[key] = value
    c.three_augment = True
    c.dtype = "bfloat16"
    c.remat = long_sequence_remat(a.patch, a.res)
    return c


def long_sequence_remat(patch: int, res: int) -> str:
    """Per-block remat from 4,096 patches up (p <= 2 at 128/224, p = 1 at 64): there only the block inputs may live
    across the backward pass, or one image no longer fits an 80 GB device (adventurer.md §8-9)."""
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
