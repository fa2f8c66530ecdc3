"""ViT-Base (DeiT layout, CLS first) on ImageNet-1k, the DeiT recipe (paper.md §3.2).

Argument: `pN,res=R` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224). Single stage.
Data: `--config.data_dir` holding the TFDS imagenet2012 ArrayRecord build.

Command:
  python -m pixeltok.main --config=configs/vit_base.py:p4,res=64 --workdir=runs/vitb_p4_64

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64        0.0087   0.0336    0.138    0.639     3.94
      128       0.0336    0.138    0.639     3.94       38
      224        0.105    0.468     2.69     23.8      304
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by paper Table 6)
      stage                   p16      p8      p4      p2      p1
      train@64 300ep          9.3      36     148     682   4,211
      train@128 300ep          36     148     682   4,211  40,613
      train@224 300ep         112     500   2,869  25,407 324,575
  ViT attention is quadratic in tokens: p ≤ 2 at 224 is ruled out in the paper (DeiT used up to 4,096 tokens).

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1:
  64²  68.2 / 76.9 / 80.1 / 80.8 / 81.3 (Table 1); test loss (Fig. 1a) ≈ 1.121 → 0.815
  128² 78.1 / 81.0 / 82.3 / 82.9 / – (Table 1); Fig. 1g adds p32
  224² p16 81.8, p8 83.5 (paper text)

Recipe: lr 5e-4 × batch/512, batch 1024, wd 0.05, betas (0.9, 0.999), 300 epochs, warmup 5 from
1e-6, cosine to 1e-5, drop path 0.1, label smoothing 0.1;
mixup 0.8 / cutmix 1.0.
Deviation: DeiT's RandAugment, random erasing and repeated augmentation are not in pixeltok's pipeline; 3-Augment
(DeiT-III) replaces them, as in Adventurer's stages 1-2. bf16 compute.
"""

from pixeltok import recipes


def get_config(arg=None):
    return recipes.vit_config("base", arg)
