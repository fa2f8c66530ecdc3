"""Segmentation quickstart: a small Adventurer with a decoder-free linear head on the embedded fashion_mnist_seg set.

Command:
  python -m pixeltok.main --config=configs/seg_quickstart.py --workdir=runs/seg
  python -m pixeltok.evaluate --workdir=runs/seg            # reproduces the final mIoU from the checkpoint

Data: fashion_mnist_seg (docs/segmentation.md): 2-4 Fashion-MNIST garments pooled to 14x14 on a 32x32 black canvas,
11 classes (background + 10 garments), 20,000 train / 2,000 test canvases, every pixel labelled. Train augmentation:
horizontal flip (the canvases are already at the training size; no scale jitter). Eval: the whole 32x32 canvas.
The all-background prediction scores mIoU 7.0 % (background IoU 76.6 % / 11 classes) at 76.6 % pixel accuracy.

Model: Adventurer (Tiny layout) at width 64, depth 4, patch 4 (default): 64 patches + cls + heading token = 66 tokens;
head Linear(64, 11) per patch token (715 parameters) then bilinear upsampling 8x8 -> 32x32.

Recipe: AdamW lr 3e-3 (unscaled), 50 warmup steps, cosine to 1e-5, wd 0.05, batch 64, 600 steps (~1.9 epochs),
evaluation at steps 300 and 600; the best checkpoint is chosen by mIoU.

Argument: `pN,head=H,steps=S,width=W,depth=D,arch=A,dstate=N,chunk=Q` (defaults p4, head=linear, steps=600,
width=64, depth=4, arch=adventurer, dstate=64, chunk=128); N in 16, 8, 4, 2, 1; H in linear | pixel_shuffle; A in
adventurer | vit (ViT-Tiny layout, 2 heads of 32 at width 64); dstate / chunk: Adventurer's SSD state size and chunk. Measured numbers per patch size: reports/seg_patch/ and docs/segmentation.md.
There is no paper number for this set: it checks the pipeline and the patch-size trend, not the paper.
"""

from pixeltok import config_utils

ARCHS = {"adventurer": "adventurer_tiny", "vit": "vit_tiny"}


def get_config(arg=None):
    a = config_utils.parse_arg(arg, patch=4, head="linear", steps=600, width=64, depth=4, arch="adventurer",
                               dstate=64, chunk=128)
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
    c.batch_size = 64
    c.eval_batch_size = 250

    # Optimiser: a short, high-lr run.
    c.total_steps = a.steps
    c.warmup_steps = 50
    c.lr = 3e-3
    c.lr_scale_batch = 0
    c.wd = 0.05
    c.end_lr = 1e-5

    # Loop: evaluate / checkpoint halfway and at the end.
    c.eval_every_steps = max(a.steps // 2, 1)
    c.checkpoint_every_steps = max(a.steps // 2, 1)
    c.log_every_steps = 50
    return c
