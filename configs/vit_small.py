"""ViT-Small (DeiT layout, CLS first) on ImageNet-1k, the DeiT recipe (docs/paper_targets.md, "Training recipes").

Argument: `pN,res=R` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224; any other
resolution p divides is accepted, e.g. 448 for evaluation, with eval crop ratio 1.0 above 224). Single stage.
Data: `--config.data_dir` holding the TFDS imagenet2012 ArrayRecord build.

Command:
  python -m pixeltok.main --config=configs/vit_small.py:p4,res=64 --workdir=runs/vits_p4_64

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64       0.00218  0.00851   0.0364    0.189     1.45
      128      0.00851   0.0364    0.189     1.45     16.9
      224       0.0272    0.134    0.944     10.3      146
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      train@64 300ep          2.3     9.1      39     201   1,548
      train@128 300ep         9.1      39     201   1,548  18,078
      train@224 300ep          29     143   1,008  10,997 155,462
  ViT attention is quadratic in tokens: p ≤ 2 at 224 is ruled out in the paper (DeiT used up to 4,096 tokens).

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  224² p16 79.8 (DeiT-S, DeiT paper); patch scaling of DeiT-S not reported

Deviation: DeiT's RandAugment, random erasing and repeated augmentation are not in pixeltok's pipeline; 3-Augment
(DeiT-III) replaces them, as in Adventurer's stages 1-2. bf16 compute.
"""

from pixeltok import config_utils, recipes


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=16, res=224)
    recipes.check_patch_res(a.patch, a.res)
    c = config_utils.base_config()

    # Model: ViT-Small in the DeiT layout (width 384, depth 12, 6 heads, cls first).
    c.model_name = "vit_small"
    c.patch_size = a.patch
    c.image_size = a.res
    c.model.drop_path = 0.1
    c.model.drop_path_schedule = "linear"        # timm's usual rate * i / (depth - 1)
    c.dtype = "bfloat16"                         # bf16 matmuls; params and residual stream stay float32
    c.remat = recipes.long_sequence_remat(a.patch, a.res)   # per-block remat from 4,096 patches up

    # Data: ImageNet-1k train / validation, eval crop by the official README's rule.
    recipes.imagenet_data(c, patch=a.patch, res=a.res)

    # Optimiser, the DeiT recipe: base lr 5e-4 x batch/512, warmup from 1e-6, cosine to 1e-5.
    c.batch_size = 1024
    c.lr = 5e-4
    c.lr_scale_batch = 512
    c.wd = 0.05
    c.b1 = 0.9
    c.b2 = 0.999
    c.num_epochs = 300.0
    c.warmup_epochs = 5.0
    c.warmup_init_lr = 1e-6
    c.end_lr = 1e-5
    c.ema_decay = 0.0                            # DeiT reports the raw model

    # Augmentation: RandomResizedCrop + flip + 3-Augment (in place of DeiT's RandAugment / random erasing, which
    # pixeltok lacks), label smoothing 0.1, mixup 0.8 / cutmix 1.0 on every batch.
    c.train_augment = "rrc"
    c.three_augment = True
    c.label_smoothing = 0.1
    c.mixup_alpha = 0.8
    c.cutmix_alpha = 1.0
    c.mix_switch_prob = 0.5
    c.mix_prob = 1.0

    # Loop.
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    c.log_every_steps = 100
    return c
