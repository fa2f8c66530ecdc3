"""Segmentation quickstart: a small Adventurer with a decoder-free linear head on the embedded fashion_mnist_seg set.

Command:
  python -m pixeltok.main --config=configs/seg_quickstart.py --workdir=runs/seg
  python -m pixeltok.evaluate --workdir=runs/seg            # reproduces the final mIoU from the checkpoint

Data: fashion_mnist_seg (docs/segmentation.md): 2-4 Fashion-MNIST garments pooled to 14x14 on a 32x32 black canvas,
11 classes (background + 10 garments), 20,000 train / 2,000 test canvases, every pixel labelled. Train augmentation:
horizontal flip (the canvases are already at the training size; no scale jitter). Eval: the whole 32x32 canvas.
The all-background prediction scores mIoU 7.0 % (background IoU 76.6 % / 11 classes) at 76.6 % pixel accuracy.

Model: Adventurer (Tiny layout) at width 64, depth 2, d_state 16, chunk 32, patch 4 (default): 64 patches + cls +
heading token = 66 tokens, 123,927 parameters, 0.053 GFLOP/img training (pixeltok.flops); head Linear(64, 11) per
patch token (715 parameters) then bilinear upsampling 8x8 -> 32x32.

Recipe: AdamW lr 5e-3 (unscaled), 40 warmup steps, cosine to 1e-5, wd 0.05, batch 32, 400 steps (12,800 canvases,
0.64 epoch), evaluation on all 2,000 test canvases at steps 200 and 400; the best checkpoint is chosen by mIoU.

Measured on the 2-core development machine while it was shared with other jobs (load average ~12): mIoU 23.52 % at
step 200, 28.38 % at step 400 (pixel accuracy 83.50 %, eval loss 0.4729), 9 min 11 s wall including data
preparation and compilation (6 min 49 s of training); `pixeltok.evaluate` on the final checkpoint gives 28.38 %
again. On a quiet machine expect a few minutes.

Argument: `pN,head=H,steps=S,width=W,depth=D,arch=A,dstate=N,chunk=Q` (defaults p4, head=linear, steps=400,
width=64, depth=2, arch=adventurer, dstate=16, chunk=32); N in 16, 8, 4, 2, 1; H in linear | pixel_shuffle; A in
adventurer | vit (ViT-Tiny layout, 2 heads of 32 at width 64); dstate / chunk: Adventurer's SSD state size and
chunk length. Measured numbers per patch size: reports/seg_patch/ and docs/segmentation.md.
There is no paper number for this set: it checks the pipeline and the patch-size trend, not the paper.
"""

from pixeltok import config_utils

ARCHS = {"adventurer": "adventurer_tiny", "vit": "vit_tiny"}


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=4, head="linear", steps=400, width=64, depth=2, arch="adventurer",
                               dstate=16, chunk=32)
    if a.arch not in ARCHS:
        raise ValueError(f"arch={a.arch!r} is not valid; use one of {tuple(ARCHS)}")
    c = config_utils.base_config()
    c.task = "segmentation"

    # Model: a narrow, shallow Tiny layout so that the p=1 point (1,024 patches) still trains on a CPU.
    c.model_name = ARCHS[a.arch]
    c.patch_size = a.patch
    c.image_size = 32
    c.model.width = a.width
    c.model.depth = a.depth
    c.model.drop_path = 0.0
    if a.arch == "adventurer":
        c.model.d_state = a.dstate
        c.model.chunk_size = a.chunk
    c.seg_head = a.head

    # Data: the embedded dense set; flips only (the canvas is the training size).
    c.dataset = "fashion_mnist_seg"
    c.hflip = True
    c.seg_scale_min = 1.0
    c.seg_scale_max = 1.0
    c.batch_size = 32
    c.eval_batch_size = 250

    # Optimiser: a short, high-lr run.
    c.total_steps = a.steps
    c.warmup_steps = 40
    c.lr = 5e-3
    c.lr_scale_batch = 0
    c.wd = 0.05
    c.end_lr = 1e-5

    # Loop: evaluate / checkpoint halfway and at the end.
    c.eval_every_steps = max(a.steps // 2, 1)
    c.checkpoint_every_steps = max(a.steps // 2, 1)
    c.log_every_steps = 50
    return c
