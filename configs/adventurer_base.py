"""Adventurer-Base on ImageNet-1k with the paper's multi-stage recipe (docs/paper_targets.md, "Training recipes").

Argument: `pN,res=R,stage=S` — N in 16, 8, 4, 2, 1 (any divisor of R), R in 64 | 128 | 224 (default 224),
S in pretrain | intermediate | finetune (default pretrain). Data: `--config.data_dir` holding the TFDS imagenet2012
ArrayRecord build (pixeltok never downloads it). Other resolutions are accepted for stages 1 and 3 and for
evaluation, e.g. `p16,res=448` (the paper's Adv-B/16 at 448) or `p1,res=448` (the eval crop ratio is 1.0 above
224); stage 2 runs at 224 only. `p1,res=448` (200,706 tokens) with `--config.mesh.seq=8`: 5.52 GiB per device for
the compiled loss + gradients, 8.34 GiB with the gradients and AdamW state (docs/sharding.md).

Commands (224² route: stage 1 at 128, 100 epochs at 224, 20-epoch finetune; 64² is stage 1 only, 128² is stage 1 +
finetune at 128):
  python -m pixeltok.main --config=configs/adventurer_base.py:p8,res=128 --workdir=runs/advb_p8_128
  python -m pixeltok.main --config=configs/adventurer_base.py:p8,res=224,stage=intermediate \
      --workdir=runs/advb_p8_224i --config.init_from=runs/advb_p8_128
  python -m pixeltok.main --config=configs/adventurer_base.py:p8,res=224,stage=finetune \
      --workdir=runs/advb_p8_224 --config.init_from=runs/advb_p8_224i
`init_from` is a placeholder (empty) in this file: stages 2 and 3 need it on the command line. The 128 → 224 hand-off
resizes the position embedding (config `posemb_resize`; docs/models.md, "Position-embedding resize").

Expected cost:
    train TFLOP/img (pixeltok.flops: 3 x forward, blocks only)
      res          p16       p8       p4       p2       p1
      64         0.011   0.0403    0.158    0.627      2.5
      128       0.0403    0.158    0.627      2.5       10
      224        0.121     0.48     1.92     7.67     30.7
    A100-hours (at ~100 TFLOP/s sustained, the rate implied by the paper's compute table)
      stage                   p16      p8      p4      p2      p1
      pretrain@64 300ep        12      43     168     669   2,674
      pretrain@128 300ep       43     168     669   2,674  10,691
      inter.@224 100ep         43     171     682   2,728  10,913
      finetune@224 20ep       8.6      34     136     546   2,183

Targets, IN-1k top-1 % for p16 / p8 / p4 / p2 / p1 (docs/paper_targets.md):
  64²  69.2 / 77.2 / 80.0 / 80.5 / 80.9 (Table 1)
  128² 79.0 / 81.5 / 81.8 / 82.2 / 82.4 (Table 4); test loss (Fig. 1b) ≈ 0.942 → 0.812
  224² 82.6 / 83.9 / 84.3 / 84.5 / 84.6 (Tables 1, 4); test loss (Fig. 1c) ≈ 0.718 → 0.635

Deviations: stage 3's RandAugment and stages 1-2's repeated augmentation are not in pixeltok's pipeline (stage 3
uses RandomResizedCrop + flip + mixup/cutmix).
"""

from pixeltok import config_utils, recipes


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=16, res=224, stage="pretrain")
    recipes.check_patch_res(a.patch, a.res)
    recipes.check_stage(a.stage, a.res)
    c = config_utils.base_config()

    # Model: Adventurer-Base (width 768, depth 12); patch size and resolution from the argument.
    c.model_name = "adventurer_base"
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
    c.b2 = 0.999
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
    if a.stage == "pretrain":          # stage 1 (Table 8): 300 epochs from scratch at 64 or 128
        c.batch_size = 1024
        c.lr = 5e-4                    # x 1024/512: 1e-3 effective
        c.wd = 0.05
        c.num_epochs = 300.0
        c.warmup_epochs = 5.0
        c.model.drop_path = 0.1
        c.three_augment = True         # DeiT-III 3-Augment replaces the usual transform in stages 1-2
        c.label_smoothing = 0.0
    elif a.stage == "intermediate":    # stage 2 (Table 9): 100 epochs at 224, from the stage-1 run at 128
        c.batch_size = 1024
        c.lr = 5e-4
        c.wd = 0.05
        c.num_epochs = 100.0
        c.warmup_epochs = 5.0
        c.model.drop_path = 0.4
        c.three_augment = True
        c.label_smoothing = 0.0
    else:                              # stage 3 (Table 10): 20-epoch finetune at res, from the previous stage
        c.batch_size = 512
        c.lr = 1e-5
        c.lr_scale_batch = 0           # "unscale-lr": 1e-5 as given, = end_lr, so the lr is flat after warmup
        c.wd = 0.1
        c.num_epochs = 20.0
        c.warmup_epochs = 5.0
        c.model.drop_path = 0.6
        c.three_augment = False
        c.label_smoothing = 0.1        # folded into the mixup targets
    c.init_from = ""                   # stages 2 and 3: --config.init_from=<the previous stage's workdir>

    # Loop: ~1,250 steps per epoch at batch 1024.
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    c.log_every_steps = 100
    return c
