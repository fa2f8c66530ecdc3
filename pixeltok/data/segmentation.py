"""Dense (semantic segmentation) data: preparation, random access, joint image/mask transforms, grain pipelines.

Data sets (`config.dataset`):
* `fashion_mnist_seg`: an embedded dense set built deterministically from the Fashion-MNIST IDX files: 2-4 garments
  (2x2-mean-pooled to 14x14) composited onto a black 32x32 canvas, later garments occluding earlier ones; a pixel is
  labelled with its garment's class + 1 where the (pooled) garment pixel is >= `FMS_THRESHOLD`, else 0 =
  "background" (a real class here). 11 classes, nothing ignored. See docs/segmentation.md for the class balance.
* `segfolder:<root>`: the ADE20k release layout `<root>/images/{training,validation}/<stem>.{jpg,png}` with
  `<root>/annotations/{training,validation}/<stem>.png` (single-channel 8-bit label maps, PNG mode L or P).
  With `config.seg_reduce_zero_label` (default True, ADE20k's convention) raw label 0 is ignored and raw k >= 1 is
  class k - 1, so `num_classes` excludes 0; without it raw k is class k. Raw 255 is always "ignore". `num_classes`
  is `config.num_classes` when >= 0, else the largest label found.
* `ade20k` (or `ade20k:<root>`): the same reader on an extracted `ADEChallengeData2016` directory (`<root>`, or
  `<data_dir>/ADEChallengeData2016`, or `<data_dir>/ade20k/ADEChallengeData2016`), 150 classes, reduce_zero_label.

Folders are validated completely before anything is converted (sizes, modes, label ranges: one `ValueError` line
naming the file and what is valid) and converted once to ArrayRecord under `<data_dir>/segfolder/<hash>/`, the
files' own encoded bytes stored (atomic, lock-protected: `builders.prepare_atomically`). Masks are stored raw; the
label convention is applied when reading (a 256-entry lookup table), after any nearest-neighbour resize.

Transforms (mmsegmentation's ADE20k pipeline, NumPy/PIL):
* train: scale jitter (the image is resized by `f = r * min(S / short, 4S / long)`, r ~ U[seg_scale_min,
  seg_scale_max], bilinear image / nearest mask), a random S x S crop (up to 10 tries to keep the most frequent class
  below `seg_cat_max_ratio` of the valid pixels), horizontal flip, padding to S x S (image 0 after normalisation =
  the mean colour, mask = the ignore label). Photometric distortion is not applied.
* eval: resized by `f = min(S / short, C / long)` with C = `seg_eval_canvas` (0 -> S), placed top-left on a C x C
  canvas padded as above. C == S is whole-image inference; C > S is sliding-window inference at S x S crops with
  stride `seg_eval_stride` over the canvas (done by the segmentation task). Metrics are computed on the label map at
  this resized resolution (nearest-resized), not at the original file's resolution: a documented deviation from
  mmsegmentation (see docs/segmentation.md). For fashion_mnist_seg (32 x 32, S = 32) eval is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from pixeltok.data import builders, sources, transforms

FMS_NAME = "pixeltok_fashion_mnist_seg"
SEG_FOLDER_NAME = "pixeltok_seg_folder"
META_FILE = "pixeltok_seg.json"
DENSE_NAMES = ("fashion_mnist_seg", "ade20k")
DEFAULT_IGNORE_LABEL = 255
ADE20K_NUM_CLASSES = 150

# fashion_mnist_seg construction constants (changing any of them changes the data set: bump FMS_VERSION).
FMS_VERSION = "1.0.0"
FMS_CANVAS = 32
FMS_GARMENT = 14          # 28x28 garments 2x2-mean-pooled
FMS_THRESHOLD = 32        # pooled pixel >= this -> garment pixel
FMS_MIN_GARMENTS, FMS_MAX_GARMENTS = 2, 4
FMS_SPLITS = {"train": ("train", 20000, 0), "test": ("test", 2000, 1)}  # split -> (IDX split, canvases, seed)
FMS_CLASS_NAMES = ("background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
_SEG_SPLITS = {"training": "train", "validation": "validation"}  # folder name -> split name
_MASK_MODES = ("L", "P")


def is_dense(name: str) -> bool:
    """Whether `config.dataset` names a segmentation data set."""
    return name in DENSE_NAMES or name.startswith(("segfolder:", "ade20k:"))


def _get(config, key: str, default):
    """A segmentation config key, with its default when the base config does not have it (older configs)."""
    try:
        return config[key]
    except (KeyError, AttributeError):
        return default


def ignore_label(config) -> int:
    return int(_get(config, "ignore_label", DEFAULT_IGNORE_LABEL))


# ----------------------------------------------------------------------------------------------------------------------
# fashion_mnist_seg.


def make_fashion_mnist_seg(images: np.ndarray, labels: np.ndarray, count: int, seed: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Composites `count` canvases from Fashion-MNIST garments.

    Args:
      images: uint8 (N, 28, 28) garments; labels: (N,) classes 0..9.
      count: canvases to make; seed: the generator seed (fixed per split).

    Returns:
      uint8 images (count, 32, 32, 1) and uint8 masks (count, 32, 32, 1) with 0 = background, c + 1 = garment c.
    """
    rng = np.random.default_rng(seed)
    g = FMS_GARMENT
    pooled = images.reshape(-1, g, 2, g, 2).astype(np.float32).mean(axis=(2, 4))
    pooled = np.rint(pooled).astype(np.uint8)
    out_img = np.zeros((count, FMS_CANVAS, FMS_CANVAS), np.uint8)
    out_mask = np.zeros((count, FMS_CANVAS, FMS_CANVAS), np.uint8)
    for i in range(count):
        n = int(rng.integers(FMS_MIN_GARMENTS, FMS_MAX_GARMENTS + 1))
        for j in rng.integers(0, len(images), size=n):
            top, left = (int(v) for v in rng.integers(0, FMS_CANVAS - g + 1, size=2))
            garment = pooled[j]
            on = garment >= FMS_THRESHOLD
            out_img[i, top:top + g, left:left + g][on] = garment[on]
            out_mask[i, top:top + g, left:left + g][on] = int(labels[j]) + 1
    return out_img[..., None], out_mask[..., None]


