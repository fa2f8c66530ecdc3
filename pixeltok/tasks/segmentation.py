"""Semantic segmentation: a decoder-free per-pixel head on the backbone's patch tokens (see docs/segmentation.md).

* Model: `head_type` "seg_linear" (`config.seg_head = "linear"`, the default: Linear(d, K) per patch token, bilinear
  upsampling of the (gh, gw, K) grid to the input resolution) or "seg_pixel_shuffle" (`seg_head="pixel_shuffle"`:
  Linear(d, p²K) per token rearranged to the p x p pixels of its patch). `model(images)` is (B, H, W, K) float32.
* Loss: per-pixel softmax cross-entropy averaged over the valid pixels of the batch (label != `ignore_label`), with
  optional label smoothing (`config.label_smoothing`: (1 - e) one-hot + e / K).
* Eval: whole-image inference when the eval canvas equals `image_size`, otherwise sliding windows of `image_size`
  with stride `seg_eval_stride` whose logits are averaged where they overlap (mmsegmentation's slide mode). Additive
  sums per batch: the K x K confusion matrix (rows = label, columns = prediction) over valid pixels, the summed CE and
  the valid-pixel count. From the sums over the whole split: IoU_k = C_kk / (row_k + col_k - C_kk), `miou` = mean
  over the classes whose union is non-empty, `pixel_accuracy` = trace / valid pixels, `loss` = CE sum / valid pixels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pixeltok.data import segmentation as seg_data
from pixeltok.tasks.base import Task

Array = jax.Array

SEG_HEADS = {"linear": "seg_linear", "pixel_shuffle": "seg_pixel_shuffle"}


def _get(config, key, default):
    return seg_data._get(config, key, default)  # pylint: disable=protected-access


def pixel_cross_entropy(logits: Array, labels: Array, ignore: int, smoothing: float = 0.0
                        ) -> tuple[Array, Array]:
    """Per-pixel softmax CE.

    Args:
      logits: (..., K) float; labels: (...) int with `ignore` where unlabelled; smoothing: label smoothing e.

    Returns:
      (sum of the per-pixel losses over valid pixels, number of valid pixels), both float32 scalars.
    """
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    valid = labels != ignore
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    if smoothing > 0:
        nll = (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.float32)


def confusion_matrix(pred: Array, labels: Array, valid: Array, num_classes: int) -> Array:
    """(K, K) int32 counts over valid pixels: row = label, column = prediction."""
    idx = jnp.where(valid, labels * num_classes + pred, 0).reshape(-1)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[idx].add(valid.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def window_offsets(extent: int, size: int, stride: int) -> list[int]:
    """Window starts covering [0, extent): 0, stride, 2 stride, ..., the last one ending exactly at `extent`."""
    if extent <= size:
        return [0]
    n = math.ceil((extent - size) / stride) + 1
    return sorted({min(i * stride, extent - size) for i in range(n)})


def predict(model, images: Array, size: int, stride: int) -> Array:
    """Per-pixel logits (B, Hc, Wc, K) float32 of an eval canvas: one pass when it is `size` x `size`, else sliding
    `size` x `size` windows with `stride`, logits averaged over the windows covering each pixel."""
    hc, wc = images.shape[1:3]
    if (hc, wc) == (size, size):
        return model(images, train=False)
    acc, count = None, jnp.zeros((hc, wc), jnp.float32)
    for y in window_offsets(hc, size, stride):
        for x in window_offsets(wc, size, stride):
            out = model(images[:, y:y + size, x:x + size], train=False).astype(jnp.float32)
            if acc is None:
                acc = jnp.zeros((images.shape[0], hc, wc, out.shape[-1]), jnp.float32)
            acc = acc.at[:, y:y + size, x:x + size].add(out)
            count = count.at[y:y + size, x:x + size].add(1.0)
    return acc / count[None, :, :, None]


def metrics_from_confusion(conf: np.ndarray) -> dict:
    """Per-class IoU (NaN where the union is empty), mIoU (mean over non-NaN), pixel accuracy from a (K, K) matrix."""
    conf = np.asarray(conf, np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)
    total = conf.sum()
    return {"iou": iou, "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "pixel_accuracy": float(inter.sum() / total) if total > 0 else 0.0}


class Segmentation(Task):
    """Per-pixel classification with a decoder-free head; best checkpoint by mIoU."""

    name = "segmentation"
    metric_names = ("loss", "miou", "pixel_accuracy")
    best_metric = "miou"

    class_names: tuple[str, ...] = ()

    def check_config(self, config, info) -> None:
        self.class_names = tuple(getattr(info, "class_names", ()) or ())  # labels the per-class IoU JSON
        if not getattr(info, "dense", False):
            raise ValueError(f"task='segmentation' needs a segmentation data set, but dataset={config.dataset!r} has "
                             f"class labels; use 'fashion_mnist_seg', 'ade20k' or 'segfolder:<root>'")
        head = _get(config, "seg_head", "linear")
        if head not in SEG_HEADS:
            raise ValueError(f"seg_head={head!r} is not valid; use one of {tuple(SEG_HEADS)}")
        if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
            raise ValueError(f"mixup_alpha={config.mixup_alpha} / cutmix_alpha={config.cutmix_alpha}: Mixup/CutMix "
                             f"are classification augmentations; set both to 0 for task='segmentation'")
        if not 0.0 <= config.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={config.label_smoothing} is not valid; use a value in [0, 1)")
        if int(_get(config, "seg_eval_stride", 0)) < 0:
            raise ValueError(f"seg_eval_stride={_get(config, 'seg_eval_stride', 0)} is not valid; use 0 (2/3 of "
                             f"image_size) or a positive integer")
        seg_data.eval_canvas(config)  # raises on a canvas smaller than image_size

    def model_overrides(self, config) -> dict:
        return {"head_type": SEG_HEADS[_get(config, "seg_head", "linear")]}

    def train_loss(self, model, batch, *, rng, config) -> Array:
        logits = model(batch["image"], train=True, rng=rng)
        total, count = pixel_cross_entropy(logits, batch["label"], seg_data.ignore_label(config),
                                           float(config.label_smoothing))
        return total / jnp.maximum(count, 1.0)

    def eval_sums(self, model, batch, config) -> dict:
        size = int(config.image_size)
        stride = int(_get(config, "seg_eval_stride", 0)) or max(1, (2 * size) // 3)
        logits = predict(model, batch["image"], size, stride)
        ignore = seg_data.ignore_label(config)
        labels = batch["label"]
        valid = (labels != ignore) & batch["mask"][:, None, None]
        labels = jnp.where(valid, labels, ignore)
        total, count = pixel_cross_entropy(logits, labels, ignore)
        conf = confusion_matrix(jnp.argmax(logits, axis=-1), labels, valid, logits.shape[-1])
        return {"confusion": conf, "loss_sum": total, "pixels": count,
                "count": jnp.sum(batch["mask"].astype(jnp.int32))}

    def summarize(self, sums) -> dict:
        m = metrics_from_confusion(sums["confusion"])
        pixels = float(np.asarray(sums["pixels"], np.float64))
        return {"loss": float(np.asarray(sums["loss_sum"], np.float64)) / max(pixels, 1.0), "miou": m["miou"],
                "pixel_accuracy": m["pixel_accuracy"], "num_examples": int(sums["count"])}

    def artifacts(self, sums) -> dict:
        conf = np.asarray(sums["confusion"], np.float64)
        m = metrics_from_confusion(conf)
        out = {"miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"],
               "iou": [None if np.isnan(v) else float(v) for v in m["iou"]],
               "label_pixels": [int(v) for v in conf.sum(1)], "predicted_pixels": [int(v) for v in conf.sum(0)]}
        if len(self.class_names) == len(conf):
            out["class_names"] = list(self.class_names)
        return out

    def describe(self, metrics: dict) -> str:
        return (f"mIoU {100 * metrics['miou']:.2f}%, pixel acc {100 * metrics['pixel_accuracy']:.2f}%, "
                f"loss {metrics['loss']:.4f}")
