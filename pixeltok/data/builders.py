"""TF-free TFDS builders that convert local files into ArrayRecord data sets, prepared atomically.

* Fashion-MNIST: the official IDX `.gz` files (Debian package `dataset-fashion-mnist`) -> `pixeltok_fashion_mnist`,
  images as fixed-shape `Tensor(uint8, (28, 28, 1))`, records in the official order (shuffling disabled), so record
  `i` of a split is IDX example `i`.
* Image folders: `<root>/{train,val}/<class>/<image>` -> `pixeltok_image_folder` under
  `<data_dir>/imagefolder/<hash of the resolved root and channel request>/`, images stored encoded (the file's own
  JPEG/PNG bytes, or a PNG re-encode for other formats), labels = index of the class in the sorted class names.

Preparation is safe when several processes start at once (multi-host runs): a file lock serialises the builders and
each one writes into a private temporary directory that is renamed into place only when complete, so a reader never
sees a half-written data set.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

FASHION_MNIST_NAME = "pixeltok_fashion_mnist"
IMAGE_FOLDER_NAME = "pixeltok_image_folder"
VERSION = "1.0.0"
_FASHION_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GRAY_MODES = ("L", "1", "LA", "I;16", "I", "F")


# ----------------------------------------------------------------------------------------------------------------------
# Atomic, lock-protected preparation.


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if missing); blocks until acquired."""
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_prepared(version_dir: pathlib.Path) -> bool:
    """A version dir only appears through an atomic rename, so its `dataset_info.json` means "complete"."""
    return (version_dir / "dataset_info.json").is_file()


