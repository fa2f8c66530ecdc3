"""Adventurer-Tiny on ImageNet-1k with the paper's multi-stage recipe (docs/paper_targets.md, "Training recipes").

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it). Other resolutions are accepted for stages 1 and 3 and for
evaluation, e.g. `p1,res=448` (the eval crop ratio is 1.0 above 224); stage 2 runs at 224 only.

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_tiny.py:p8,res=128 --workdir=runs/advt_p8_128
  python -m pixeltok.main --config=configs/adventurer_tiny.py:p8,res=224,stage=intermediate \
      --workdir=runs/advt_p8_224i --config.init_from=runs/advt_p8_128
  python -m pixeltok.main --config=configs/adventurer_tiny.py:p8,res=224,stage=finetune \
      --workdir=runs/advt_p8_224 --config.init_from=runs/advt_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`; docs/models.md, "Position-embedding resize").

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64       0.00138  0.00504   0.0197   0.0784    0.313
      128      0.00504   0.0197   0.0784    0.313     1.25
      224       0.0151   0.0601     0.24    0.959     3.83
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 300ep       1.5     5.4      21      84     334
      pretrain@128 300ep      5.4      21      84     334   1,337
      inter.@224 100ep        5.4      21      85     341   1,365
      finetune@224 20ep       1.1     4.3      17      68     273

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  64²  p1 77.4 (released checkpoint)
  128² 72.6 / 78.5 / 80.4 / 80.6 / 80.7 (Table 4)
  224² 78.2 / 80.9 / 81.3 / 81.7 / 81.9 (Table 4); test loss (Fig. 1i) ≈ 0.852 → 0.695

Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix).
"""

from pixeltok import config_utils

# The Adventurer-Base recipe, written out in configs/adventurer_base.py: Tiny runs it unchanged but for its size
# and its drop-path rates.
adventurer_base = config_utils.sibling_config(__file__, "adventurer_base")
DROP_PATH = {"pretrain": 0.1,                  # Table 8
             "intermediate": 0.1,              # Table 9 lists no Tiny rate: its stage-1 rate, our choice
             "finetune": 0.2}                  # Table 10 lists no Tiny rate: our choice


def get_config(arg=None):
    c = adventurer_base.get_config(arg)
    c.model_name = "adventurer_tiny"             # width 256, depth 12
    c.model.drop_path = DROP_PATH[c.stage]
    return c