class FashionMnistSegBuilder(builders._LocalBuilder, skip_registration=True):  # pylint: disable=protected-access
    """fashion_mnist_seg: fixed-shape (32, 32, 1) uint8 images and masks, 20,000 train / 2,000 test."""

    name = FMS_NAME
    VERSION = tfds.core.Version(FMS_VERSION)

    def __init__(self, *, idx_dir: str, **kwargs):
        self._idx_dir = pathlib.Path(idx_dir)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        shape = (FMS_CANVAS, FMS_CANVAS, 1)
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST garments composited onto 32x32 canvases with per-pixel class labels.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
                "segmentation": tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                                     encoding=tfds.features.Encoding.BYTES),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in FMS_SPLITS}

    def _generate_examples(self, split: str):
        idx_split, count, seed = FMS_SPLITS[split]
        img_file, lab_file = builders._FASHION_FILES[idx_split]  # pylint: disable=protected-access
        images, masks = make_fashion_mnist_seg(builders.read_idx(self._idx_dir / img_file),
                                               builders.read_idx(self._idx_dir / lab_file), count, seed)
        for i in range(count):
            yield i, {"image": images[i], "segmentation": masks[i]}

    def download_and_prepare(self, *args, **kwargs):
        super().download_and_prepare(*args, **kwargs)
        _write_meta(self.data_dir, num_classes=len(FMS_CLASS_NAMES), reduce_zero_label=False,
                    class_names=FMS_CLASS_NAMES, channels=1, encoded=False)


