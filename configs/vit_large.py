"""ViT-Large (DeiT layout, CLS first) on ImageNet-1k, MAE's supervised from-scratch ViT-L recipe (paper.md §3.2).

Argument: `pN,res=R` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224). Single stage.
Data: `--config.data_dir` holding the TFDS imagenet2012 ArrayRecord build.

Command:
  python -m pixeltok.main --config=configs/vit_large.py:p4,res=64 --workdir=runs/vitl_p4_64

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64        0.0309    0.119    0.485     2.17     12.4
      128        0.119    0.485     2.17     12.4      109
      224        0.368      1.6     8.59     69.1      833
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by paper Table 6)
      stage                   p16      p8      p4      p2      p1
      train@64 200ep           22      85     345   1,542   8,807
      train@128 200ep          85     345   1,542   8,807  77,484
      train@224 200ep         262   1,142   6,111  49,213 593,199
  ViT attention is quadratic in tokens: p ≤ 2 at 224 is ruled out in the paper (DeiT used up to 4,096 tokens).

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1:
  224² p16 82.6 (MAE's supervised from-scratch ViT-L); not in the patch-scaling paper

Recipe: lr 1e-4 × batch/256, batch 4096, wd 0.3, betas (0.9, 0.95),
200 epochs, warmup 20, drop path 0.2, label smoothing 0.1, EMA 0.9999 (reported alongside as ema_*);
mixup 0.8 / cutmix 1.0.
Deviation: DeiT's RandAugment, random erasing and repeated augmentation are not in pixeltok's pipeline; 3-Augment
(DeiT-III) replaces them, as in Adventurer's stages 1-2. bf16 compute.
"""

from pixeltok import recipes


def get_config(arg=None):
    return recipes.vit_config("large", arg)
