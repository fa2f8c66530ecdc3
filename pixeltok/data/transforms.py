"""Image transforms in NumPy/PIL (no TensorFlow): train augmentations, the eval crop, 3-Augment, normalisation.

Per-example functions take a uint8 `(H, W, C)` array or encoded bytes and a `np.random.Generator`; batch functions take
`(n, H, W, C)` uint8 arrays. All randomness comes from the generator grain hands to `random_map`, so the pipeline is
deterministic and resume-safe.

Rules (the paper's recipe, docs/paper_targets.md):
* eval: resize the shorter side to `int(S / crop_ratio)` (bicubic) and center-crop `S`. Small images: when the image
  fits inside `S x S` (native size <= target) and `small_image_mode == "pad"`, it is zero-padded (centered) instead,
  e.g. Fashion-MNIST 28 -> 32 pads 2 px each side; `small_image_mode == "resize"` always resizes.
* "rrc": RandomResizedCrop(scale=(rrc_scale_min, 1), ratio=(3/4, 4/3), bicubic) to `S` (+ h-flip if enabled).
* "pad_crop": fit to `S` (pad as above, else resize the shorter side to `S` + center crop), zero-pad 4 px, random
  `S x S` crop (+ h-flip): the cheap small-image recipe.
* "none": the eval transform (no flip).
* 3-Augment (DeiT-III): one of {grayscale, solarize(128), gaussian blur sigma ~ U[0.1, 2]} + ColorJitter(b, c, s = j)
  in random order. For 1-channel data grayscale is the identity, so the choice is between solarize and blur only,
  and ColorJitter's saturation (meaningless without colour) is skipped.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

PAD_CROP_PAD = 4
_RATIO = (3.0 / 4.0, 4.0 / 3.0)


# ----------------------------------------------------------------------------------------------------------------------
# Decoding.


def open_image(raw: np.ndarray | bytes, channels: int) -> Image.Image:
    """A (lazy, for encoded bytes) PIL image in mode "L" (channels 1) or "RGB" (channels 3).

    Encoded JPEGs stay undecoded until first use, so `draft` (see `_draft`) can still pick a cheaper DCT scale.
    """
    if isinstance(raw, np.ndarray):
        return Image.fromarray(raw[..., 0] if raw.shape[-1] == 1 else raw)
    return Image.open(io.BytesIO(raw))


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    mode = "L" if channels == 1 else "RGB"
    return img if img.mode == mode else img.convert(mode)


def _draft(img: Image.Image, channels: int, need_w: float, need_h: float, enabled: bool
           ) -> tuple[Image.Image, float, float]:
    """Lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while keeping at least (need_w, need_h) pixels.

    Returns the image and the x/y factors from original to drafted coordinates (1.0 when nothing changed).
    """
    w0, h0 = img.size
    if enabled and img.format == "JPEG" and need_w < w0 and need_h < h0:
        img.draft("L" if channels == 1 else "RGB", (math.ceil(need_w), math.ceil(need_h)))
    return _to_mode(img, channels), img.size[0] / w0, img.size[1] / h0


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H, W, channels)."""
    a = np.asarray(_to_mode(img, channels), dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


# ----------------------------------------------------------------------------------------------------------------------
# Geometry.


def rrc_box(width: int, height: int, rng: np.random.Generator, scale_min: float) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, w, h): torchvision's 10 area/log-ratio attempts, then a center fallback."""
    area = width * height
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif in_ratio > _RATIO[1]:
        w, h = int(round(height * _RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator, scale_min: float, channels: int,
                        draft: bool = True) -> Image.Image:
    """Crop `rrc_box` and resize it to (size, size), bicubic, in one PIL call."""
    left, top, w, h = rrc_box(img.size[0], img.size[1], rng, scale_min)
    sw, sh = img.size[0] * size / w, img.size[1] * size / h
    img, fx, fy = _draft(img, channels, sw, sh, draft)
    box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)


def fits_for_padding(width: int, height: int, size: int, small_image_mode: str) -> bool:
    """The small-image rule: zero-pad (not resize) when the whole image fits inside size x size and mode is "pad"."""
    return small_image_mode == "pad" and width <= size and height <= size


def pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads (H, W, C) centered to (size, size, C); (size - H) // 2 rows on top (28 -> 32: 2 px each side)."""
    h, w = img.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((size, size, img.shape[2]), np.uint8)
    out[top:top + h, left:left + w] = img
    return out


def resize_center_crop(img: Image.Image, size: int, crop_ratio: float, channels: int, draft: bool = True
                       ) -> Image.Image:
    """Resize the shorter side to int(size / crop_ratio) (bicubic), then center-crop size (torchvision rounding)."""
    w0, h0 = img.size
    short = int(size / crop_ratio)
    rw, rh = (short, int(short * h0 / w0)) if w0 < h0 else (int(short * w0 / h0), short)
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    if (rw, rh) == (w0, h0):  # already at the target scale: crop only
        return _to_mode(img, channels).crop((left, top, left + size, top + size))
    img, fx, fy = _draft(img, channels, rw, rh, draft)
    sx, sy = fx * w0 / rw, fy * h0 / rh  # resized -> (drafted) source coordinates
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)


