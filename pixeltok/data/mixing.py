"""Mixup / CutMix in timm's "batch" mode (the paper's recipe, docs/paper_targets.md: mixup 0.8, cutmix 1.0,
switch prob 0.5, prob 1.0).

One lambda per batch; the partner of example i is example b-1-i (the batch reversed). CutMix pastes the partner's box
and corrects lambda to the box area actually pasted after clipping at the borders. Labels become
`lam * y + (1 - lam) * y_reversed`; label smoothing is left to the trainer's loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's rand_bbox: a (1 - lam)-area box centred uniformly, clipped to the image -> (y0, y1, x0, x1)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(y0), int(y1), int(x0), int(x1)


def mix_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, mixup_alpha: float,
              cutmix_alpha: float, switch_prob: float = 0.5, prob: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mixes one batch.

    Args:
      images: (b, H, W, C) float32.
      labels: (b, K) float32 (one-hot or soft).
      rng: the batch's generator.
      mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that kind (both 0: identity).
      switch_prob: with both on, the probability of CutMix instead of Mixup.
      prob: probability that the batch is mixed at all.

    Returns:
      (images, labels, info) with info = {"lam": float, "mode": "none"|"mixup"|"cutmix", "box": (y0, y1, x0, x1)}.
    """
    info = {"lam": 1.0, "mode": "none", "box": (0, 0, 0, 0)}
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return images, labels, info
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    partner = images[::-1]
    if use_cutmix:
        h, w = images.shape[1:3]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
        images = images.copy()
        images[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # timm correct_lam: the area actually pasted
        info.update(mode="cutmix", box=(y0, y1, x0, x1))
    else:
        images = images * np.float32(lam) + partner * np.float32(1.0 - lam)
        info.update(mode="mixup")
    info["lam"] = lam
    labels = labels * np.float32(lam) + labels[::-1] * np.float32(1.0 - lam)
    return images, labels, info


@dataclasses.dataclass(frozen=True)
class MixTransform:
    """Picklable grain `random_map` over train batches {"image", "label"} (workers need module-level callables)."""

    mixup_alpha: float
    cutmix_alpha: float
    switch_prob: float = 0.5
    prob: float = 1.0

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        images, labels, _ = mix_batch(batch["image"], batch["label"], rng, mixup_alpha=self.mixup_alpha,
                                      cutmix_alpha=self.cutmix_alpha, switch_prob=self.switch_prob, prob=self.prob)
        return {**batch, "image": images, "label": labels}
