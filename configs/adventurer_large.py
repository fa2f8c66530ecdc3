"""Adventurer-Large on ImageNet-1k with the paper's multi-stage recipe (docs/paper_targets.md, "Training recipes").

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it). Other resolutions are accepted for stages 1 and 3 and for
evaluation, e.g. `p1,res=448` (the eval crop ratio is 1.0 above 224); stage 2 runs at 224 only.

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_large.py:p8,res=128 --workdir=runs/advl_p8_128
  python -m pixeltok.main --config=configs/adventurer_large.py:p8,res=224,stage=intermediate \
      --workdir=runs/advl_p8_224i --config.init_from=runs/advl_p8_128
  python -m pixeltok.main --config=configs/adventurer_large.py:p8,res=224,stage=finetune \
      --workdir=runs/advl_p8_224 --config.init_from=runs/advl_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`; docs/models.md, "Position-embedding resize").

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64        0.0385    0.141    0.552      2.2     8.77
      128        0.141    0.552      2.2     8.77     35.1
      224        0.424     1.68     6.72     26.8      107
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 200ep        27     101     393   1,563   6,242
      pretrain@128 200ep      101     393   1,563   6,242  24,958
      inter.@224 50ep          75     299   1,195   4,777  19,107
      finetune@224 50ep        75     299   1,195   4,777  19,107

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  128² 79.8 / 82.2 / 82.6 / 82.9 / 83.1 (Table 4); test loss (Fig. 1h) ≈ 0.902 → 0.790
  224² p16 83.4 (Adventurer README); smaller patches not reported

Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix). Layer-wise lr decay (0.9 / 0.95, stages 2-3) is not implemented.
"""

from pixeltok import config_utils

# The Adventurer-Base recipe (configs/adventurer_base.py) with the Large column of Tables 8-10: a 4x larger batch,
# betas (0.9, 0.95), stronger weight decay, fewer but longer-warmed epochs, a longer finetune.
adventurer_base = config_utils.sibling_config(__file__, "adventurer_base")


def get_config(arg=None):
    c = adventurer_base.get_config(arg)
    c.model_name = "adventurer_large"            # width 1024, depth 24
    c.b2 = 0.95                                  # Large: betas (0.9, 0.95) in every stage
    if c.stage == "pretrain":          # stage 1: 200 epochs from scratch at 64 or 128
        c.batch_size = 4096
        c.lr = 2e-4                    # x 4096/512: 1.6e-3 effective
        c.wd = 0.3
        c.num_epochs = 200.0
        c.warmup_epochs = 20.0
        c.model.drop_path = 0.2
    elif c.stage == "intermediate":    # stage 2: 50 epochs at 224, from stage 1 at 128
        c.batch_size = 4096
        c.lr = 8e-4
        c.wd = 0.3
        c.num_epochs = 50.0
        c.warmup_epochs = 20.0
    else:                              # stage 3: 50-epoch finetune from the previous stage
        c.lr = 2e-5                    # "unscale-lr": 2e-5 as given
        c.num_epochs = 50.0
    return c
