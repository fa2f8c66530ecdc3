"""Adventurer-Small on ImageNet-1k with the paper's multi-stage recipe (docs/paper_targets.md, "Training recipes").

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it). Other resolutions are accepted for stages 1 and 3 and for
evaluation, e.g. `p1,res=448` (the eval crop ratio is 1.0 above 224); stage 2 runs at 224 only.

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_small.py:p8,res=128 --workdir=runs/advs_p8_128
  python -m pixeltok.main --config=configs/adventurer_small.py:p8,res=224,stage=intermediate \
      --workdir=runs/advs_p8_224i --config.init_from=runs/advs_p8_128
  python -m pixeltok.main --config=configs/adventurer_small.py:p8,res=224,stage=finetune \
      --workdir=runs/advs_p8_224 --config.init_from=runs/advs_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`; docs/models.md, "Position-embedding resize").

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64       0.00504   0.0185   0.0722    0.287     1.15
      128       0.0185   0.0722    0.287     1.15     4.59
      224       0.0554     0.22    0.878     3.51       14
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 300ep       5.4      20      77     307   1,225
      pretrain@128 300ep       20      77     307   1,225   4,897
      inter.@224 100ep         20      78     313   1,250   4,998
      finetune@224 20ep       3.9      16      63     250   1,000

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  64²  p1 80.5 (released checkpoint)
  128² 77.6 / 80.5 / 80.9 / 81.2 / 81.4 (Table 4)
  224² 81.8 / 83.0 / 83.5 / 83.7 / 83.8 (Table 4)

Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix).
"""

from pixeltok import config_utils

# The Adventurer-Base recipe, written out in configs/adventurer_base.py: Small runs it unchanged but for its size
# and its drop-path rates.
adventurer_base = config_utils.sibling_config(__file__, "adventurer_base")
DROP_PATH = {"pretrain": 0.1, "intermediate": 0.2, "finetune": 0.4}     # Tables 8-10, Small column


def get_config(arg=None):
    c = adventurer_base.get_config(arg)
    c.model_name = "adventurer_small"            # width 512, depth 12
    c.model.drop_path = DROP_PATH[c.stage]
    return c