def _write_meta(version_dir, **meta) -> None:
    # Inside the (temporary) version dir, so it appears atomically with the data.
    (pathlib.Path(version_dir) / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def prepare_fashion_mnist_seg(data_dir: str | os.PathLike, idx_dir: str | os.PathLike) -> pathlib.Path:
    final = pathlib.Path(data_dir) / FMS_NAME / FMS_VERSION
    if builders.is_prepared(final):
        return final
    idx_dir = builders.check_fashion_mnist_files(idx_dir)
    return builders.prepare_atomically(pathlib.Path(data_dir), FMS_NAME, lambda d: FashionMnistSegBuilder(
        idx_dir=os.fspath(idx_dir), data_dir=d, file_format="array_record"))


# ----------------------------------------------------------------------------------------------------------------------
# Segmentation folders (ADE20k layout).


def _layout(root: pathlib.Path) -> str:
    return (f"{root}/images/{{training,validation}}/<stem>.jpg|png and {root}/annotations/{{training,validation}}/"
            f"<stem>.png")


def _read_mask(path: pathlib.Path) -> np.ndarray:
    """The raw label map of one annotation file: uint8 (H, W); one-line ValueError for a non-grayscale file."""
    with Image.open(path) as m:
        if m.mode not in _MASK_MODES:
            raise ValueError(f"annotation {path} has image mode {m.mode!r}; masks must be single-channel 8-bit PNGs "
                             f"(mode L or P) of class indices")
        return np.asarray(m)


def scan_seg_folder(root: str | os.PathLike, num_classes: int, reduce_zero_label: bool
                    ) -> tuple[int, int, dict[str, list[tuple[pathlib.Path, pathlib.Path]]]]:
    """Lists and validates the (image, annotation) pairs of both splits.

    Args:
      root: the folder root; num_classes: the class count (-1: the largest label found); reduce_zero_label: the
        ADE20k convention (raw 0 ignored, raw k -> class k - 1).

    Returns:
      (num_classes, channels (1 when every image is grayscale, else 3), {split: [(image, annotation), ...]}).

    Raises:
      ValueError (one line): missing dirs, an image without annotation, a non-grayscale mask, a mask whose size
        differs from its image's, or a label outside 0..num_classes (reduce_zero_label) / 0..num_classes-1 (255 is
        always allowed: ignore).
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"segmentation folder root {root} does not exist (expected {_layout(root)})")
    pairs: dict[str, list[tuple[pathlib.Path, pathlib.Path]]] = {}
    for folder, split in _SEG_SPLITS.items():
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise ValueError(f"segmentation folder {root}: {d} does not exist (expected {_layout(root)})")
        images = sorted(p for p in img_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in builders.IMAGE_EXTENSIONS)
        if not images:
            raise ValueError(f"segmentation folder {root}: {img_dir} contains no images ({_layout(root)})")
        pairs[split] = []
        for img in images:
            ann = ann_dir / f"{img.stem}.png"
            if not ann.is_file():
                raise ValueError(f"image {img} has no annotation {ann} (every image needs <stem>.png in {ann_dir})")
            pairs[split].append((img, ann))
    channels, max_label = 1, 0
    for split_pairs in pairs.values():
        for img, ann in split_pairs:
            with Image.open(img) as im:
                size = im.size
                if im.mode not in builders._GRAY_MODES:  # pylint: disable=protected-access
                    channels = 3
            mask = _read_mask(ann)
            if mask.ndim != 2 or (mask.shape[1], mask.shape[0]) != size:
                raise ValueError(f"annotation {ann} is {mask.shape[1]}x{mask.shape[0]} but its image {img} is "
                                 f"{size[0]}x{size[1]} (width x height); a mask must have its image's size")
            values = np.unique(mask)
            values = values[values != DEFAULT_IGNORE_LABEL]
            top = int(values.max()) if values.size else 0
            limit = num_classes if reduce_zero_label else num_classes - 1
            if num_classes >= 0 and top > limit:
                rule = (f"0..{num_classes} (0 = ignored, k -> class k-1: reduce_zero_label)" if reduce_zero_label
                        else f"0..{num_classes - 1}")
                raise ValueError(f"annotation {ann} has label {top} but num_classes={num_classes} allows labels "
                                 f"{rule} or 255 (ignored)")
            max_label = max(max_label, top)
    if num_classes < 0:
        num_classes = max_label if reduce_zero_label else max_label + 1
        if num_classes <= 0:
            raise ValueError(f"segmentation folder {root} has no labelled pixels (every annotation is 0 or 255)")
    return num_classes, channels, pairs


class SegFolderBuilder(builders._LocalBuilder, skip_registration=True):  # pylint: disable=protected-access
    """Encoded images + raw encoded PNG masks + file names; splits "train" and "validation"."""

    name = SEG_FOLDER_NAME
    VERSION = tfds.core.Version(builders.VERSION)

    def __init__(self, *, pairs: dict, root: pathlib.Path, channels: int, num_classes: int, reduce_zero_label: bool,
                 **kwargs):
        self._pairs, self._root, self._channels = pairs, root, channels
        self._num_classes, self._reduce = num_classes, reduce_zero_label
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Segmentation folder {self._root}",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, self._channels)),
                "segmentation": tfds.features.Image(shape=(None, None, 1)),
                "file_name": tfds.features.Text(),
            }),
            disable_shuffling=True,  # record i of a split is its i-th file in sorted order
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self._pairs}

    def _generate_examples(self, split: str):
        for img, ann in self._pairs[split]:
            rel = img.relative_to(self._root).as_posix()
            yield rel, {"image": builders.encode_image_file(img, self._channels), "segmentation": ann.read_bytes(),
                        "file_name": rel}

    def download_and_prepare(self, *args, **kwargs):
        super().download_and_prepare(*args, **kwargs)
        _write_meta(self.data_dir, num_classes=self._num_classes, reduce_zero_label=self._reduce, class_names=[],
                    channels=self._channels, encoded=True, root=os.fspath(self._root))


def seg_folder_dir(data_dir, root, num_classes: int, reduce_zero_label: bool) -> pathlib.Path:
    key = f"{pathlib.Path(root).expanduser().resolve()}|classes={num_classes}|reduce_zero_label={reduce_zero_label}"
    return pathlib.Path(data_dir) / "segfolder" / hashlib.sha256(key.encode()).hexdigest()[:16]


def prepare_seg_folder(data_dir, root, num_classes: int = -1, reduce_zero_label: bool = True) -> pathlib.Path:
    """Validates and converts a segmentation folder once; returns the prepared TFDS version dir."""
    parent = seg_folder_dir(data_dir, root, num_classes, reduce_zero_label)
    final = parent / SEG_FOLDER_NAME / builders.VERSION
    if builders.is_prepared(final):
        return final
    root = pathlib.Path(root).expanduser().resolve()
    k, channels, pairs = scan_seg_folder(root, num_classes, reduce_zero_label)
    final = builders.prepare_atomically(parent, SEG_FOLDER_NAME, lambda d: SegFolderBuilder(
        pairs=pairs, root=root, channels=channels, num_classes=k, reduce_zero_label=reduce_zero_label, data_dir=d,
        file_format="array_record"))
    (parent / "root.txt").write_text(f"{root}\n")
    return final


def _ade20k_root(name: str, data_dir: pathlib.Path) -> pathlib.Path:
    if name.startswith("ade20k:"):
        return pathlib.Path(name.split(":", 1)[1]).expanduser()
    for cand in (data_dir / "ADEChallengeData2016", data_dir / "ade20k" / "ADEChallengeData2016", data_dir / "ade20k"):
        if (cand / "annotations").is_dir():
            return cand
    raise ValueError(f"dataset 'ade20k' not found: extract ADEChallengeData2016.zip into {data_dir} (giving "
                     f"{data_dir}/ADEChallengeData2016/{{images,annotations}}) or use dataset='ade20k:<root>'")


# ----------------------------------------------------------------------------------------------------------------------
# Resolution and random access.


@dataclasses.dataclass(frozen=True)
class SegResolved:
    """A prepared dense data set."""

    name: str
    version_dir: str
    encoded: bool
    num_classes: int
    num_channels: int
    image_shape: tuple
    split_sizes: dict
    class_names: tuple
    mean: tuple
    std: tuple
    reduce_zero_label: bool

    def resolve_split(self, split: str) -> str:
        return sources.Resolved.resolve_split(self, split)  # same alias rules as classification data


def resolve(config) -> SegResolved:
    """Locates, validates and (on first use) prepares a dense `config.dataset`."""
    name = config.dataset
    data_dir = pathlib.Path(os.path.expanduser(config.data_dir))
    if name == "fashion_mnist_seg":
        version_dir = prepare_fashion_mnist_seg(data_dir, os.path.expanduser(config.fashion_mnist_dir))
        mean, std = sources.FASHION_MNIST_MEAN, sources.FASHION_MNIST_STD
    elif name.startswith("segfolder:") or name == "ade20k" or name.startswith("ade20k:"):
        if name.startswith("segfolder:"):
            root = name.split(":", 1)[1]
            if not root:
                raise ValueError("dataset 'segfolder:' needs a root, e.g. 'segfolder:/data/ADEChallengeData2016'")
            k, reduce = int(config.num_classes), bool(_get(config, "seg_reduce_zero_label", True))
        else:
            root, k, reduce = _ade20k_root(name, data_dir), ADE20K_NUM_CLASSES, True
            if int(config.num_classes) not in (-1, ADE20K_NUM_CLASSES):
                raise ValueError(f"config.num_classes={config.num_classes} but ADE20k has {ADE20K_NUM_CLASSES} "
                                 f"classes; set num_classes={ADE20K_NUM_CLASSES} or -1")
        version_dir = prepare_seg_folder(data_dir, root, k, reduce)
        mean, std = None, None
    else:
        raise ValueError(f"dataset {name!r} is not a segmentation data set; use 'fashion_mnist_seg', 'ade20k', "
                         f"'ade20k:<root>' or 'segfolder:<root>'")
    meta = json.loads((version_dir / META_FILE).read_text())
    info = sources._builder(os.fspath(version_dir)).info  # pylint: disable=protected-access
    shape = tuple(info.features["image"].shape)
    channels = int(meta["channels"])
    if mean is None:
        mean, std = ((sources.IMAGENET_MEAN, sources.IMAGENET_STD) if channels == 3 else
                     (sources.GRAY_IMAGENET_MEAN, sources.GRAY_IMAGENET_STD))
    return SegResolved(name=name, version_dir=os.fspath(version_dir), encoded=bool(meta["encoded"]),
                       num_classes=int(meta["num_classes"]), num_channels=channels, image_shape=shape,
                       split_sizes={k: int(v.num_examples) for k, v in info.splits.items()},
                       class_names=tuple(meta["class_names"]), mean=tuple(mean), std=tuple(std),
                       reduce_zero_label=bool(meta["reduce_zero_label"]))


_ARRAYS_LOCK = threading.Lock()
_ARRAYS: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


class SegSource:
    """Random access to one split: `read(indices) -> (images, masks)`; picklable (opens lazily per process).

    Fixed-shape data: uint8 (n, H, W, C) images and (n, H, W) raw masks (the split decoded once into memory).
    Encoded data: lists of encoded image bytes and of encoded mask bytes.
    """

    def __init__(self, r: SegResolved, split: str):
        self._r = r
        self.split = r.resolve_split(split)
        self._num = r.split_sizes[self.split]
        self._src = None

    def __len__(self) -> int:
        return self._num

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_src": None}

    def _tfds(self) -> Any:
        if self._src is None:
            decoders = ({"image": tfds.decode.SkipDecoding(), "segmentation": tfds.decode.SkipDecoding()}
                        if self._r.encoded else None)
            builder = sources._builder(self._r.version_dir)  # pylint: disable=protected-access
            self._src = builder.as_data_source(split=self.split, decoders=decoders)
        return self._src

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        key = (self._r.version_dir, self.split)
        with _ARRAYS_LOCK:
            if key not in _ARRAYS:
                recs = self._tfds().__getitems__(range(self._num))
                _ARRAYS[key] = (np.stack([r["image"] for r in recs]),
                                np.stack([r["segmentation"][..., 0] for r in recs]))
            return _ARRAYS[key]

    def read(self, indices: np.ndarray):
        if not self._r.encoded:
            images, masks = self._all()
            return images[indices], masks[indices]
        recs = self._tfds().__getitems__([int(i) for i in indices])
        return [r["image"] for r in recs], [r["segmentation"] for r in recs]


def label_lut(num_classes: int, reduce_zero_label: bool, ignore: int) -> np.ndarray:
    """Raw uint8 label -> training label (int32): the data set's convention, everything else -> `ignore`."""
    lut = np.full(256, ignore, np.int32)
    if reduce_zero_label:
        lut[1:num_classes + 1] = np.arange(num_classes)
    else:
        lut[:num_classes] = np.arange(num_classes)
    return lut


def decode_mask(raw) -> np.ndarray:
    """Raw (H, W) uint8 label values from an array or encoded PNG bytes (palette indices kept, never converted)."""
    if isinstance(raw, np.ndarray):
        return raw[..., 0] if raw.ndim == 3 else raw
    a = np.asarray(Image.open(io.BytesIO(raw)))
    return a[..., 0] if a.ndim == 3 else a


# ----------------------------------------------------------------------------------------------------------------------
# Joint transforms.


def _resize_pair(img: Image.Image, mask: np.ndarray, f: float) -> tuple[Image.Image, np.ndarray]:
    w0, h0 = img.size
    w, h = max(1, int(w0 * f + 0.5)), max(1, int(h0 * f + 0.5))
    if (w, h) == (w0, h0):
        return img, mask
    return (img.resize((w, h), Image.Resampling.BILINEAR),
            np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST)))


