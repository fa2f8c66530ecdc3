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

from pixeltok import config_utils, recipes


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=16, res=224, stage="pretrain")
    recipes.check_patch_res(a.patch, a.res)
    recipes.check_stage(a.stage, a.res)
    c = config_utils.base_config()

    # Model: Adventurer-Large (width 1024, depth 24); patch size and resolution from the argument.
    c.model_name = "adventurer_large"
    c.patch_size = a.patch
    c.image_size = a.res
    c.model.flip_rule = "alternate"              # the paper's text; "released_code" flips only layers 2 and 3
    c.model.drop_path_schedule = "released_code" # the official [0] + linspace(0, rate, depth) off-by-one
    c.dtype = "bfloat16"                         # the official runs use bf16 autocast; params stay float32
    c.remat = recipes.long_sequence_remat(a.patch, a.res)   # per-block remat from 4,096 patches up

    # Data: ImageNet-1k train / validation, eval crop by the official README's rule.
    recipes.imagenet_data(c, patch=a.patch, res=a.res)

    # Optimiser, the same in every stage: AdamW, base lr scaled by batch/512, warmup from 1e-6, cosine to 1e-5.
    c.b1 = 0.9
    c.b2 = 0.95                                  # Large: betas (0.9, 0.95) in every stage
    c.lr_scale_batch = 512
    c.warmup_init_lr = 1e-6
    c.end_lr = 1e-5

    # Augmentation, the same in every stage: RandomResizedCrop + flip, and mixup 0.8 / cutmix 1.0 on every batch
    # (the official code never turns them off, although the paper's tables do not list them).
    c.train_augment = "rrc"
    c.mixup_alpha = 0.8
    c.cutmix_alpha = 1.0
    c.mix_switch_prob = 0.5
    c.mix_prob = 1.0

    c.stage = a.stage
    if a.stage == "pretrain":          # stage 1 (Table 8, Large column): 200 epochs from scratch at 64 or 128
        c.batch_size = 4096
        c.lr = 2e-4                    # x 4096/512: 1.6e-3 effective
        c.wd = 0.3
        c.num_epochs = 200.0
        c.warmup_epochs = 20.0
        c.model.drop_path = 0.2
        c.three_augment = True         # DeiT-III 3-Augment replaces the usual transform in stages 1-2
        c.label_smoothing = 0.0
    elif a.stage == "intermediate":    # stage 2 (Table 9, Large column): 50 epochs at 224, from stage 1 at 128
        c.batch_size = 4096
        c.lr = 8e-4
        c.wd = 0.3
        c.num_epochs = 50.0
        c.warmup_epochs = 20.0
        c.model.drop_path = 0.4
        c.three_augment = True
        c.label_smoothing = 0.0
    else:                              # stage 3 (Table 10, Large column): 50-epoch finetune from the previous stage
        c.batch_size = 512
        c.lr = 2e-5
        c.lr_scale_batch = 0           # "unscale-lr": 2e-5 as given
        c.wd = 0.1
        c.num_epochs = 50.0
        c.warmup_epochs = 5.0
        c.model.drop_path = 0.6
        c.three_augment = False
        c.label_smoothing = 0.1        # folded into the mixup targets
    c.init_from = ""                   # stages 2 and 3: --config.init_from=<the previous stage's workdir>

    # Loop: ~310 steps per epoch at batch 4096 (~2,500 at the finetune's 512).
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    c.log_every_steps = 100
    return c
