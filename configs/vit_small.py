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

from pixeltok import config_utils

# The DeiT recipe, written out in configs/vit_base.py: ViT-Small runs it unchanged but for its size.
vit_base = config_utils.sibling_config(__file__, "vit_base")


def get_config(arg=None):
    c = vit_base.get_config(arg)
    c.model_name = "vit_small"                   # width 384, depth 12, 6 heads, cls first
    return c
