"""Adventurer-Tiny on ImageNet-1k with the paper's multi-stage recipe (paper.md §3.1, Tables 8-10).

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it).

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_tiny.py:p8,res=128 --workdir=runs/advt_p8_128
  python -m pixeltok.main --config=configs/adventurer_tiny.py:p8,res=224,stage=intermediate \
      --workdir=runs/advt_p8_224i --config.init_from=runs/advt_p8_128
  python -m pixeltok.main --config=configs/adventurer_tiny.py:p8,res=224,stage=finetune \
      --workdir=runs/advt_p8_224 --config.init_from=runs/advt_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`, adventurer.md §4).

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64       0.00138  0.00504   0.0197   0.0784    0.313
      128      0.00504   0.0197   0.0784    0.313     1.25
      224       0.0151   0.0601     0.24    0.959     3.83
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by paper Table 6)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 300ep       1.5     5.4      21      84     334
      pretrain@128 300ep      5.4      21      84     334   1,337
      inter.@224 100ep        5.4      21      85     341   1,365
      finetune@224 20ep       1.1     4.3      17      68     273

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1:
  64²  p1 77.4 (released checkpoint)
  128² 72.6 / 78.5 / 80.4 / 80.6 / 80.7 (Table 4)
  224² 78.2 / 80.9 / 81.3 / 81.7 / 81.9 (Table 4); test loss (Fig. 1i) ≈ 0.852 → 0.695

Recipe (stage 1 / 2 / 3): lr 5e-4 / 5e-4 / 1e-5 (× batch/512, finetune unscaled), wd 0.05 / 0.05 / 0.1,
batch 1024 / 1024 / 512, betas (0.9, 0.999), warmup 5 / 5 / 5 epochs from 1e-6, cosine to 1e-5, mixup 0.8 / cutmix
1.0 in every stage, 3-Augment in stages 1-2, label smoothing 0.1 in stage 3, bf16 compute.
Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix).
"""

from pixeltok import recipes


def get_config(arg=None):
    return recipes.adventurer_config("tiny", arg)
