"""Tests of the dense data layer (pixeltok/data/segmentation.py): the ADE20k-layout reader and its conventions, joint
image/mask transforms, the embedded fashion_mnist_seg set, bad-input errors.

References are independent: label maps and images written to disk here, the reduce_zero_label rule written out in
NumPy, images whose label is a known function of their pixel colour.
"""

import pathlib

import numpy as np
import pytest
from PIL import Image

from pixeltok import data
from pixeltok.config_utils import base_config
from pixeltok.data import segmentation as seg

FMNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
IGNORE = 255
# Label k is painted with colour PALETTE[k] (k = 0..5): distinct in every channel, so a pixel's label is recoverable.
PALETTE = np.array([[0, 0, 0], [40, 200, 90], [80, 10, 160], [120, 240, 30], [160, 60, 220], [220, 130, 0]],
                   np.uint8)


def seg_config(data_dir, dataset, **kw):
    c = base_config()
    c.dataset = dataset
    c.data_dir = str(data_dir)
    c.image_size = 32
    c.batch_size = 4
    c.eval_batch_size = 3
    c.data_threads = 1
    for k, v in kw.items():
        c[k] = v
    return c


def block_pair(w, h, rng, block=8, num_labels=6):
    """An RGB image of constant blocks and its raw label map: label = the block's palette index."""
    gh, gw = -(-h // block), -(-w // block)
    raw = rng.integers(0, num_labels, size=(gh, gw)).astype(np.uint8)
    raw = np.kron(raw, np.ones((block, block), np.uint8))[:h, :w]
    return PALETTE[raw], raw


def write_ade_folder(root, sizes, seed=0, num_labels=6):
    """`<root>/images/{training,validation}/*.jpg|png` + `<root>/annotations/.../*.png` (mode L) from block_pair."""
    rng = np.random.default_rng(seed)
    out = {}
    for folder, split_sizes in sizes.items():
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        out[folder] = []
        for i, (w, h) in enumerate(split_sizes):
            img, raw = block_pair(w, h, rng, num_labels=num_labels)
            stem = f"ADE_{folder}_{i:08d}"
            Image.fromarray(img).save(root / "images" / folder / f"{stem}.png")
            Image.fromarray(raw, mode="L").save(root / "annotations" / folder / f"{stem}.png")
            out[folder].append((img, raw))
    return out


def reduce_zero(raw):
    """ADE20k's reduce_zero_label, written out: 0 -> ignore, k -> k - 1."""
    raw = raw.astype(np.int64)
    return np.where(raw == 0, IGNORE, raw - 1)


def unnormalize(images, mean, std):
    return np.rint((images.astype(np.float64) * np.asarray(std) + np.asarray(mean)) * 255.0).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# Joint transforms.


def test_joint_train_transform_keeps_image_and_mask_aligned():
    """Scale jitter + crop + flip + padding: wherever a pixel's 3x3 label neighbourhood is constant (no blending by
    the bilinear image resize), its colour is the palette colour of its label; padding is black + ignore."""
    rng = np.random.default_rng(0)
    lut = seg.label_lut(6, False, IGNORE)
    for _ in range(24):
        w, h = int(rng.integers(20, 70)), int(rng.integers(20, 70))
        img, raw = block_pair(w, h, rng)
        pixels, labels = seg.seg_train_example(img, raw, 32, rng, scale_range=(0.5, 2.0), hflip=True,
                                               cat_max_ratio=1.0, channels=3, lut=lut, ignore=IGNORE)
        assert pixels.shape[:2] == labels.shape and max(labels.shape) <= 32
        hh, ww = labels.shape
        checked = 0
        for y in range(1, hh - 1):
            for x in range(1, ww - 1):
                nb = labels[y - 1:y + 2, x - 1:x + 2]
                if (nb == nb[1, 1]).all():
                    # Bilinear downscaling blends a little beyond 3x3 (antialiasing), so compare the nearest palette
                    # colour: a mask shifted or flipped against its image would name a neighbouring block's label.
                    dist = np.abs(PALETTE.astype(int) - pixels[y, x].astype(int)).sum(axis=1)
                    assert int(np.argmin(dist)) == labels[y, x], (y, x, pixels[y, x], labels[y, x])
                    checked += 1
        assert checked > 0.3 * (hh - 2) * (ww - 2)
    img, labels = seg._place([pixels], [labels], 32, 3, (0, 0, 0), (1 / 255, 1 / 255, 1 / 255), IGNORE)
    assert (labels[0, hh:] == IGNORE).all() and (labels[0, :, ww:] == IGNORE).all()
    assert (img[0, hh:] == 0).all() and (img[0, :, ww:] == 0).all()


def test_joint_flip_is_shared():
    """With scale 1 and an image exactly the crop size, the output is the input or its mirror, the same for both."""
    rng = np.random.default_rng(1)
    img, raw = block_pair(32, 32, rng, block=5)
    lut = seg.label_lut(6, False, IGNORE)
    kinds = set()
    for _ in range(12):
        pixels, labels = seg.seg_train_example(img, raw, 32, rng, scale_range=(1.0, 1.0), hflip=True,
                                               cat_max_ratio=1.0, channels=3, lut=lut, ignore=IGNORE)
        if np.array_equal(labels, raw):
            np.testing.assert_array_equal(pixels, img)
            kinds.add("same")
        else:
            np.testing.assert_array_equal(labels, raw[:, ::-1])
            np.testing.assert_array_equal(pixels, img[:, ::-1])
            kinds.add("flipped")
    assert kinds == {"same", "flipped"}


def test_cat_max_ratio_rejects_dominated_crops():
    """A 96x32 map: left 64 columns one class, right 32 mixed; with cat_max_ratio 0.75 the window leaves the left."""
    lut = seg.label_lut(6, False, IGNORE)
    raw = np.zeros((32, 96), np.uint8)
    raw[:, 64:] = np.tile(np.array([1, 2], np.uint8), (32, 16))
    img = PALETTE[raw]
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(20):
        _, labels = seg.seg_train_example(img, raw, 32, rng, scale_range=(1.0, 1.0), hflip=False,
                                          cat_max_ratio=0.75, channels=3, lut=lut, ignore=IGNORE)
        _, counts = np.unique(labels, return_counts=True)
        hits += counts.max() / counts.sum() < 0.75
    assert hits >= 18  # 10 tries, each with probability >= 1/3 of success -> failure ~ (2/3)^10 per sample


# ----------------------------------------------------------------------------------------------------------------------
# ADE20k-layout folders.


def test_segfolder_reads_with_ade_conventions(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    sizes = {"training": [(40, 30), (30, 40), (36, 30), (30, 30), (44, 30)], "validation": [(40, 30), (30, 40),
                                                                                             (30, 33)]}
    written = write_ade_folder(root, sizes)
    c = seg_config(tmp_path / "tfds", f"segfolder:{root}", image_size=30, seg_eval_canvas=40)
    info = data.get_info(c)
    assert info.dense and info.num_classes == 5 and info.num_channels == 3  # raw labels 0..5, 0 ignored
    assert (info.num_train, info.num_eval, info.eval_split) == (5, 3, "validation")
    mean, std = info.mean, info.std
    batches = list(data.make_eval_batches(c))
    assert [b["mask"].tolist() for b in batches] == [[True] * 3]
    b = batches[0]
    assert b["image"].shape == (3, 40, 40, 3) and b["label"].shape == (3, 40, 40)
    for i, (img, raw) in enumerate(written["validation"]):
        h, w = raw.shape  # sizes chosen so that f = min(30 / short, 40 / long) == 1: compared exactly
        np.testing.assert_array_equal(b["label"][i, :h, :w], reduce_zero(raw))
        np.testing.assert_array_equal(unnormalize(b["image"][i, :h, :w], mean, std), img)
        assert (b["label"][i, h:] == IGNORE).all() and (b["label"][i, :, w:] == IGNORE).all()
    # Train batches: labels are in {0..4, ignore}, and the convention holds on aligned interiors.
    it = iter(data.make_train_dataset(c, num_classes=5))
    tb = next(it)
    assert tb["image"].shape == (4, 30, 30, 3) and tb["label"].dtype == np.int32
    assert set(np.unique(tb["label"])) <= {0, 1, 2, 3, 4, IGNORE}
    # The conversion is reused: a second resolve does not rebuild (same version dir, no new temp dirs).
    before = sorted(p.name for p in (tmp_path / "tfds" / "segfolder").rglob("*"))
    data.get_info(c)
    assert sorted(p.name for p in (tmp_path / "tfds" / "segfolder").rglob("*")) == before


def test_segfolder_without_reduce_zero_label_and_ade20k_alias(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    write_ade_folder(root, {"training": [(30, 30)] * 2, "validation": [(30, 30)]})
    c = seg_config(tmp_path / "tfds", f"segfolder:{root}", image_size=30, seg_reduce_zero_label=False)
    info = data.get_info(c)
    assert info.num_classes == 6
    b = next(iter(data.make_eval_batches(c)))
    assert b["label"].min() == 0  # raw 0 is a class here
    # dataset=ade20k finds <data_dir>/ADEChallengeData2016 and insists on ADE20k's 150 classes (labels here <= 5).
    c2 = seg_config(tmp_path, "ade20k", image_size=30)
    info2 = data.get_info(c2)
    assert info2.num_classes == 150 and info2.num_eval == 1
    with pytest.raises(ValueError, match=r"ADE20k has 150 classes"):
        data.get_info(seg_config(tmp_path, "ade20k", num_classes=5))
    with pytest.raises(ValueError, match=r"extract ADEChallengeData2016.zip into"):
        data.get_info(seg_config(tmp_path / "nothing", "ade20k"))


@pytest.mark.parametrize("defect, message", [
    ("size", r"annotation .*ADE_training_00000001\.png is 31x30 but its image .*ADE_training_00000001\.png is "
             r"30x30 \(width x height\); a mask must have its image's size"),
    ("label", r"annotation .*ADE_validation_00000000\.png has label 9 but num_classes=5 allows labels 0\.\.5 "
              r"\(0 = ignored, k -> class k-1: reduce_zero_label\) or 255 \(ignored\)"),
    ("rgb", r"annotation .*ADE_training_00000000\.png has image mode 'RGB'; masks must be single-channel 8-bit PNGs"),
    ("no_annotations", r"annotations/validation does not exist \(expected .*/images/\{training,validation\}"),
    ("missing_mask", r"image .*ADE_training_00000001\.png has no annotation .*ADE_training_00000001\.png"),
    ("no_root", r"segmentation folder root .* does not exist"),
])
def test_segfolder_bad_input_errors(tmp_path, defect, message):
    root = tmp_path / "ade"
    write_ade_folder(root, {"training": [(30, 30)] * 2, "validation": [(30, 30)]})
    ann = root / "annotations"
    num_classes = -1
    if defect == "size":
        Image.fromarray(np.ones((30, 31), np.uint8), mode="L").save(ann / "training" / "ADE_training_00000001.png")
    elif defect == "label":
        Image.fromarray(np.full((30, 30), 9, np.uint8), mode="L").save(
            ann / "validation" / "ADE_validation_00000000.png")
        num_classes = 5
    elif defect == "rgb":
        Image.fromarray(np.ones((30, 30, 3), np.uint8)).save(ann / "training" / "ADE_training_00000000.png")
    elif defect == "no_annotations":
        for p in (ann / "validation").iterdir():
            p.unlink()
        (ann / "validation").rmdir()
    elif defect == "missing_mask":
        (ann / "training" / "ADE_training_00000001.png").unlink()
    elif defect == "no_root":
        root = tmp_path / "nope"
    c = seg_config(tmp_path / "tfds", f"segfolder:{root}", num_classes=num_classes)
    with pytest.raises(ValueError, match=message) as e:
        data.get_info(c)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "tfds" / "segfolder").exists() or not list((tmp_path / "tfds" / "segfolder").rglob(
        "dataset_info.json"))


# ----------------------------------------------------------------------------------------------------------------------
# fashion_mnist_seg.


def test_fashion_mnist_seg_construction(tmp_path):
    c = seg_config(tmp_path, "fashion_mnist_seg", eval_batch_size=1000, batch_size=8)
    info = data.get_info(c)
    assert (info.num_classes, info.num_channels, info.num_train, info.num_eval, info.image_size) == (11, 1, 20000,
                                                                                                      2000, 32)
    assert info.class_names[0] == "background" and info.dense
    counts = np.zeros(11, np.int64)
    for b in data.make_eval_batches(c):
        pix = unnormalize(b["image"][b["mask"]], info.mean, info.std)[..., 0]
        lab = b["label"][b["mask"]]
        # The label is a function of the pixel: background exactly where the canvas is black, garments >= threshold.
        np.testing.assert_array_equal(lab == 0, pix == 0)
        assert pix[lab > 0].min() >= seg.FMS_THRESHOLD
        counts += np.bincount(lab.ravel(), minlength=11)
    frac = counts / counts.sum()
    assert 0.70 < frac[0] < 0.82 and (frac[1:] > 0.01).all()  # the balance documented in docs/segmentation.md
    # Deterministic: the construction is a pure function of the IDX files and the seed.
    imgs = np.zeros((6, 28, 28), np.uint8)
    imgs[:, 4:20, 6:22] = 200
    a = seg.make_fashion_mnist_seg(imgs, np.arange(6) % 10, 5, seed=3)
    b2 = seg.make_fashion_mnist_seg(imgs, np.arange(6) % 10, 5, seed=3)
    np.testing.assert_array_equal(a[0], b2[0])
    np.testing.assert_array_equal(a[1], b2[1])
    # Train stream: flips only at the native size; labels stay a function of the pixels.
    tb = next(iter(data.make_train_dataset(c, num_classes=11)))
    pix = unnormalize(tb["image"], info.mean, info.std)[..., 0]
    np.testing.assert_array_equal(tb["label"] == 0, pix == 0)