def _crop_box(labels: np.ndarray, size: int, rng: np.random.Generator, cat_max_ratio: float, ignore: int
              ) -> tuple[int, int]:
    """mmsegmentation's RandomCrop: up to 10 tries for a window whose most frequent class is < cat_max_ratio."""
    h, w = labels.shape
    mh, mw = max(h - size, 0), max(w - size, 0)
    top, left = int(rng.integers(0, mh + 1)), int(rng.integers(0, mw + 1))
    if cat_max_ratio < 1.0:
        for _ in range(10):
            win = labels[top:top + size, left:left + size]
            _, counts = np.unique(win[win != ignore], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = int(rng.integers(0, mh + 1)), int(rng.integers(0, mw + 1))
    return top, left


def seg_train_example(raw_img, raw_mask, size: int, rng: np.random.Generator, *, scale_range: tuple[float, float],
                      hflip: bool, cat_max_ratio: float, channels: int, lut: np.ndarray, ignore: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One train pair -> uint8 image (h, w, C) and int32 labels (h, w) with h, w <= size (padding comes later).

    The same geometry (scale, crop window, flip) is applied to image and mask: bilinear for the image, nearest for
    the mask, the label convention (`lut`) after the resize so that no label value is ever interpolated.
    """
    img = transforms.open_image(raw_img, channels)
    mask = decode_mask(raw_mask)
    w0, h0 = img.size
    if mask.shape != (h0, w0):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {w0}x{h0}")
    r = rng.uniform(*scale_range) if scale_range[0] != scale_range[1] else scale_range[0]
    f = r * min(size / min(w0, h0), 4 * size / max(w0, h0))
    if abs(f - 1.0) < 1e-9 or (scale_range == (1.0, 1.0) and w0 == size and h0 == size):
        f = 1.0
    img, mask = _resize_pair(img, mask, f)
    labels = lut[mask]
    pixels = transforms.to_array(img, channels)
    top, left = _crop_box(labels, size, rng, cat_max_ratio, ignore)
    pixels, labels = pixels[top:top + size, left:left + size], labels[top:top + size, left:left + size]
    if hflip and rng.random() < 0.5:
        pixels, labels = pixels[:, ::-1], labels[:, ::-1]
    return pixels, labels


def seg_eval_example(raw_img, raw_mask, size: int, canvas: int, channels: int, lut: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One eval pair resized by min(size / short, canvas / long) -> uint8 image (h, w, C), int32 labels (h, w)."""
    img = transforms.open_image(raw_img, channels)
    mask = decode_mask(raw_mask)
    w0, h0 = img.size
    img, mask = _resize_pair(img, mask, min(size / min(w0, h0), canvas / max(w0, h0)))
    return transforms.to_array(img, channels), lut[mask]


def _place(pixels: list[np.ndarray], labels: list[np.ndarray], size: int, channels: int, mean, std, ignore: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-left placement on a size x size canvas: normalised image padded with 0, labels padded with `ignore`."""
    n = len(pixels)
    out = np.zeros((n, size, size, channels), np.float32)
    lab = np.full((n, size, size), ignore, np.int32)
    for i, (p, l) in enumerate(zip(pixels, labels)):
        out[i, :p.shape[0], :p.shape[1]] = transforms.normalize(p, mean, std)
        lab[i, :l.shape[0], :l.shape[1]] = l
    return out, lab


@dataclasses.dataclass
class SegTrainBatch:
    """grain `random_map`: record indices (b,) -> {"image": float32 (b, S, S, C), "label": int32 (b, S, S)}."""

    source: SegSource
    size: int
    channels: int
    mean: tuple
    std: tuple
    scale_range: tuple
    hflip: bool
    cat_max_ratio: float
    lut: np.ndarray
    ignore: int

    def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        images, masks = self.source.read(indices)
        if (isinstance(images, np.ndarray) and images.shape[1:3] == (self.size, self.size)
                and tuple(self.scale_range) == (1.0, 1.0)):
            # Fixed-size data at the target size with no scale jitter: crop is the identity, only flips remain.
            labels = self.lut[masks]
            if self.hflip:
                flip = rng.random(len(indices)) < 0.5
                images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
                labels = np.where(flip[:, None, None], labels[:, :, ::-1], labels)
            return {"image": transforms.normalize(images, self.mean, self.std), "label": labels.astype(np.int32)}
        pairs = [seg_train_example(img, m, self.size, rng, scale_range=tuple(self.scale_range), hflip=self.hflip,
                                   cat_max_ratio=self.cat_max_ratio, channels=self.channels, lut=self.lut,
                                   ignore=self.ignore) for img, m in zip(images, masks)]
        image, label = _place([p for p, _ in pairs], [l for _, l in pairs], self.size, self.channels, self.mean,
                              self.std, self.ignore)
        return {"image": image, "label": label}


@dataclasses.dataclass
class SegEvalBatch:
    """grain `map`: record indices (b,) with -1 = padding -> {"image" (b, C, C, ch), "label" (b, C, C), "mask"}."""

    source: SegSource
    size: int
    canvas: int
    channels: int
    mean: tuple
    std: tuple
    lut: np.ndarray
    ignore: int

    def __call__(self, indices: np.ndarray) -> dict:
        valid = indices >= 0
        b = len(indices)
        out = np.zeros((b, self.canvas, self.canvas, self.channels), np.float32)
        labels = np.full((b, self.canvas, self.canvas), self.ignore, np.int32)
        if valid.any():
            images, masks = self.source.read(indices[valid])
            pairs = [seg_eval_example(img, m, self.size, self.canvas, self.channels, self.lut)
                     for img, m in zip(images, masks)]
            out[valid], labels[valid] = _place([p for p, _ in pairs], [l for _, l in pairs], self.canvas,
                                               self.channels, self.mean, self.std, self.ignore)
        return {"image": out, "label": labels, "mask": valid}


def eval_canvas(config) -> int:
    """The eval canvas side C (>= image_size): `seg_eval_canvas`, 0 -> image_size."""
    c = int(_get(config, "seg_eval_canvas", 0)) or int(config.image_size)
    if c < int(config.image_size):
        raise ValueError(f"seg_eval_canvas={c} is smaller than image_size={config.image_size}; use 0 or >= it")
    return c


def _check(config) -> None:
    lo, hi = float(_get(config, "seg_scale_min", 1.0)), float(_get(config, "seg_scale_max", 1.0))
    if not 0 < lo <= hi:
        raise ValueError(f"seg_scale_min={lo}, seg_scale_max={hi} are not valid; use 0 < seg_scale_min <= "
                         f"seg_scale_max")
    if not 0 < float(_get(config, "seg_cat_max_ratio", 1.0)) <= 1.0:
        raise ValueError(f"seg_cat_max_ratio={_get(config, 'seg_cat_max_ratio', 1.0)} is not valid; use (0, 1]")
    if not 0 <= ignore_label(config) <= 255 or ignore_label(config) < 0:
        raise ValueError(f"ignore_label={ignore_label(config)} is not valid; use a value in [0, 255]")
    if config.image_size <= 0:
        raise ValueError(f"image_size={config.image_size} is not valid; use a positive integer")


def get_info(config) -> sources.DataInfo:
    """DataInfo of a dense data set (prepared and validated on first use); `dense=True`."""
    from pixeltok.data import pipeline  # pylint: disable=import-outside-toplevel  (pipeline imports this module)
    r = resolve(config)
    if ignore_label(config) < r.num_classes:
        raise ValueError(f"ignore_label={ignore_label(config)} collides with a class of {r.name!r} "
                         f"(num_classes={r.num_classes}); use a value >= {r.num_classes}")
    train, evals = r.resolve_split(config.train_split), r.resolve_split(config.eval_split)
    total = r.split_sizes[train]
    info = sources.DataInfo(
        name=r.name, num_classes=r.num_classes, num_channels=r.num_channels,
        num_train=pipeline._num_train(config, total), num_eval=r.split_sizes[evals],  # pylint: disable=protected-access
        image_size=r.image_shape[0] if r.image_shape[0] is not None and r.image_shape[0] == r.image_shape[1] else None,
        num_train_total=total, train_split=train, eval_split=evals, mean=r.mean, std=r.std,
        class_names=r.class_names, dense=True, ignore_label=ignore_label(config))
    for key, have in (("num_classes", info.num_classes), ("num_channels", info.num_channels)):
        want = int(config[key])
        if want >= 0 and want != have:
            raise ValueError(f"config.{key}={want} but data set {r.name!r} has {key}={have}; set {key}={have} or -1")
    return info


def make_train_dataset(config, *, num_classes: int, process_index: int = 0, process_count: int = 1
                       ) -> grain.IterDataset:
    """The infinite deterministic train stream of a dense data set (same ordering rules as classification).

    Returns:
      grain IterDataset of {"image": float32 (b, S, S, C) normalised, "label": int32 (b, S, S)} (ignore label where
      nothing is labelled or padded).
    """
    from pixeltok.data import pipeline  # pylint: disable=import-outside-toplevel
    # pylint: disable=protected-access
    _check(config)
    local_batch = pipeline._per_process(int(config.batch_size), process_count, "batch_size")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    r = resolve(config)
    if num_classes < r.num_classes:
        raise ValueError(f"num_classes={num_classes} is smaller than the {r.num_classes} classes of {r.name!r}")
    source = SegSource(r, config.train_split)
    n = pipeline._num_train(config, len(source))
    if n < process_count * local_batch:
        raise ValueError(f"{n} train examples are fewer than one global batch of {config.batch_size}")
    ignore = ignore_label(config)
    fn = SegTrainBatch(source=source, size=int(config.image_size), channels=r.num_channels, mean=r.mean, std=r.std,
                       scale_range=(float(_get(config, "seg_scale_min", 1.0)),
                                    float(_get(config, "seg_scale_max", 1.0))),
                       hflip=bool(config.hflip), cat_max_ratio=float(_get(config, "seg_cat_max_ratio", 1.0)),
                       lut=label_lut(r.num_classes, r.reduce_zero_label, ignore), ignore=ignore)
    ds = grain.MapDataset.range(n).shuffle(seed=pipeline._derive_seed(config.seed, 0)).repeat()
    ds = ds[process_index::process_count]
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.random_map(fn, seed=pipeline._derive_seed(config.seed, 1, process_index))
    it = ds.to_iter_dataset(pipeline._read_options(config))
    if config.num_workers > 0:
        if not pipeline.flags.FLAGS.is_parsed():
            pipeline.flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.num_workers)))
    return it


def make_eval_batches(config, *, split: str | None = None, process_index: int = 0, process_count: int = 1
                      ) -> Iterator[dict]:
    """One pass over a dense eval split, sharded and padded like classification eval.

    Yields:
      {"image": float32 (b, C, C, ch), "label": int32 (b, C, C), "mask": bool (b,)} with C = `eval_canvas(config)`.
    """
    from pixeltok.data import pipeline  # pylint: disable=import-outside-toplevel
    # pylint: disable=protected-access
    _check(config)
    b = pipeline._per_process(int(config.eval_batch_size), process_count, "eval_batch_size")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    r = resolve(config)
    source = SegSource(r, split or config.eval_split)
    n = len(source)
    num_batches = math.ceil(math.ceil(n / process_count) / b)
    local = np.arange(process_index, n, process_count)
    padded = np.full(num_batches * b, -1, np.int64)
    padded[:len(local)] = local
    ignore = ignore_label(config)
    fn = SegEvalBatch(source=source, size=int(config.image_size), canvas=eval_canvas(config), channels=r.num_channels,
                      mean=r.mean, std=r.std, lut=label_lut(r.num_classes, r.reduce_zero_label, ignore),
                      ignore=ignore)
    ds = grain.MapDataset.source(padded.reshape(num_batches, b)).map(fn)
    return iter(ds.to_iter_dataset(pipeline._read_options(config)))
