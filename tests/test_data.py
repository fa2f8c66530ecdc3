"""Tests of pixeltok.data: preparation (Fashion-MNIST IDX, image folders, a TFDS imagenet2012-style build), transforms,
Mixup/CutMix, determinism and resume, eval coverage, process sharding, error messages.

References are independent: a NumPy IDX decoder written here, pixel arrays written to disk here, np.pad windows.
"""

import gzip
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from pixeltok import data
from pixeltok.config_utils import base_config
from pixeltok.data import builders, mixing, sources, transforms

FMNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FM_MEAN, FM_STD = 0.2860, 0.3530


def decode_idx(path, offset):
    """Independent IDX reader: gunzip, skip the header, raw uint8."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def fmnist_ref():
    ref = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = decode_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        y = decode_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8)
        ref[split] = (x, y)
    return ref


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_fm")


def fm_config(data_dir, **kw):
    c = base_config()
    c.data_dir = str(data_dir)
    c.image_size = 32
    c.train_augment = "pad_crop"
    c.batch_size = 64
    c.eval_batch_size = 1000
    c.data_threads = 1
    for k, v in kw.items():
        c[k] = v
    return c


def unnormalize_fm(images):
    """float32 normalised (b, 32, 32, 1) -> uint8 pixels (rounded)."""
    return np.rint((images.astype(np.float64) * FM_STD + FM_MEAN) * 255.0).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST preparation.


def test_fashion_mnist_prepared_from_idx(fm_dir, fmnist_ref, monkeypatch):
    info = data.get_info(fm_config(fm_dir))
    assert (info.num_train, info.num_eval, info.num_classes, info.num_channels, info.image_size) == (
        60000, 10000, 10, 1, 28)
    version_dir = fm_dir / builders.FASHION_MNIST_NAME / builders.VERSION
    assert json.loads((version_dir / "dataset_info.json").read_text())["fileFormat"] == "array_record"
    r = sources.resolve(fm_config(fm_dir))
    for split in ("train", "test"):
        x_ref, y_ref = fmnist_ref[split]
        src = sources.RecordSource(r, split, cache=False)
        idx = np.array([0, 1, 7, len(y_ref) // 2, len(y_ref) - 1])
        images, labels = src.read(idx)
        np.testing.assert_array_equal(images[..., 0], x_ref[idx])
        np.testing.assert_array_equal(labels, y_ref[idx])
        cached = sources.RecordSource(r, split, cache=True)  # the in-memory copy later tests read from
        all_images, all_labels = cached.read(np.arange(len(cached)))
        np.testing.assert_array_equal(all_labels, y_ref)
        np.testing.assert_array_equal(all_images[..., 0], x_ref)
    # Published facts: both splits start with an ankle boot (9); pixel row 10 of train image 0.
    assert fmnist_ref["train"][1][0] == 9 and fmnist_ref["test"][1][0] == 9
    np.testing.assert_array_equal(fmnist_ref["train"][0][0, 10, 10:15], [0, 0, 0, 193, 228])

    # A second call reuses the prepared files: building again would fail loudly.
    stat = (version_dir / "dataset_info.json").stat()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt")
    monkeypatch.setattr(builders.FashionMnistIdx, "_generate_examples", no_rebuild)
    assert data.get_info(fm_config(fm_dir)).num_train == 60000
    assert (version_dir / "dataset_info.json").stat().st_mtime_ns == stat.st_mtime_ns
    assert not [p for p in fm_dir.iterdir() if ".tmp-" in p.name]  # no leftovers


def test_missing_data_errors(tmp_path):
    missing = tmp_path / "no_idx_here"
    with pytest.raises(ValueError, match="no_idx_here") as e:
        data.get_info(fm_config(tmp_path / "d", fashion_mnist_dir=str(missing)))
    assert "\n" not in str(e.value) and "make data" in str(e.value)
    assert not (tmp_path / "d" / builders.FASHION_MNIST_NAME).exists()  # nothing half-written
    with pytest.raises(ValueError, match="empty_data_dir") as e:
        data.get_info(fm_config(tmp_path / "empty_data_dir", dataset="imagenet2012"))
    assert "\n" not in str(e.value) and "array_record" in str(e.value)
    with pytest.raises(ValueError, match="not supported"):
        data.get_info(fm_config(tmp_path, dataset="cifar10"))


def test_info_mismatch_and_batch_checks(fm_dir):
    with pytest.raises(ValueError, match=r"num_classes=5 .* num_classes=10"):
        data.get_info(fm_config(fm_dir, num_classes=5))
    with pytest.raises(ValueError, match=r"num_channels=3 .* num_channels=1"):
        data.get_info(fm_config(fm_dir, num_channels=3))
    assert data.get_info(fm_config(fm_dir, num_classes=10, num_channels=1)).num_classes == 10
    with pytest.raises(ValueError, match="batch_size=64 must be a positive multiple of the process count 3"):
        data.make_train_dataset(fm_config(fm_dir), num_classes=10, process_count=3)
    with pytest.raises(ValueError, match="train_augment"):
        data.make_train_dataset(fm_config(fm_dir, train_augment="autoaug"), num_classes=10)
    assert data.get_info(fm_config(fm_dir, max_train_examples=1000)).num_train == 1000


# ----------------------------------------------------------------------------------------------------------------------
# Train stream: transforms, determinism, resume, sharding.


def test_pad_crop_batches_are_shifted_windows(fm_dir, fmnist_ref):
    """Every train image is a 32x32 window (optionally flipped) of the zero-padded 28 -> 32 -> 40 image."""
    c = fm_config(fm_dir, max_train_examples=64, batch_size=64, hflip=True)
    batch = next(iter(data.make_train_dataset(c, num_classes=10)))
    assert batch["image"].shape == (64, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (64, 10) and batch["label"].dtype == np.float32
    x_ref, y_ref = fmnist_ref["train"]
    pixels = unnormalize_fm(batch["image"])[..., 0]
    labels = batch["label"].argmax(-1)
    np.testing.assert_array_equal(batch["label"].sum(-1), 1.0)
    found, flips = set(), 0
    for img, lab in zip(pixels, labels):
        match = None
        for i in np.flatnonzero(y_ref[:64] == lab):
            canvas = np.pad(x_ref[i].astype(np.int64), 2 + 4)  # 28 -> 32 (pad mode) -> +4 each side
            windows = np.lib.stride_tricks.sliding_window_view(canvas, (32, 32))  # (9, 9, 32, 32): every offset
            plain, flipped = (windows == img).all((2, 3)).any(), (windows[..., ::-1] == img).all((2, 3)).any()
            if plain or flipped:
                match, flips = i, flips + (not plain)
                break
        assert match is not None
        found.add(int(match))
    assert len(found) == 64  # one epoch of the 64-example prefix: every example once
    assert 10 < flips < 54  # p = 0.5 flips


def _first(ds, k):
    it = iter(ds)
    return [next(it) for _ in range(k)]


def test_determinism_and_resume(fm_dir):
    c = fm_config(fm_dir, mixup_alpha=0.8, cutmix_alpha=1.0, data_threads=2)
    a = _first(data.make_train_dataset(c, num_classes=10), 4)
    b = _first(data.make_train_dataset(c, num_classes=10), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    other = _first(data.make_train_dataset(fm_config(fm_dir, seed=1, mixup_alpha=0.8, cutmix_alpha=1.0),
                                           num_classes=10), 1)
    assert not np.array_equal(other[0]["image"], a[0]["image"])
    # Checkpoint after 2 batches (the state is JSON), restore into a fresh iterator: same next batches.
    it = iter(data.make_train_dataset(c, num_classes=10))
    next(it), next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it), next(it)]
    fresh = iter(data.make_train_dataset(c, num_classes=10))
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(expected[0]["image"], a[2]["image"])


def test_epochs_reshuffle_and_reaugment(fm_dir):
    def epochs(augment):
        c = fm_config(fm_dir, max_train_examples=64, batch_size=32, train_augment=augment)
        batches = _first(data.make_train_dataset(c, num_classes=10), 4)  # 2 epochs of 2 batches
        return [np.concatenate([b["image"] for b in batches[i:i + 2]]) for i in (0, 2)]
    e1, e2 = epochs("none")
    key = lambda x: sorted(v.tobytes() for v in x)  # noqa: E731
    assert key(e1) == key(e2) and not np.array_equal(e1, e2)  # same examples, new order
    p1, p2 = epochs("pad_crop")
    assert key(p1) != key(p2)  # new augmentations every epoch


def test_process_shards_disjoint_first_epoch(fm_dir, fmnist_ref):
    n, procs, gb = 1200, 2, 200
    x_ref = fmnist_ref["train"][0][:n]
    seen = []
    for p in range(procs):
        c = fm_config(fm_dir, max_train_examples=n, batch_size=gb, train_augment="none")
        batches = _first(data.make_train_dataset(c, num_classes=10, process_index=p, process_count=procs),
                         n // gb)
        assert batches[0]["image"].shape[0] == gb // procs
        pixels = unnormalize_fm(np.concatenate([b["image"] for b in batches]))[:, 2:30, 2:30, 0]
        seen.append(sorted(v.astype(np.uint8).tobytes() for v in pixels))
    assert sorted(seen[0] + seen[1]) == sorted(v.tobytes() for v in x_ref)  # disjoint and complete
    assert seen[0] != seen[1]


def test_three_augment_and_rrc_run(fm_dir):
    c = fm_config(fm_dir, train_augment="rrc", three_augment=True, batch_size=16, image_size=24)
    b = next(iter(data.make_train_dataset(c, num_classes=12)))
    assert b["image"].shape == (16, 24, 24, 1) and np.isfinite(b["image"]).all()
    assert b["label"].shape == (16, 12) and (b["label"][:, 10:] == 0).all()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8))
    outs = [np.asarray(transforms.three_augment(rgb, np.random.default_rng(s), 0.3, 3)) for s in range(12)]
    assert all(o.shape == (20, 20, 3) for o in outs)
    assert any(np.array_equal(o[..., 0], o[..., 1]) for o in outs)  # the grayscale branch was drawn


def test_rrc_box_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        left, top, cw, ch = transforms.rrc_box(w, h, rng, 0.08)
        assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0
    # Fallback for extreme aspect ratios: center crop clamped to ratio 4/3.
    assert transforms.rrc_box(400, 10, np.random.default_rng(0), 0.99) == (193, 0, 13, 10)


# ----------------------------------------------------------------------------------------------------------------------
# Mixup / CutMix.


def test_mix_batch_properties():
    rng = np.random.default_rng(0)
    b, k = 8, 5
    x = rng.normal(size=(b, 16, 16, 3)).astype(np.float32)
    y = np.eye(k, dtype=np.float32)[np.arange(b) % k]
    modes = set()
    for seed in range(30):
        out_x, out_y, info = mixing.mix_batch(x, y, np.random.default_rng(seed), mixup_alpha=0.8, cutmix_alpha=1.0)
        modes.add(info["mode"])
        np.testing.assert_allclose(out_y.sum(-1), 1.0, rtol=1e-6)
        assert (out_y >= 0).all() and (out_y <= 1 + 1e-6).all()
        lam = info["lam"]
        np.testing.assert_allclose(out_y[0, 0], lam, rtol=1e-6)  # example 0 (class 0) pairs with 7 (class 2)
        if info["mode"] == "cutmix":
            pasted = (out_x == x[::-1]).all(-1) & (out_x != x).all(-1)
            np.testing.assert_allclose(pasted.mean(axis=(1, 2))[:4], 1.0 - lam, atol=1e-9)
        else:
            np.testing.assert_allclose(out_x, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    assert modes == {"mixup", "cutmix"}
    same_x, same_y, info = mixing.mix_batch(x, y, rng, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert info["mode"] == "none" and same_x is x and same_y is y


def test_pipeline_labels_one_hot_or_mixed(fm_dir):
    plain = next(iter(data.make_train_dataset(fm_config(fm_dir), num_classes=10)))["label"]
    assert set(np.unique(plain)) == {0.0, 1.0} and (plain.sum(-1) == 1).all()
    mixed = next(iter(data.make_train_dataset(fm_config(fm_dir, cutmix_alpha=1.0), num_classes=10)))["label"]
    np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
    assert ((mixed > 0) & (mixed < 1)).any()


# ----------------------------------------------------------------------------------------------------------------------
# Eval batches.


def test_eval_covers_split_once(fm_dir, fmnist_ref):
    x_ref, y_ref = fmnist_ref["test"]
    procs = 3
    c = fm_config(fm_dir, eval_batch_size=procs * 1000, data_threads=2)
    counts, labels, sums = [], [], []
    for p in range(procs):
        batches = list(data.make_eval_batches(c, process_index=p, process_count=procs))
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape == (1000, 32, 32, 1) and b["label"].dtype == np.int32 and b["mask"].dtype == bool
            m = b["mask"]
            labels.append(b["label"][m])
            pixels = unnormalize_fm(b["image"][m])
            assert (pixels[:, :2] == 0).all() and (pixels[:, :, 30:] == 0).all()  # 2 px zero border (pad rule)
            sums.append(pixels.sum(axis=(1, 2, 3)))
            assert (b["image"][~m] == 0).all()
    assert counts == [4, 4, 4]  # ceil(ceil(10000 / 3) / 1000) everywhere, one batch fully masked on some
    labels, sums = np.concatenate(labels), np.concatenate(sums)
    assert len(labels) == 10000
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(y_ref, minlength=10))
    np.testing.assert_array_equal(np.sort(sums), np.sort(x_ref.reshape(10000, -1).astype(np.int64).sum(1)))


# ----------------------------------------------------------------------------------------------------------------------
# Image folders.


def _write_folder(root, classes, per_class, sizes, mode="RGB", seed=0):
    """Writes <root>/<split>/<class>/*; returns {relative path: pixel array} for the PNG files (lossless)."""
    rng = np.random.default_rng(seed)
    pngs = {}
    for split, n in per_class.items():
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                shape = (h, w) if mode == "L" else (h, w, 3)
                a = rng.integers(0, 256, shape, np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(a, mode=None).save(d / f"img{i}.{ext}")
                if ext == "png":
                    pngs[f"{split}/{c}/img{i}.{ext}"] = a
    return pngs


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    classes = ["zebra", "apple", "mango"]  # sorted: apple=0, mango=1, zebra=2
    pngs = _write_folder(root, classes, {"train": 4, "val": 2}, sizes=[(20, 12), (9, 15)])
    c = fm_config(tmp_path / "tfds", dataset=f"imagefolder:{root}", image_size=8, train_augment="rrc",
                  batch_size=4, eval_batch_size=4)
    info = data.get_info(c)
    assert (info.num_classes, info.num_channels, info.num_train, info.num_eval) == (3, 3, 12, 6)
    assert info.image_size is None and info.class_names == ("apple", "mango", "zebra")
    assert info.eval_split == "val"  # config's "test" resolves to the folder's val split
    r = sources.resolve(c)
    src = sources.RecordSource(r, "train", cache=False)
    records = src._tfds().__getitems__(list(range(len(src))))  # pylint: disable=protected-access
    for rec in records:
        rel = rec["file_name"].decode()
        assert rec["label"] == sorted(classes).index(rel.split("/")[1])
        if rel in pngs:  # stored bytes decode to exactly what was written
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rec["image"]))), pngs[rel])
    b = next(iter(data.make_train_dataset(c, num_classes=3)))
    assert b["image"].shape == (4, 8, 8, 3) and b["label"].shape == (4, 3)
    evals = list(data.make_eval_batches(c))
    assert [e["mask"].sum() for e in evals] == [4, 2] and evals[0]["image"].shape == (4, 8, 8, 3)
    assert sorted(np.concatenate([e["label"][e["mask"]] for e in evals])) == [0, 0, 1, 1, 2, 2]
    # Reuse: same root -> same prepared dir, no rebuild.
    assert sources.resolve(c).ref == r.ref

    gray = tmp_path / "gray"
    _write_folder(gray, ["a", "b"], {"train": 2, "val": 1}, sizes=[(10, 10)], mode="L")
    cg = fm_config(tmp_path / "tfds", dataset=f"imagefolder:{gray}", image_size=8, train_augment="pad_crop",
                   batch_size=2)
    assert data.get_info(cg).num_channels == 1
    assert next(iter(data.make_train_dataset(cg, num_classes=2)))["image"].shape == (2, 8, 8, 1)
    cg.num_channels = 3  # explicit RGB conversion of a grayscale folder
    assert data.get_info(cg).num_channels == 3


def test_image_folder_errors(tmp_path):
    def err(root):
        with pytest.raises(ValueError) as e:
            data.get_info(fm_config(tmp_path / "tfds", dataset=f"imagefolder:{root}"))
        assert "\n" not in str(e.value)
        return str(e.value)
    assert "does not exist" in err(tmp_path / "nope")
    (tmp_path / "r1" / "train" / "a").mkdir(parents=True)
    assert "r1/val does not exist" in err(tmp_path / "r1")
    (tmp_path / "r2" / "train").mkdir(parents=True)
    (tmp_path / "r2" / "val").mkdir(parents=True)
    assert "no class subdirectories" in err(tmp_path / "r2")
    (tmp_path / "r3" / "train" / "a").mkdir(parents=True)
    (tmp_path / "r3" / "val" / "a").mkdir(parents=True)
    assert "contains no images" in err(tmp_path / "r3")
    _write_folder(tmp_path / "r4", ["a", "b"], {"train": 1}, sizes=[(8, 8)])
    _write_folder(tmp_path / "r4", ["a", "c"], {"val": 1}, sizes=[(8, 8)])
    assert "differ" in err(tmp_path / "r4")
    assert not (tmp_path / "tfds" / "imagefolder").exists() or not any(
        (tmp_path / "tfds" / "imagefolder").rglob("dataset_info.json"))


_RACE_CHILD = """
import os, sys, time
from pixeltok.data import builders
data_dir, root, log, ready = sys.argv[1:5]
original = builders.ImageFolderBuilder._generate_examples
def logged(self, split):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {split}\\n")
    yield from original(self, split)
builders.ImageFolderBuilder._generate_examples = logged
open(os.path.join(ready, str(os.getpid())), "w").close()
deadline = time.time() + 60
while len(os.listdir(ready)) < 2 and time.time() < deadline:  # start together once both are imported
    time.sleep(0.002)
print(builders.prepare_image_folder(data_dir, root, -1))
"""


def test_concurrent_preparation_builds_once(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root, ["a", "b"], {"train": 3, "val": 1}, sizes=[(10, 10)])
    log = tmp_path / "builds.log"
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _RACE_CHILD, str(tmp_path / "tfds"), str(root), str(log),
                               str(ready)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    paths = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert paths[0] == paths[1]
    builders_ran = {line.split()[0] for line in log.read_text().splitlines()}
    assert len(builders_ran) == 1  # the second process waited on the lock and reused the result
    assert len(list((tmp_path / "tfds").rglob("dataset_info.json"))) == 1
    assert not list((tmp_path / "tfds").rglob(".*tmp-*"))
    assert len(tfds.builder_from_directory(paths[0]).as_data_source(split="train")) == 6


# ----------------------------------------------------------------------------------------------------------------------
# The TFDS path (imagenet2012 read through tfds.data_source).


class _TinyImagenet(builders._LocalBuilder, skip_registration=True):  # pylint: disable=protected-access
    """A tiny data set with imagenet2012's name, version and features, prepared into a tmp dir."""

    name = "imagenet2012"
    VERSION = tfds.core.Version("5.1.0")
    COLORS = {"train": [(10 * i, 200 - 10 * i, 7 * i) for i in range(8)], "validation": [(250, 5, 128), (3, 90, 40)]}

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=1000), "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self.COLORS}

    def _generate_examples(self, split):
        for i, color in enumerate(self.COLORS[split]):
            img = Image.new("RGB", (40 + 3 * i, 30), color)  # flat colours: JPEG round-trips them within 1-2 levels
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95)
            yield f"{split}{i}", {"image": buf.getvalue(), "label": 100 * i + 1, "file_name": f"{split}_{i}.JPEG"}


def test_tfds_imagenet2012_reader(tmp_path):
    _TinyImagenet(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    c = fm_config(tmp_path, dataset="imagenet2012", image_size=16, crop_ratio=0.875, batch_size=4,
                  eval_batch_size=4, train_augment="rrc")
    info = data.get_info(c)
    assert (info.num_classes, info.num_channels, info.num_train, info.num_eval) == (1000, 3, 8, 2)
    assert info.eval_split == "validation"
    evals = list(data.make_eval_batches(c))
    assert len(evals) == 1 and evals[0]["mask"].tolist() == [True, True, False, False]
    mean, std = np.array(sources.IMAGENET_MEAN), np.array(sources.IMAGENET_STD)
    assert sorted(evals[0]["label"][:2]) == [1, 101]
    for j in range(2):  # TFDS stores records in hashed-key order: find each example's colour by its label
        color = _TinyImagenet.COLORS["validation"][evals[0]["label"][j] // 100]
        want = (np.array(color) / 255.0 - mean) / std
        np.testing.assert_allclose(evals[0]["image"][j], np.broadcast_to(want, (16, 16, 3)), atol=3 / 255 / 0.224)
    b = next(iter(data.make_train_dataset(c, num_classes=1000)))
    assert b["image"].shape == (4, 16, 16, 3)
    assert set(b["label"].argmax(-1)) <= {100 * i + 1 for i in range(8)}