def eval_image(raw: np.ndarray | bytes, size: int, crop_ratio: float, small_image_mode: str, channels: int,
               draft: bool = True) -> np.ndarray:
    """The eval transform of one image -> uint8 (size, size, channels)."""
    img = open_image(raw, channels)
    if fits_for_padding(img.size[0], img.size[1], size, small_image_mode):
        return pad_to(to_array(img, channels), size)
    return to_array(resize_center_crop(img, size, crop_ratio, channels, draft), channels)


def pad_crop_image(raw: np.ndarray | bytes, size: int, rng: np.random.Generator, small_image_mode: str,
                   channels: int, hflip: bool, draft: bool = True) -> np.ndarray:
    """"pad_crop" on one image: fit to size, zero-pad 4, random size x size crop, optional flip."""
    img = open_image(raw, channels)
    if fits_for_padding(img.size[0], img.size[1], size, small_image_mode):
        fitted = pad_to(to_array(img, channels), size)
    else:
        fitted = to_array(resize_center_crop(img, size, 1.0, channels, draft), channels)
    return pad_crop_batch(fitted[None], size, rng, hflip)[0]


# ----------------------------------------------------------------------------------------------------------------------
# Vectorised batch ops (fixed-size inputs).


def pad_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads (n, h, w, C) -> (n, size, size, C), centered like `pad_to`."""
    n, h, w, c = images.shape
    if h == size and w == size:
        return images
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, c), np.uint8)
    out[:, top:top + h, left:left + w] = images
    return out


def pad_crop_batch(images: np.ndarray, size: int, rng: np.random.Generator, hflip: bool) -> np.ndarray:
    """(n, size, size, C) uint8 -> zero-pad 4, a random size x size window per image, flips; one gather."""
    n, _, _, c = images.shape
    p = PAD_CROP_PAD
    canvas = np.zeros((n, size + 2 * p, size + 2 * p, c), np.uint8)
    canvas[:, p:p + size, p:p + size] = images
    oy = rng.integers(0, 2 * p + 1, size=n)
    ox = rng.integers(0, 2 * p + 1, size=n)
    flip = rng.random(n) < 0.5 if hflip else np.zeros(n, bool)
    ar = np.arange(size)
    rows = oy[:, None] + ar
    cols = ox[:, None] + np.where(flip[:, None], size - 1 - ar, ar)
    return canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (..., C) -> float32 (x / 255 - mean) / std."""
    mean = np.asarray(mean, np.float32) * 255.0
    inv = 1.0 / (np.asarray(std, np.float32) * 255.0)
    return (images.astype(np.float32) - mean) * inv


# ----------------------------------------------------------------------------------------------------------------------
# 3-Augment (DeiT-III) and ColorJitter.


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator, channels: int) -> Image.Image:
    """torchvision ColorJitter(b=c=s=strength) on PIL: factors ~ U[max(0, 1 - j), 1 + j], ops in random order."""
    if strength <= 0:
        return img
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast] + ([ImageEnhance.Color] if channels == 3 else [])
    for k in rng.permutation(len(ops)):
        img = ops[k](img).enhance(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))
    return img


def three_augment(img: Image.Image, rng: np.random.Generator, jitter: float, channels: int) -> Image.Image:
    """One of {grayscale, solarize, gaussian blur} + ColorJitter (DeiT-III); see the module docstring for 1 channel."""
    choices = ("gray", "solarize", "blur") if channels == 3 else ("solarize", "blur")
    op = choices[int(rng.integers(len(choices)))]
    if op == "gray":
        img = img.convert("L").convert("RGB")
    elif op == "solarize":
        img = ImageOps.solarize(img, threshold=128)
    else:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))  # PIL radius = sigma
    return color_jitter(img, jitter, rng, channels)


def train_image(raw: np.ndarray | bytes, size: int, rng: np.random.Generator, *, augment: str, scale_min: float,
                hflip: bool, three_aug: bool, jitter: float, crop_ratio: float, small_image_mode: str, channels: int,
                draft: bool = True) -> np.ndarray:
    """The train transform of one image -> uint8 (size, size, channels)."""
    if augment == "pad_crop":
        out = pad_crop_image(raw, size, rng, small_image_mode, channels, hflip, draft)
    elif augment == "none":
        out = eval_image(raw, size, crop_ratio, small_image_mode, channels, draft)
    else:  # "rrc"
        img = random_resized_crop(open_image(raw, channels), size, rng, scale_min, channels, draft)
        if hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = to_array(img, channels)
    if three_aug:
        out = to_array(three_augment(open_image(out, channels), rng, jitter, channels), channels)
    return out
