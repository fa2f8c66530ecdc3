"""Data set resolution: config.dataset -> prepared TFDS ArrayRecord data + metadata + random-access record sources.

Supported `config.dataset` values:
* "fashion_mnist": converted once from the IDX files in `config.fashion_mnist_dir` (see builders.py).
* "imagenet2012": read with `tfds.data_source("imagenet2012", data_dir=config.data_dir)` from a TFDS ArrayRecord
  build the user prepared (never downloaded or built here).
* "imagefolder:<root>": converted once from `<root>/{train,val}/<class>/*` (see builders.py).
* dense (segmentation) data sets "fashion_mnist_seg", "ade20k", "segfolder:<root>": see segmentation.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import threading
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from pixeltok.data import builders

# Per-data-set normalisation constants (mean, std) in [0, 1] units.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Fashion-MNIST train-set pixel statistics.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# Grayscale image folders: ImageNet's constants pushed through the ITU-R 601 luma weights PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)
GRAY_IMAGENET_MEAN = (float(np.dot(_LUMA, IMAGENET_MEAN)),)
GRAY_IMAGENET_STD = (float(np.dot(_LUMA, IMAGENET_STD)),)

_EVAL_ALIASES = ("validation", "val", "test")
_CACHE_MAX_BYTES = 2 << 30  # "auto" keeps fixed-shape splits up to 2 GiB decoded in memory


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a data set.

    Attributes:
      name: `config.dataset` as given.
      num_classes: number of classes in the data.
      num_channels: image channels (1 or 3).
      num_train: train examples actually used (after `config.max_train_examples`).
      num_eval: examples in the eval split.
      image_size: native square side when every image has the same square size (28 for Fashion-MNIST), else None.
      num_train_total: train examples in the split before `max_train_examples`.
      train_split, eval_split: the split names actually read (aliases resolved, e.g. "test" -> "validation").
      mean, std: per-channel normalisation constants in [0, 1] units.
      class_names: class names when the data set has them, else ().
      dense: a segmentation data set (labels are (H, W) maps; see data/segmentation.py).
      ignore_label: the label value of unlabelled/padded pixels in dense labels.
    """

    name: str
    num_classes: int
    num_channels: int
    num_train: int
    num_eval: int
    image_size: int | None
    num_train_total: int = 0
    train_split: str = "train"
    eval_split: str = "test"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()
    dense: bool = False
    ignore_label: int = 255


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A located, prepared data set: how to open its splits and its metadata."""

    name: str
    ref: str                  # a TFDS version dir, or a registered TFDS name read through `tfds.data_source`
    by_name: bool
    data_dir: str
    encoded: bool             # images stored encoded (tfds Image) rather than as fixed uint8 tensors
    num_classes: int
    num_channels: int
    image_shape: tuple        # (H, W, C) with None for variable dims
    split_sizes: dict
    class_names: tuple
    mean: tuple
    std: tuple

    def resolve_split(self, split: str) -> str:
        """Exact split name, or an eval alias ("test" / "val" / "validation") mapped to the one that exists."""
        base = split.split("[", 1)[0]
        if base in self.split_sizes:
            return split
        if base in _EVAL_ALIASES:
            for alias in _EVAL_ALIASES:
                if alias in self.split_sizes:
                    return alias + split[len(base):]
        raise ValueError(f"split {split!r} not in data set {self.name!r}; available: {sorted(self.split_sizes)}")


class RecordSource:
    """Random access to one split: `read(indices) -> (images, labels)`; picklable (opens lazily per process).

    images: a uint8 (n, H, W, C) array for fixed-shape data, else a list of encoded-image bytes.
    With `cache`, a fixed-shape split is decoded once into memory per process (Fashion-MNIST: ~2 s, 47 MB), which
    makes reads free compared with the ~30 us/record tfds deserialisation.
    """

    def __init__(self, resolved: Resolved, split: str, cache: bool):
        self._r = resolved
        self.split = resolved.resolve_split(split)
        self._cache = cache and not resolved.encoded
        self._num = _split_len(resolved, self.split)
        self._src = None

    def __len__(self) -> int:
        return self._num

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_src": None}

    def _tfds(self) -> Any:
        if self._src is None:
            decoders = {"image": tfds.decode.SkipDecoding()} if self._r.encoded else None
            if self._r.by_name:
                self._src = tfds.data_source(self._r.ref, split=self.split, data_dir=self._r.data_dir,
                                             download=False, decoders=decoders)
            else:
                self._src = _builder(self._r.ref).as_data_source(split=self.split, decoders=decoders)
        return self._src

    def read(self, indices: np.ndarray) -> tuple[np.ndarray | list[bytes], np.ndarray]:
        """indices: (n,) ints in [0, len) -> images, int64 labels (n,)."""
        if self._cache:
            images, labels = _cached_arrays(self)
            return images[indices], labels[indices]
        records = self._tfds().__getitems__([int(i) for i in indices])
        labels = np.asarray([r["label"] for r in records], np.int64)
        if self._r.encoded:
            return [r["image"] for r in records], labels
        return np.stack([r["image"] for r in records]), labels

    def read_all_fixed(self, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """The whole (fixed-shape) split as arrays, read in chunks."""
        parts = [self._tfds().__getitems__(range(s, min(s + chunk, self._num))) for s in range(0, self._num, chunk)]
        records = [r for part in parts for r in part]
        images = np.stack([r["image"] for r in records]) if records else np.zeros((0, *self._r.image_shape), np.uint8)
        return images, np.asarray([r["label"] for r in records], np.int64)


_BUILDERS_LOCK = threading.Lock()
_ARRAYS_LOCK = threading.Lock()
_BUILDERS: dict[str, Any] = {}
_ARRAYS: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _builder(version_dir: str) -> Any:
    with _BUILDERS_LOCK:
        if version_dir not in _BUILDERS:
            _BUILDERS[version_dir] = tfds.builder_from_directory(version_dir)
        return _BUILDERS[version_dir]


def _cached_arrays(source: RecordSource) -> tuple[np.ndarray, np.ndarray]:
    key = (source._r.ref, source.split)  # pylint: disable=protected-access
    with _ARRAYS_LOCK:  # one loader per process; grain threads wait for it
        if key not in _ARRAYS:
            _ARRAYS[key] = source.read_all_fixed()
        return _ARRAYS[key]


def _split_len(r: Resolved, split: str) -> int:
    if split in r.split_sizes:
        return r.split_sizes[split]
    info = _builder(r.ref).info if not r.by_name else tfds.builder(r.ref, data_dir=r.data_dir).info
    return info.splits[split].num_examples


def cache_enabled(config, resolved: Resolved, split_len: int) -> bool:
    """config.data_cache: "auto" caches fixed-shape splits up to 2 GiB, "off" never."""
    if config.data_cache not in ("auto", "off"):
        raise ValueError(f"data_cache={config.data_cache!r} is not valid; use 'auto' or 'off'")
    if config.data_cache == "off" or resolved.encoded:
        return False
    return split_len * int(np.prod(resolved.image_shape)) <= _CACHE_MAX_BYTES


def _from_info(name: str, ref: str, by_name: bool, data_dir: str, info: Any, mean: tuple, std: tuple) -> Resolved:
    image_feature, label_feature = info.features["image"], info.features["label"]
    shape = tuple(image_feature.shape)
    names = tuple(label_feature.names) if label_feature.names else ()
    if names == tuple(str(i) for i in range(label_feature.num_classes)):
        names = ()
    return Resolved(
        name=name, ref=ref, by_name=by_name, data_dir=data_dir,
        encoded=isinstance(image_feature, tfds.features.Image), num_classes=int(label_feature.num_classes),
        num_channels=int(shape[-1]), image_shape=shape,
        split_sizes={k: int(v.num_examples) for k, v in info.splits.items()}, class_names=names,
        mean=mean if shape[-1] == len(mean) else GRAY_IMAGENET_MEAN, std=std if shape[-1] == len(std) else
        GRAY_IMAGENET_STD)


def _find_prepared_tfds(name: str, data_dir: pathlib.Path) -> pathlib.Path:
    """The newest `<data_dir>/<name>/<version>/` with an ArrayRecord build; one-line ValueError otherwise."""
    how = (f"prepare it once as ArrayRecord, e.g. `tfds build {name} --data_dir={data_dir} --manual_dir=<dir with the "
           f"ILSVRC2012 tars> --file_format=array_record`, or point config.data_dir at an existing TFDS dir")
    candidates = sorted((p.parent for p in (data_dir / name).glob("*/dataset_info.json")),
                        key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
    if not candidates:
        raise ValueError(f"no prepared TFDS data set {name!r} in {data_dir / name}; {how}")
    version_dir = candidates[-1]
    fmt = json.loads((version_dir / "dataset_info.json").read_text()).get("fileFormat", "tfrecord")
    if fmt != "array_record":
        raise ValueError(f"{version_dir} holds {fmt} files but grain needs array_record; {how}")
    return version_dir


def resolve(config) -> Resolved:
    """Locates (and on first use prepares) `config.dataset`."""
    name = config.dataset
    data_dir = pathlib.Path(os.path.expanduser(config.data_dir))
    if name == "fashion_mnist":
        version_dir = builders.prepare_fashion_mnist(data_dir, os.path.expanduser(config.fashion_mnist_dir))
        return _from_info(name, os.fspath(version_dir), False, os.fspath(data_dir),
                          _builder(os.fspath(version_dir)).info, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    if name == "imagenet2012":
        version_dir = _find_prepared_tfds(name, data_dir)
        ref = f"{name}:{version_dir.name}"  # the registered TFDS builder, pinned to the version found on disk
        info = tfds.builder(ref, data_dir=os.fspath(data_dir)).info
        return _from_info(name, ref, True, os.fspath(data_dir), info, IMAGENET_MEAN, IMAGENET_STD)
    if name.startswith("imagefolder:"):
        root = name.split(":", 1)[1]
        if not root:
            raise ValueError("dataset 'imagefolder:' needs a root, e.g. 'imagefolder:/data/my_images'")
        version_dir = builders.prepare_image_folder(data_dir, root, int(config.num_channels))
        return _from_info(name, os.fspath(version_dir), False, os.fspath(data_dir),
                          _builder(os.fspath(version_dir)).info, IMAGENET_MEAN, IMAGENET_STD)
    raise ValueError(f"dataset {name!r} is not supported; use 'fashion_mnist', 'imagenet2012', 'imagefolder:<root>' "
                     f"or (segmentation) 'fashion_mnist_seg', 'ade20k', 'segfolder:<root>'")
