"""Quickstart: a small Adventurer on Fashion-MNIST (the embedded data set), minutes on a laptop CPU.

Command (what `make run` does):
  python -m pixeltok.main --config=configs/quickstart.py --workdir=runs/quickstart

Model: Adventurer (Mamba-2 token mixer, SwiGLU, CLS last, heading average, alternating flips) at width 128, depth 4,
d_state 64, patch 8 on the 28×28 images zero-padded to 32×32: 16 patches + CLS + heading token = 18 tokens,
977k parameters, 0.135 GFLOP/img analytic training compute (pixeltok.flops), 500 steps × 128 images ≈ 1.07 epochs
≈ 8.6 TFLOP in all.

Expected: ≥ 85 % test accuracy (all 10,000 test images) in under 10 minutes on a quiet 2-core CPU. Measured on the
2-core development machine after the timm-exact initialisers (2026-12-01, `make run`): 87.11 % at step 500
(84.60 % at 250); the machine was shared with six other jobs (load 11-21), so that run took 18 min 41 s of train time
at ~60-100 img/s; before the initialiser change a quiet fresh clone gave 87.51 % in 2 min 55 s wall (~470 img/s).
Runs are deterministic: a rerun gives the same numbers to the last digit.
There is no paper number for Fashion-MNIST: this config checks the pipeline, not the paper.

Recipe (short-run choices, not the paper's ImageNet recipe): AdamW lr 4e-3 (not batch-scaled), 50 warmup steps from
1e-6, cosine to 1e-5, wd 0.05, no augmentation and no mixup (at ~1 epoch both cost more accuracy than they give),
evaluation at steps 250 and 500.

Argument: `pN,res=R` (defaults p8, res=32), e.g. `configs/quickstart.py:p4` for 64 + 2 tokens (≈ 3.7× the compute).
"""

from pixeltok import config_utils


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=8, res=32)
    c = config_utils.base_config()

    # Model: a small Adventurer (the Tiny layout, narrowed and shortened) so one epoch takes minutes on a CPU.
    c.model_name = "adventurer_tiny"
    c.patch_size = a.patch
    c.image_size = a.res               # 28x28 images are zero-padded to 32x32 (small_image_mode="pad")
    c.model.width = 128
    c.model.depth = 4
    c.model.drop_path = 0.0            # ~1 epoch: nothing to regularise yet

    # Data: the embedded Fashion-MNIST, no augmentation (at ~1 epoch it costs more accuracy than it gives).
    c.dataset = "fashion_mnist"
    c.train_augment = "none"
    c.hflip = False
    c.batch_size = 128
    c.eval_batch_size = 512

    # Optimiser: 500 steps (~1.07 epochs), a short warmup and a high, unscaled lr for the short run.
    c.total_steps = 500
    c.warmup_steps = 50
    c.lr = 4e-3
    c.lr_scale_batch = 0               # lr as given
    c.wd = 0.05
    c.end_lr = 1e-5

    # Loop: evaluate and checkpoint halfway and at the end.
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    c.log_every_steps = 25
    return c
