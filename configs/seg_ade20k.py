"""ADE20k semantic segmentation with the paper's decoder-free recipe (docs/segmentation.md, docs/paper_targets.md).

Argument: `pN,arch=A,size=S,head=H` — N in 16, 8, 4, 2 (the paper's range; 1 is accepted), A in adventurer | vit,
S in tiny | base, H in linear (the paper's one linear layer) | pixel_shuffle. Data: `--config.data_dir` holding the
extracted `ADEChallengeData2016/` (pixeltok never downloads it; converted once to ArrayRecord under data_dir), or
`--config.dataset=ade20k:<root>`. The backbone comes from an ImageNet run (configs/adventurer_*.py, configs/vit_*.py)
through `init_from`: its head is dropped (the segmentation head is new) and its position embedding is resized from
the ImageNet resolution to 512 (config `posemb_resize`).

Commands (Adventurer-Tiny p8 from its ImageNet p8 run at 224):
  python -m pixeltok.main --config=configs/seg_ade20k.py:p8,arch=adventurer,size=tiny --workdir=runs/ade_advt_p8 \
      --config.data_dir=/data --config.init_from=runs/advt_p8_224
  python -m pixeltok.evaluate --workdir=runs/ade_advt_p8        # mIoU with sliding-window inference
`init_from` is empty in this file (it must name the ImageNet run of the same model and patch size: the paper keeps
the pretraining patch size downstream).

Recipe (the paper's): AdamW lr 5e-5 (not batch-scaled), wd 0.01, batch 16, 160k iterations; the rest is
mmsegmentation's ADE20k 512x512 pipeline as pixeltok implements it: scale jitter 0.5-2.0 of a 512 short side, random
512x512 crop with cat_max_ratio 0.75, horizontal flip, padding with the ignore label; eval with the short side
resized to 512 on a 1024x1024 canvas (long side <= 1024), sliding 512x512 windows at stride 341, logits averaged.
Choices the paper does not state (ours): 1,500 warmup steps, cosine decay to 0 (mmsegmentation uses poly),
drop_path 0.1, bfloat16 compute, per-block remat from 4,096 patches up. Deviations from mmsegmentation (see
docs/segmentation.md): no photometric distortion; metrics at the resized (short side 512) resolution, not the
original label map; images longer than 2:1 are shrunk to fit the 1024 canvas.

Analytic training cost (pixeltok.flops blocks + the linear head 3 x 2dK per token; TFLOP per 512² image) and
A100-hours for 160k x 16 images at ~100 TFLOP/s sustained:
                       TFLOP/img  p16     p8      p4      p2   |  A100-h  p16   p8    p4    p2
    Adventurer-Tiny            0.0786  0.314    1.26    5.02   |          1     2     9    36
    Adventurer-Base             0.628   2.51    10.0    40.1   |          4    18    71   285
    ViT-Tiny                   0.0619  0.595    7.95     121   |          0     4    57   859
    ViT-Base                    0.639   3.95    38.1     508   |          5    28   271  3616
The per-pixel logits (512 x 512 x 150 float32 = 150 MiB per image, x3 with log-softmax and cotangent: 7.0 GiB at
batch 16) are the same at every patch size: more than half of Adventurer-Tiny's 13.2 GiB estimate at p16, 7 % of
its 102 GiB at p2 (`python -m pixeltok.memory --config=configs/seg_ade20k.py:pN`).

Targets, ADE20k val mIoU % for p16 / p8 / p4 / p2 (decoder-free, Table 2 of the paper; docs/paper_targets.md):
  Adventurer-Tiny 40.0 / 41.6 / 42.1 / 42.5 (UperNet at p16: 41.3)
  Adventurer-Base 44.0 / 45.5 / 46.3 / 46.8 (UperNet at p16: 45.7)
  ViT: no paper number (the comparison architecture, same recipe).
Head parameters (Linear(d, 150)): Tiny Adventurer 38,550 (d 256), ViT-Tiny 28,950 (d 192), Base 115,350 (d 768);
pixel_shuffle Linear(d, p²·150) at p16: 9.87M (Adventurer-Tiny), 29.5M (Base).
"""

from pixeltok import config_utils, recipes

ARCHS = {("adventurer", "tiny"): "adventurer_tiny", ("adventurer", "base"): "adventurer_base",
         ("vit", "tiny"): "vit_tiny", ("vit", "base"): "vit_base"}


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=16, arch="adventurer", size="tiny", head="linear")
    if (a.arch, a.size) not in ARCHS:
        raise ValueError(f"arch={a.arch!r}, size={a.size!r} is not valid; use arch in adventurer | vit and size in "
                         f"tiny | base")
    if a.patch not in (16, 8, 4, 2, 1):
        raise ValueError(f"patch {a.patch} is not valid; use p16, p8, p4, p2 or p1")
    c = config_utils.base_config()
    c.task = "segmentation"

    # Model: the ImageNet architecture at 512², decoder-free head.
    c.model_name = ARCHS[(a.arch, a.size)]
    c.patch_size = a.patch
    c.image_size = 512
    c.model.drop_path = 0.1
    c.dtype = "bfloat16"
    c.remat = recipes.long_sequence_remat(a.patch, 512)
    c.seg_head = a.head
    c.init_from = ""                   # --config.init_from=<the ImageNet run of this model and patch size>

    # Data: ADE20k (150 classes, label 0 ignored), mmsegmentation's 512x512 pipeline.
    c.dataset = "ade20k"
    c.train_split = "train"
    c.eval_split = "validation"
    c.seg_reduce_zero_label = True
    c.seg_scale_min = 0.5
    c.seg_scale_max = 2.0
    c.seg_cat_max_ratio = 0.75
    c.hflip = True
    c.seg_eval_canvas = 1024
    c.seg_eval_stride = 341
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.three_augment = False
    c.label_smoothing = 0.0
    c.num_workers = 8                  # JPEG decoding + PIL resizes: worker processes pay off
    c.batch_size = 16
    c.eval_batch_size = 8

    # Optimiser: AdamW lr 5e-5 as given, wd 0.01, 160k iterations.
    c.total_steps = 160_000
    c.warmup_steps = 1500
    c.warmup_init_lr = 1e-6
    c.lr = 5e-5
    c.lr_scale_batch = 0
    c.end_lr = 0.0
    c.wd = 0.01

    # Loop.
    c.eval_every_steps = 16_000
    c.checkpoint_every_steps = 4_000
    c.log_every_steps = 100
    return c
