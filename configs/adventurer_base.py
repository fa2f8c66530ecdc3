"""Adventurer-Base on ImageNet-1k with the paper's multi-stage recipe (paper.md §3.1, Tables 8-10).

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it).

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_base.py:p8,res=128 --workdir=runs/advb_p8_128
  python -m pixeltok.main --config=configs/adventurer_base.py:p8,res=224,stage=intermediate \
      --workdir=runs/advb_p8_224i --config.init_from=runs/advb_p8_128
  python -m pixeltok.main --config=configs/adventurer_base.py:p8,res=224,stage=finetune \
      --workdir=runs/advb_p8_224 --config.init_from=runs/advb_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`, adventurer.md §4).

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64         0.011   0.0403    0.158    0.627      2.5
      128       0.0403    0.158    0.627      2.5       10
      224        0.121     0.48     1.92     7.67     30.7
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by paper Table 6)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 300ep        12      43     168     669   2,674
      pretrain@128 300ep       43     168     669   2,674  10,691
      inter.@224 100ep         43     171     682   2,728  10,913
      finetune@224 20ep       8.6      34     136     546   2,183

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1:
  64²  69.2 / 77.2 / 80.0 / 80.5 / 80.9 (Table 1)
  128² 79.0 / 81.5 / 81.8 / 82.2 / 82.4 (Table 4); test loss (Fig. 1b) ≈ 0.942 → 0.812
  224² 82.6 / 83.9 / 84.3 / 84.5 / 84.6 (Tables 1, 4); test loss (Fig. 1c) ≈ 0.718 → 0.635

Recipe (stage 1 / 2 / 3): lr 5e-4 / 5e-4 / 1e-5 (× batch/512, finetune unscaled), wd 0.05 / 0.05 / 0.1,
batch 1024 / 1024 / 512, betas (0.9, 0.999), warmup 5 / 5 / 5 epochs from 1e-6, cosine to 1e-5, mixup 0.8 / cutmix
1.0 in every stage, 3-Augment in stages 1-2, label smoothing 0.1 in stage 3, bf16 compute.
Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix).
"""

from pixeltok import recipes


def get_config(arg=None):
    return recipes.adventurer_config("base", arg)
