"""grain pipelines: `get_info`, `make_train_dataset`, `make_eval_batches`.

Train: `MapDataset.range(n)` of record indices -> global shuffle with the shared `config.seed` (reshuffled every epoch)
-> infinite repeat -> `[process_index::process_count]` (disjoint per process) -> batch of `batch_size //
process_count` indices -> `random_map` that reads the records and augments them (per batch: vectorised for fixed-size
pad/crop inputs, a per-example PIL loop otherwise) -> `random_map` Mixup/CutMix -> threads or worker processes.
Every random choice comes from grain's per-(seed, batch index) generator, so the stream is a pure function of the
config and the batch index: two iterators agree, and a restored iterator state (`{"next_index": k}`) continues
exactly. Augmentation seeds also depend on `process_index` so that processes do not draw identical crops.

Worker processes (`config.num_workers > 0`, `mp_prefetch`): grain *spawns* them, so the entry script needs an
`if __name__ == "__main__":` guard, and absl flags must be parsed before the first batch, else grain fails with
UnparsedFlagAccessError: under `absl.app.run(main)` they are; otherwise `make_train_dataset` marks
them parsed (grain's flag defaults apply). All transforms here are module-level picklable classes; a "leaked
shared_memory" warning at exit is harmless. Workers pay off for JPEG decoding (ImageNet, image folders); for
Fashion-MNIST the in-process threads are faster (no inter-process copies). With `num_workers == 0` batches are
produced by `config.data_threads` threads (PIL and NumPy release the GIL in their heavy loops).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags

from pixeltok.data import mixing, segmentation, sources, transforms
from pixeltok.data.sources import DataInfo

_AUGMENTS = ("rrc", "pad_crop", "none")
_SMALL_IMAGE_MODES = ("pad", "resize")


def _check_config(config) -> None:
    if config.train_augment not in _AUGMENTS:
        raise ValueError(f"train_augment={config.train_augment!r} is not valid; use one of {_AUGMENTS}")
    if config.small_image_mode not in _SMALL_IMAGE_MODES:
        raise ValueError(f"small_image_mode={config.small_image_mode!r} is not valid; use one of {_SMALL_IMAGE_MODES}")
    if not 0.0 < config.crop_ratio <= 1.0:
        raise ValueError(f"crop_ratio={config.crop_ratio} is not valid; use a value in (0, 1]")
    if not 0.0 < config.rrc_scale_min <= 1.0:
        raise ValueError(f"rrc_scale_min={config.rrc_scale_min} is not valid; use a value in (0, 1]")
    if config.image_size <= 0:
        raise ValueError(f"image_size={config.image_size} is not valid; use a positive integer")


def _derive_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (grain shuffles need seeds in [0, 2**32))."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint32)[0])


def _per_process(total: int, process_count: int, what: str) -> int:
    if process_count <= 0 or total % process_count or total // process_count == 0:
        raise ValueError(f"{what}={total} must be a positive multiple of the process count {process_count}")
    return total // process_count


def _read_options(config) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=max(int(config.data_threads), 1),
                             prefetch_buffer_size=max(int(config.prefetch), 1))


def _num_train(config, total: int) -> int:
    return min(total, int(config.max_train_examples)) if config.max_train_examples > 0 else total


def get_info(config) -> DataInfo:
    """Prepares the data set on first use and describes it.

    Raises:
      ValueError: the data are missing (one line naming the path and how to get them), or `config.num_classes` /
        `config.num_channels` are set (>= 0) and differ from the data.
    """
    if segmentation.is_dense(config.dataset):
        return segmentation.get_info(config)
    r = sources.resolve(config)
    train, evals = r.resolve_split(config.train_split), r.resolve_split(config.eval_split)
    total = len(sources.RecordSource(r, train, cache=False))
    info = DataInfo(
        name=r.name, num_classes=r.num_classes, num_channels=r.num_channels, num_train=_num_train(config, total),
        num_eval=len(sources.RecordSource(r, evals, cache=False)),
        image_size=r.image_shape[0] if r.image_shape[0] is not None and r.image_shape[0] == r.image_shape[1] else None,
        num_train_total=total, train_split=train, eval_split=evals, mean=tuple(r.mean), std=tuple(r.std),
        class_names=r.class_names)
    for key, have in (("num_classes", info.num_classes), ("num_channels", info.num_channels)):
        want = int(config[key])
        if want >= 0 and want != have:
            raise ValueError(f"config.{key}={want} but data set {r.name!r} has {key}={have}; set {key}={have} or -1")
    return info


@dataclasses.dataclass
class TrainBatch:
    """grain `random_map`: a batch of record indices (b,) -> {"image": float32 (b, S, S, C), "label": (b, K)}."""

    source: sources.RecordSource
    size: int
    num_classes: int
    channels: int
    mean: tuple
    std: tuple
    augment: str
    scale_min: float
    hflip: bool
    three_aug: bool
    jitter: float
    crop_ratio: float
    small_image_mode: str
    draft: bool

    def _vectorisable(self, images) -> bool:
        """Fixed-size uint8 batch whose fit to S is a pad or the identity, with no PIL-only op requested."""
        if not isinstance(images, np.ndarray) or self.three_aug or self.augment == "rrc":
            return False
        h, w = images.shape[1:3]
        return transforms.fits_for_padding(w, h, self.size, self.small_image_mode)

    def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        images, labels = self.source.read(indices)
        if self._vectorisable(images):
            out = transforms.pad_batch(images, self.size)
            if self.augment == "pad_crop":
                out = transforms.pad_crop_batch(out, self.size, rng, self.hflip)
        else:
            out = np.stack([transforms.train_image(
                img, self.size, rng, augment=self.augment, scale_min=self.scale_min, hflip=self.hflip,
                three_aug=self.three_aug, jitter=self.jitter, crop_ratio=self.crop_ratio,
                small_image_mode=self.small_image_mode, channels=self.channels, draft=self.draft) for img in images])
        onehot = np.zeros((len(labels), self.num_classes), np.float32)
        onehot[np.arange(len(labels)), labels] = 1.0
        return {"image": transforms.normalize(out, self.mean, self.std), "label": onehot}


def make_train_dataset(config, *, num_classes: int, process_index: int = 0, process_count: int = 1
                       ) -> grain.IterDataset:
    """The infinite, deterministic train stream of this process.

    Args:
      config: reads dataset, data_dir, seed, batch_size, image_size, train_split, max_train_examples, train_augment,
        rrc_scale_min, hflip, three_augment, color_jitter, crop_ratio, small_image_mode, mixup_alpha, cutmix_alpha,
        mix_switch_prob, mix_prob, num_workers, data_threads, prefetch, data_cache, jpeg_draft.
      num_classes: label width K (>= the data set's class count).
      process_index, process_count: this process's slice of every epoch's global shuffle.

    Returns:
      A grain IterDataset of {"image": float32 (b, S, S, C) normalised, "label": float32 (b, K)} with
      b = batch_size // process_count; `iter(ds)` is checkpointable (get_state/set_state, grain.checkpoint).
      Dense data sets (segmentation.is_dense) yield int32 (b, S, S) label maps instead (segmentation.py).
    """
    if segmentation.is_dense(config.dataset):
        return segmentation.make_train_dataset(config, num_classes=num_classes, process_index=process_index,
                                               process_count=process_count)
    _check_config(config)
    local_batch = _per_process(int(config.batch_size), process_count, "batch_size")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    r = sources.resolve(config)
    if num_classes < r.num_classes:
        raise ValueError(f"num_classes={num_classes} is smaller than the {r.num_classes} classes of {r.name!r}")
    split = r.resolve_split(config.train_split)
    n_total = len(sources.RecordSource(r, split, cache=False))
    source = sources.RecordSource(r, split, cache=sources.cache_enabled(config, r, n_total))
    n = _num_train(config, n_total)
    if n < process_count * local_batch:
        raise ValueError(f"{n} train examples are fewer than one global batch of {config.batch_size}")
    fn = TrainBatch(source=source, size=int(config.image_size), num_classes=int(num_classes),
                    channels=r.num_channels, mean=r.mean, std=r.std, augment=config.train_augment,
                    scale_min=float(config.rrc_scale_min), hflip=bool(config.hflip),
                    three_aug=bool(config.three_augment), jitter=float(config.color_jitter),
                    crop_ratio=float(config.crop_ratio), small_image_mode=config.small_image_mode,
                    draft=bool(config.jpeg_draft))
    ds = grain.MapDataset.range(n).shuffle(seed=_derive_seed(config.seed, 0)).repeat()  # new order every epoch
    ds = ds[process_index::process_count]  # same global order everywhere: disjoint slices
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.random_map(fn, seed=_derive_seed(config.seed, 1, process_index))
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        ds = ds.random_map(mixing.MixTransform(float(config.mixup_alpha), float(config.cutmix_alpha),
                                               float(config.mix_switch_prob), float(config.mix_prob)),
                           seed=_derive_seed(config.seed, 2, process_index))
    it = ds.to_iter_dataset(_read_options(config))
    if config.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags in its workers; use defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.num_workers)))
    return it


@dataclasses.dataclass
class EvalBatch:
    """grain `map`: record indices (b,) with -1 = padding -> {"image", "label": int32, "mask": bool}."""

    source: sources.RecordSource
    size: int
    channels: int
    mean: tuple
    std: tuple
    crop_ratio: float
    small_image_mode: str
    draft: bool

    def __call__(self, indices: np.ndarray) -> dict:
        mask = indices >= 0
        b = len(indices)
        out = np.zeros((b, self.size, self.size, self.channels), np.float32)
        labels = np.zeros((b,), np.int32)
        if mask.any():
            images, lab = self.source.read(indices[mask])
            h_w = images.shape[1:3] if isinstance(images, np.ndarray) else None
            if h_w is not None and transforms.fits_for_padding(h_w[1], h_w[0], self.size, self.small_image_mode):
                pixels = transforms.pad_batch(images, self.size)
            else:
                pixels = np.stack([transforms.eval_image(img, self.size, self.crop_ratio, self.small_image_mode,
                                                         self.channels, self.draft) for img in images])
            out[mask] = transforms.normalize(pixels, self.mean, self.std)
            labels[mask] = lab
        return {"image": out, "label": labels, "mask": mask}


def make_eval_batches(config, *, split: str | None = None, process_index: int = 0, process_count: int = 1
                      ) -> Iterator[dict]:
    """One pass over the eval split, sharded over processes, padded so every process yields the same batch count.

    Process p reads records p, p + P, p + 2P, ...; batches hold `eval_batch_size // process_count` examples; the last
    real batch is padded with masked (zero) examples and processes with fewer examples add fully masked batches.

    Yields:
      {"image": float32 (b, S, S, C), "label": int32 (b,), "mask": bool (b,)}; dense data sets: int32 label maps.
    """
    if segmentation.is_dense(config.dataset):
        return segmentation.make_eval_batches(config, split=split, process_index=process_index,
                                              process_count=process_count)
    _check_config(config)
    b = _per_process(int(config.eval_batch_size), process_count, "eval_batch_size")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    r = sources.resolve(config)
    split = r.resolve_split(split or config.eval_split)
    n = len(sources.RecordSource(r, split, cache=False))
    source = sources.RecordSource(r, split, cache=sources.cache_enabled(config, r, n))
    num_batches = math.ceil(math.ceil(n / process_count) / b)
    local = np.arange(process_index, n, process_count)
    padded = np.full(num_batches * b, -1, np.int64)
    padded[:len(local)] = local
    fn = EvalBatch(source=source, size=int(config.image_size), channels=r.num_channels, mean=r.mean, std=r.std,
                   crop_ratio=float(config.crop_ratio), small_image_mode=config.small_image_mode,
                   draft=bool(config.jpeg_draft))
    ds = grain.MapDataset.source(padded.reshape(num_batches, b)).map(fn)
    return iter(ds.to_iter_dataset(_read_options(config)))
