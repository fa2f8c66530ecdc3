"""pixeltok.optim schedules: cosine unchanged by the WSD addition, WSD against hand-computed values, the WSD prefix
property cooldown branches rely on, and one-line errors for bad settings."""

import math

import ml_collections
import numpy as np
import pytest

from pixeltok import config_utils, optim


def _lrs(schedule, counts):
    return np.asarray(schedule(np.asarray(list(counts), np.int32)), np.float64)


def test_cosine_default_matches_hand_values():
    # peak 1, warmup 4 from 0, cosine to 0 over counts 4..12: lr(c) = (1 + cos(pi (c - 4) / 8)) / 2.
    s = optim.make_schedule(peak=1.0, total_steps=12, warmup_steps=4, init_lr=0.0, end_lr=0.0)
    want = [0.0, 0.25, 0.5, 0.75, 1.0] + [(1 + math.cos(math.pi * k / 8)) / 2 for k in range(1, 9)]
    np.testing.assert_allclose(_lrs(s, range(13)), want, atol=1e-6)


def test_base_config_defaults_keep_cosine():
    c = config_utils.base_config()
    assert (c.schedule, c.wsd_decay_fraction, c.wsd_decay_shape) == ("cosine", 0.2, "linear")
    c.lr, c.lr_scale_batch, c.warmup_init_lr, c.end_lr = 1e-3, 0, 1e-6, 1e-5
    a = optim.schedule_from_config(c, 100, 10)
    b = optim.make_schedule(peak=1e-3, total_steps=100, warmup_steps=10, init_lr=1e-6, end_lr=1e-5)
    counts = range(0, 101, 7)
    np.testing.assert_array_equal(_lrs(a, counts), _lrs(b, counts))
    # an older run's config.json without the keys: cosine too
    old = ml_collections.ConfigDict({"lr": 1e-3, "lr_scale_batch": 0, "batch_size": 8, "warmup_init_lr": 1e-6,
                                     "end_lr": 1e-5})
    np.testing.assert_array_equal(_lrs(optim.schedule_from_config(old, 100, 10), counts), _lrs(b, counts))


@pytest.mark.parametrize("shape,tail", [
    # total 20, fraction 0.25 -> D = 5, S = 15; t = (c - 15) / 5 for c = 16..20; peak 2, end 0.
    ("linear", [2 * (1 - k / 5) for k in range(1, 6)]),
    ("sqrt", [2 * (1 - math.sqrt(k / 5)) for k in range(1, 6)]),
    ("cosine", [(1 + math.cos(math.pi * k / 5)) for k in range(1, 6)]),
])
def test_wsd_hand_values(shape, tail):
    s = optim.make_schedule(peak=2.0, total_steps=20, warmup_steps=4, init_lr=0.0, end_lr=0.0, kind="wsd",
                            decay_fraction=0.25, decay_shape=shape)
    want = [0.0, 0.5, 1.0, 1.5] + [2.0] * 12 + tail          # warmup 0..3, peak at 4..15 (S = 15 included)
    np.testing.assert_allclose(_lrs(s, range(21)), want, atol=1e-6)
    assert float(s(25)) == pytest.approx(0.0, abs=1e-7)       # clipped past the end


def test_wsd_end_lr_and_rounding():
    # total 7, fraction 0.2 -> D = round(1.4) = 1, S = 6; end_lr 0.1: lr(7) = 0.1, lr(6) = peak.
    assert optim.wsd_decay_steps(7, 0.2) == 1 and optim.wsd_decay_start(7, 0.2) == 6
    assert optim.wsd_decay_start(1000, 0.2) == 800 and optim.wsd_decay_start(125, 0.2) == 100
    s = optim.make_schedule(peak=1.0, total_steps=7, warmup_steps=0, init_lr=0.0, end_lr=0.1, kind="wsd",
                            decay_fraction=0.2)
    np.testing.assert_allclose(_lrs(s, range(8)), [1.0] * 7 + [0.1], atol=1e-6)


@pytest.mark.parametrize("shape", optim.WSD_SHAPES)
def test_wsd_prefix_property(shape):
    """A WSD run of total T has the lr of any longer WSD run at every count up to its own decay start."""
    long_total = 1000
    long = optim.make_schedule(peak=3e-3, total_steps=long_total, warmup_steps=20, init_lr=1e-6, end_lr=1e-5,
                               kind="wsd", decay_fraction=0.2, decay_shape=shape)
    long_lrs = _lrs(long, range(long_total + 1))
    for total in (40, 125, 313, 640, 999):
        short = optim.make_schedule(peak=3e-3, total_steps=total, warmup_steps=20, init_lr=1e-6, end_lr=1e-5,
                                    kind="wsd", decay_fraction=0.2, decay_shape=shape)
        start = optim.wsd_decay_start(total, 0.2)
        lrs = _lrs(short, range(total + 1))
        np.testing.assert_array_equal(lrs[:start + 1], long_lrs[:start + 1])
        assert lrs[start + 1] < 3e-3 * (1 - 1e-6) and lrs[-1] == pytest.approx(1e-5, rel=1e-5)


def test_wsd_decay_start_monotone():
    for f in (0.1, 0.2, 0.35):
        s = np.array([optim.wsd_decay_start(t, f) for t in range(1, 400)])
        assert np.all(np.diff(s) >= 0) and s[-1] == 399 - round(399 * f)


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "linear"}, "schedule='linear' is not one of"),
    ({"kind": "wsd", "decay_fraction": 0.0}, "wsd_decay_fraction=0.0 must be in"),
    ({"kind": "wsd", "decay_fraction": 1.5}, "wsd_decay_fraction=1.5 must be in"),
    ({"kind": "wsd", "decay_shape": "exp"}, "wsd_decay_shape='exp' is not one of"),
    ({"kind": "wsd", "decay_fraction": 0.95}, "before warmup ends"),
])
def test_bad_schedule_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.make_schedule(peak=1.0, total_steps=100, warmup_steps=10, init_lr=0.0, end_lr=0.0, **kwargs)
