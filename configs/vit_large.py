"""ViT-Large (DeiT layout, CLS first) on ImageNet-1k, MAE's supervised from-scratch ViT-L recipe.

Recipe source: docs/paper_targets.md, "Training recipes".

Argument: `pN,res=R` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224; any other
resolution p divides is accepted, e.g. 448 for evaluation, with eval crop ratio 1.0 above 224). Single stage.
Data: `--config.data_dir` holding the TFDS imagenet2012 ArrayRecord build.

Command:
  python -m pixeltok.main --config=configs/vit_large.py:p4,res=64 --workdir=runs/vitl_p4_64

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64        0.0309    0.119    0.485     2.17     12.4
      128        0.119    0.485     2.17     12.4      109
      224        0.368      1.6     8.59     69.1      833
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      train@64 200ep           22      85     345   1,542   8,807
      train@128 200ep          85     345   1,542   8,807  77,484
      train@224 200ep         262   1,142   6,111  49,213 593,199
  ViT attention is quadratic in tokens: p ≤ 2 at 224 is ruled out in the paper (DeiT used up to 4,096 tokens).

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  224² p16 82.6 (MAE's supervised from-scratch ViT-L); not in the patch-scaling paper

Deviation: DeiT's RandAugment, random erasing and repeated augmentation are not in pixeltok's pipeline; 3-Augment
(DeiT-III) replaces them, as in Adventurer's stages 1-2. bf16 compute.
"""

from pixeltok import config_utils

# The ViT-Base config (configs/vit_base.py) with MAE's supervised from-scratch ViT-L recipe: base lr 1e-4 x
# batch/256, a 4x larger batch, betas (0.9, 0.95), weight decay 0.3, 200 epochs with 20 of warmup, an EMA.
vit_base = config_utils.sibling_config(__file__, "vit_base")


def get_config(arg=None):
    c = vit_base.get_config(arg)
    c.model_name = "vit_large"                   # width 1024, depth 24, cls first
    c.model.drop_path = 0.2
    c.batch_size = 4096
    c.lr = 1e-4
    c.lr_scale_batch = 256
    c.wd = 0.3
    c.b2 = 0.95
    c.num_epochs = 200.0
    c.warmup_epochs = 20.0
    c.ema_decay = 0.9999                         # MAE keeps an EMA; evaluated alongside as ema_*
    return c