def prepare_atomically(parent_dir: pathlib.Path, name: str,
                       make_builder: Callable[[str], tfds.core.DatasetBuilder]) -> pathlib.Path:
    """Returns `<parent_dir>/<name>/<VERSION>`, building it with `make_builder(tmp_data_dir)` if it is missing.

    The builder writes into a temporary data dir next to the final one (same file system, so `os.rename` is atomic);
    the lock makes a second process wait and then reuse the first one's result instead of building again.
    `make_builder` must create the builder with `file_format="array_record"`.
    """
    final = parent_dir / name / VERSION
    if is_prepared(final):
        return final
    parent_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(parent_dir / f".{name}.lock"):
        if is_prepared(final):
            return final
        tmp_root = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent_dir))
        try:
            builder = make_builder(os.fspath(tmp_root))
            builder.download_and_prepare()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp_root / name / VERSION, final)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST from IDX files.


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Decodes a gzipped IDX file (big-endian header: magic with the rank in its last byte, then the dims) to uint8."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check_fashion_mnist_files(idx_dir: str | os.PathLike) -> pathlib.Path:
    """Raises a one-line ValueError naming the first missing IDX file."""
    idx_dir = pathlib.Path(idx_dir)
    for files in _FASHION_FILES.values():
        for fname in files:
            if not (idx_dir / fname).is_file():
                raise ValueError(
                    f"Fashion-MNIST IDX file {idx_dir / fname} not found; run `make data` (installs the Debian package "
                    f"dataset-fashion-mnist into /usr/share/datasets/fashion-mnist) or set config.fashion_mnist_dir")
    return idx_dir


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of builders that read local files only."""

    # tfds looks for a checksums file next to the builder's code through `importlib_resources` (not installed, and
    # nothing is downloaded here); no code path -> no checksum lookup.
    code_path = None


class FashionMnistIdx(_LocalBuilder, skip_registration=True):
    """Official Fashion-MNIST (60,000 train / 10,000 test, 28x28x1 uint8, 10 classes) from local IDX files."""

    name = FASHION_MNIST_NAME
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, idx_dir: str, **kwargs):
        self._idx_dir = pathlib.Path(idx_dir)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo built directly: `dataset_info_from_configs` needs a package dir.
        # BYTES encoding stores the raw 784 bytes (the default stores an int64 list: 2x larger, 1.6x slower to read).
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST (Xiao et al. 2017) converted from the official IDX files.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep the official order: record i == IDX example i
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(split) for split in _FASHION_FILES}

    def _generate_examples(self, split: str):
        images_file, labels_file = _FASHION_FILES[split]
        images = read_idx(self._idx_dir / images_file)[..., None]
        labels = read_idx(self._idx_dir / labels_file)
        if images.shape[1:] != (28, 28, 1) or len(images) != len(labels):
            raise ValueError(f"unexpected IDX contents in {self._idx_dir}: images {images.shape}, labels "
                             f"{labels.shape}; expected (N, 28, 28) and (N,)")
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}


def prepare_fashion_mnist(data_dir: str | os.PathLike, idx_dir: str | os.PathLike) -> pathlib.Path:
    """Converts the IDX files once; returns the prepared TFDS version dir."""
    final = pathlib.Path(data_dir) / FASHION_MNIST_NAME / VERSION
    if is_prepared(final):
        return final
    idx_dir = check_fashion_mnist_files(idx_dir)
    return prepare_atomically(pathlib.Path(data_dir), FASHION_MNIST_NAME,
                              lambda d: FashionMnistIdx(
        idx_dir=os.fspath(idx_dir), data_dir=d, file_format="array_record"))


# ----------------------------------------------------------------------------------------------------------------------
# Image folders.


def _list_classes(split_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(class_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in class_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def scan_image_folder(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")
                      ) -> tuple[list[str], dict[str, list[tuple[pathlib.Path, int]]]]:
    """Lists `<root>/<split>/<class>/*` images; classes sorted by name; labels are class indices.

    Raises:
      ValueError (one line each): missing root or split dir, no class dirs, a split without images, or train and val
        class sets that differ.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder root {root} does not exist (expected {root}/train/<class>/*.jpg and "
                         f"{root}/val/<class>/*)")
    for split in splits:  # structure first, so the message names the first thing to fix
        if not (root / split).is_dir():
            raise ValueError(f"image folder split dir {root / split} does not exist (expected "
                             f"{root / split}/<class>/*)")
    classes = _list_classes(root / splits[0])
    for split in splits:
        split_classes = _list_classes(root / split)
        if not split_classes:
            raise ValueError(f"image folder split dir {root / split} has no class subdirectories")
        if split_classes != classes:
            only_a = sorted(set(classes) - set(split_classes))[:5]
            only_b = sorted(set(split_classes) - set(classes))[:5]
            raise ValueError(f"image folder {root}: classes of {splits[0]!r} and {split!r} differ (only in "
                             f"{splits[0]}: {only_a}, only in {split}: {only_b})")
    files = {}
    for split in splits:
        files[split] = [(path, label) for label, c in enumerate(classes) for path in _list_images(root / split / c)]
        if not files[split]:
            raise ValueError(f"image folder split dir {root / split} contains no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
    return classes, files


def detect_channels(paths: list[pathlib.Path]) -> int:
    """1 when every image is grayscale (read from the headers only), else 3."""
    for path in paths:
        with Image.open(path) as img:
            if img.mode not in _GRAY_MODES:
                return 3
    return 1


def encode_image_file(path: pathlib.Path, channels: int) -> bytes:
    """The file's own bytes when it is a JPEG/PNG already in the target mode, else a PNG of the converted image."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as img:
        if img.format in ("JPEG", "PNG") and img.mode == mode:
            return path.read_bytes()
        buf = io.BytesIO()
        img.convert(mode).save(buf, format="PNG")
        return buf.getvalue()


class ImageFolderBuilder(_LocalBuilder, skip_registration=True):
    """Encoded images + sorted-class-name labels from `<root>/<split>/<class>/*` (splits "train" and "val")."""

    name = IMAGE_FOLDER_NAME
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, classes: list[str], files: dict[str, list[tuple[pathlib.Path, int]]], root: pathlib.Path,
                 channels: int, **kwargs):
        self._classes, self._files, self._root, self._channels = classes, files, root, channels
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Image folder {self._root}",
            features=tfds.features.FeaturesDict({
                # encoding_format=None: stores the given bytes as they are (JPEG or PNG); decoded with pillow.
                "image": tfds.features.Image(shape=(None, None, self._channels)),
                "label": tfds.features.ClassLabel(names=self._classes),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self._files}

    def _generate_examples(self, split: str):
        for path, label in self._files[split]:
            rel = path.relative_to(self._root).as_posix()
            yield rel, {"image": encode_image_file(path, self._channels), "label": label, "file_name": rel}


def image_folder_dir(data_dir: str | os.PathLike, root: str | os.PathLike, channels: int) -> pathlib.Path:
    """`<data_dir>/imagefolder/<16 hex of sha256(resolved root, channel request)>`: one prepared set per root."""
    key = f"{pathlib.Path(root).expanduser().resolve()}|channels={channels}"
    return pathlib.Path(data_dir) / "imagefolder" / hashlib.sha256(key.encode()).hexdigest()[:16]


def prepare_image_folder(data_dir: str | os.PathLike, root: str | os.PathLike, channels: int = -1) -> pathlib.Path:
    """Converts the folder once (reused afterwards: delete the returned dir's parent to rebuild after edits).

    Args:
      data_dir: where prepared data sets live.
      root: the image folder root.
      channels: 3 (RGB), 1 (grayscale) or -1 (detect: 1 when every image is grayscale, else 3).

    Returns:
      The prepared TFDS version dir.
    """
    if channels not in (-1, 1, 3):
        raise ValueError(f"num_channels={channels} is not valid for an image folder; use -1 (detect), 1 or 3")
    parent = image_folder_dir(data_dir, root, channels)
    final = parent / IMAGE_FOLDER_NAME / VERSION
    if is_prepared(final):
        return final
    root = pathlib.Path(root).expanduser().resolve()
    classes, files = scan_image_folder(root)
    if channels == -1:
        channels = detect_channels([p for split_files in files.values() for p, _ in split_files])
    final = prepare_atomically(parent, IMAGE_FOLDER_NAME, lambda d: ImageFolderBuilder(
        classes=classes, files=files, root=root, channels=channels, data_dir=d, file_format="array_record"))
    (parent / "root.txt").write_text(f"{root}\n")  # for humans: which folder this hash is
    return final
