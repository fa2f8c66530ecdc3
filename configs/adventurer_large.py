"""Adventurer-Large on ImageNet-1k with the paper's multi-stage recipe (paper.md §3.1, Tables 8-10).

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it).

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_large.py:p8,res=128 --workdir=runs/advl_p8_128
  python -m pixeltok.main --config=configs/adventurer_large.py:p8,res=224,stage=intermediate \
      --workdir=runs/advl_p8_224i --config.init_from=runs/advl_p8_128
  python -m pixeltok.main --config=configs/adventurer_large.py:p8,res=224,stage=finetune \
      --workdir=runs/advl_p8_224 --config.init_from=runs/advl_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`, adventurer.md §4).

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64        0.0385    0.141    0.552      2.2     8.77
      128        0.141    0.552      2.2     8.77     35.1
      224        0.424     1.68     6.72     26.8      107
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by paper Table 6)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 200ep        27     101     393   1,563   6,242
      pretrain@128 200ep      101     393   1,563   6,242  24,958
      inter.@224 50ep          75     299   1,195   4,777  19,107
      finetune@224 50ep        75     299   1,195   4,777  19,107

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1:
  128² 79.8 / 82.2 / 82.6 / 82.9 / 83.1 (Table 4); test loss (Fig. 1h) ≈ 0.902 → 0.790
  224² p16 83.4 (Adventurer README); smaller patches not reported

Recipe (stage 1 / 2 / 3): lr 2e-4 / 8e-4 / 2e-5 (× batch/512, finetune unscaled), wd 0.3 / 0.3 / 0.1,
batch 4096 / 4096 / 512, betas (0.9, 0.95), warmup 20 / 20 / 5 epochs from 1e-6, cosine to 1e-5, mixup 0.8 / cutmix
1.0 in every stage, 3-Augment in stages 1-2, label smoothing 0.1 in stage 3, bf16 compute.
Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix). Layer-wise lr decay (0.9 / 0.95, stages 2-3) is not implemented.
"""

from pixeltok import recipes


def get_config(arg=None):
    return recipes.adventurer_config("large", arg)
