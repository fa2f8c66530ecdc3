"""ViT-Tiny (DeiT layout, CLS first) on ImageNet-1k, the DeiT recipe (docs/paper_targets.md, "Training recipes").

Argument: `pN,res=R` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224; any other
resolution p divides is accepted, e.g. 448 for evaluation, with eval crop ratio 1.0 above 224). Single stage.
Data: `--config.data_dir` holding the TFDS imagenet2012 ArrayRecord build.

Command:
  python -m pixeltok.main --config=configs/vit_tiny.py:p4,res=64 --workdir=runs/vitt_p4_64

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64      0.000549  0.00219     0.01   0.0617    0.595
      128      0.00219     0.01   0.0617    0.595     7.94
      224      0.00735    0.042    0.372     4.75     71.2
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      train@64 300ep          0.6     2.3      11      66     635
      train@128 300ep         2.3      11      66     635   8,482
      train@224 300ep         7.8      45     397   5,072  76,025
  ViT attention is quadratic in tokens: p ≤ 2 at 224 is ruled out in the paper (DeiT used up to 4,096 tokens).

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  224² p16 72.2 (DeiT-T, DeiT paper); patch scaling of DeiT-T not reported

Deviation: DeiT's RandAugment, random erasing and repeated augmentation are not in pixeltok's pipeline; 3-Augment
(DeiT-III) replaces them, as in Adventurer's stages 1-2. bf16 compute.
"""

from pixeltok import config_utils

# The DeiT recipe, written out in configs/vit_base.py: ViT-Tiny runs it unchanged but for its size.
vit_base = config_utils.sibling_config(__file__, "vit_base")


def get_config(arg=None):
    c = vit_base.get_config(arg)
    c.model_name = "vit_tiny"                    # width 192, depth 12, 3 heads, cls first
    return c
