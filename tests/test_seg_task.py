"""Tests of the segmentation task's numbers (pixeltok/tasks/segmentation.py) against hand-computed values: the confusion
matrix, per-class IoU with ignored pixels, masked rows and absent classes, pixel accuracy, the CE loss with and
without label smoothing, sliding-window averaging and mmsegmentation's window placement."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pixeltok.tasks import get_task
from pixeltok.tasks import segmentation as segtask

IGNORE = 255
LABELS = np.array([[0, 0, 1, IGNORE], [2, 2, 1, 0]])
PRED = np.array([[0, 1, 1, 2], [2, 0, 1, 0]])
# Valid (label, pred) pairs: (0,0) (0,1) (1,1) (2,2) (2,0) (1,1) (0,0) -> rows = label, columns = prediction.
HAND_CONF = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 1]])


def cfg(**kw):
    c = ml_collections.ConfigDict({"image_size": 4, "ignore_label": IGNORE, "label_smoothing": 0.0,
                                   "seg_eval_canvas": 0, "seg_eval_stride": 0})
    for k, v in kw.items():
        c[k] = v
    return c


class OneHotModel:
    """Logits 5 * onehot(pred) for the given per-image predictions (ignores its input)."""

    def __init__(self, pred, k):
        self.logits = 5.0 * np.eye(k)[pred]

    def __call__(self, images, train=False):
        return jnp.asarray(self.logits[:images.shape[0]], jnp.float32)


def batch(k):
    """Row 0: the hand example; row 1: padding (mask False) whose every pixel would be wrong if it counted."""
    labels = np.stack([LABELS, np.full_like(LABELS, 1)])
    pred = np.stack([PRED, np.full_like(PRED, 0)])
    return ({"image": np.zeros((2, 2, 4, 1), np.float32), "label": labels.astype(np.int32),
             "mask": np.array([True, False])}, OneHotModel(pred, k))


def test_confusion_iou_accuracy_loss_by_hand():
    task = get_task("segmentation")
    assert (task.name, task.best_metric, task.metric_names) == ("segmentation", "miou",
                                                                ("loss", "miou", "pixel_accuracy"))
    b, model = batch(3)
    sums = {k: np.asarray(v) for k, v in task.eval_sums(model, b, cfg()).items()}
    np.testing.assert_array_equal(sums["confusion"], HAND_CONF)
    m = task.summarize(sums)
    # IoU_0 = 2 / (3 + 3 - 2), IoU_1 = 2 / (2 + 3 - 2), IoU_2 = 1 / (2 + 1 - 1).
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3, abs=1e-12)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7, abs=1e-12)
    # CE of 5 * onehot over 3 classes: right pixel log(e^5 + 2) - 5, wrong pixel log(e^5 + 2); 5 right, 2 wrong.
    z = math.log(math.exp(5) + 2)
    assert m["loss"] == pytest.approx((5 * (z - 5) + 2 * z) / 7, rel=1e-5)
    assert m["num_examples"] == 1
    art = task.artifacts(sums)
    assert art["iou"] == pytest.approx([1 / 2, 2 / 3, 1 / 2]) and art["label_pixels"] == [3, 2, 2]


def test_absent_classes_are_skipped_or_zero():
    """K = 5: class 3 never labelled nor predicted -> NaN, left out of the mean (mmsegmentation's nanmean); class 4
    predicted once but never labelled -> IoU 0, counted."""
    task = get_task("segmentation")
    b, model = batch(5)
    model.logits[0, 1, 3] = 5.0 * np.eye(5)[4]  # the (label 0, pred 0) pixel at (1, 3) becomes pred 4
    sums = {k: np.asarray(v) for k, v in task.eval_sums(model, b, cfg()).items()}
    conf = np.zeros((5, 5), int)
    conf[:3, :3] = HAND_CONF
    conf[0, 0] -= 1
    conf[0, 4] += 1
    np.testing.assert_array_equal(sums["confusion"], conf)
    art = task.artifacts(sums)
    # IoU_0 = 1 / (3 + 2 - 1); IoU_1 = 2/3; IoU_2 = 1/2; IoU_3 = NaN (None in JSON); IoU_4 = 0 / (0 + 1 - 0).
    assert art["iou"][3] is None and art["iou"][4] == 0.0
    assert task.summarize(sums)["miou"] == pytest.approx((1 / 4 + 2 / 3 + 1 / 2 + 0.0) / 4, abs=1e-12)


def test_loss_valid_pixels_and_label_smoothing():
    logits = np.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], [[0.0, 3.0, 1.0], [9.0, 9.0, 9.0]]])
    labels = np.array([[0, 2], [1, IGNORE]])
    lse = np.log(np.exp(logits).sum(-1))
    logp = logits - lse[..., None]
    valid = [(0, 0), (0, 1), (1, 0)]
    eps = 0.1
    hand = [-(1 - eps) * logp[i, j, labels[i, j]] - eps * logp[i, j].mean() for i, j in valid]
    total, count = segtask.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), IGNORE, eps)
    assert float(count) == 3 and float(total) == pytest.approx(sum(hand), rel=1e-6)
    b = {"image": None, "label": jnp.asarray(labels)}

    class Fixed:
        def __call__(self, images, train=False, rng=None):
            assert train
            return jnp.asarray(logits)
    assert float(get_task("segmentation").train_loss(Fixed(), b, rng=None, config=cfg(label_smoothing=eps))) == \
        pytest.approx(sum(hand) / 3, rel=1e-6)


def test_window_offsets_match_mmseg_placement():
    assert segtask.window_offsets(512, 512, 341) == [0]
    assert segtask.window_offsets(683, 512, 341) == [0, 171]  # mmseg: 2 windows, the last ends at 683
    assert segtask.window_offsets(1024, 512, 341) == [0, 341, 512]
    assert segtask.window_offsets(40, 32, 8) == [0, 8]


def test_sliding_window_averages_overlaps():
    """Canvas 2 x 3, windows 2 x 2 at x = 0 and 1; the model paints each window with the sum of its pixels, so
    column 0 sees only window 0, column 2 only window 1, column 1 the mean of both."""
    a, b, c = 1.0, 10.0, 100.0
    img = np.array([[a, b, c], [a, b, c]], np.float32)[None, :, :, None]

    def window_sum(images, train=False):
        s = jnp.sum(images, axis=(1, 2, 3))
        return jnp.broadcast_to(s[:, None, None, None], images.shape[:3] + (1,))
    out = np.asarray(segtask.predict(window_sum, jnp.asarray(img), 2, 1))[0, :, :, 0]
    w0, w1 = 2 * (a + b), 2 * (b + c)
    np.testing.assert_allclose(out, [[w0, (w0 + w1) / 2, w1]] * 2)


def test_check_config_errors():
    task = get_task("segmentation")

    class Info:
        dense = False
    c = cfg(dataset="fashion_mnist", seg_head="linear", mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match=r"task='segmentation' needs a segmentation data set"):
        task.check_config(c, Info())
    Info.dense = True
    with pytest.raises(ValueError, match=r"seg_head='conv' is not valid; use one of \('linear', 'pixel_shuffle'\)"):
        task.check_config(cfg(seg_head="conv", mixup_alpha=0.0, cutmix_alpha=0.0), Info())
    with pytest.raises(ValueError, match=r"Mixup/CutMix are classification augmentations"):
        task.check_config(cfg(seg_head="linear", mixup_alpha=0.8, cutmix_alpha=0.0), Info())
    assert task.model_overrides(cfg(seg_head="pixel_shuffle")) == {"head_type": "seg_pixel_shuffle"}
