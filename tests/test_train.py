"""Trainer tests: schedule, weight-decay mask, gradient accumulation, end-to-end quickstart, exact resume,
divergence guard, checkpoint evaluation and init_from. Tiny models (width 32, depth 1, 16 tokens) on the real
Fashion-MNIST pipeline, 8 virtual CPU devices (conftest)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx, traverse_util

from pixeltok import checkpoint as ckpt_lib
from pixeltok import config_utils
from pixeltok import metrics as metrics_lib
from pixeltok import evaluate, models, optim, train, warm_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Prepared once per machine (the data pipeline's preparation is atomic and locked) and shared with test_cli.py.
DATA_DIR = os.path.join(tempfile.gettempdir(), "pixeltok_test_tfds")
# Compiled executables are cached across runs and processes; results do not depend on it, only test time does.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "pixeltok_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The quickstart config shrunk to width 32, depth 1, patch 8 on 32² (16 + 2 tokens), batch 32 on 8 devices."""
    c = load_config("quickstart")
    c.model.width = 32
    c.model.depth = 1
    c.patch_size = 8
    c.data_dir = DATA_DIR
    c.batch_size = 32
    c.eval_batch_size = 128
    c.eval_max_batches = 4
    c.total_steps = 6
    c.warmup_steps = 2
    c.lr = 3e-3
    c.log_every_steps = 1
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 2
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    for key, value in overrides.items():
        config_utils.set_dotted(c, key, value)
    return c


def saved_model_params(ckpt_dir: str, step: int) -> dict:
    """Flat {path: numpy array} of the model parameters saved at `step`, read onto one device."""
    abstract = ckpt_lib.state_metadata(ckpt_dir, step)["model"]
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    saved = ckpt_lib.restore_subtree(ckpt_dir, step, {"model": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), abstract)})["model"]
    return traverse_util.flatten_dict(jax.device_get(saved))


def train_records(workdir: str) -> dict[int, dict]:
    return {r["step"]: r for r in metrics_lib.read_metrics(workdir) if r["split"] == "train"}


# ------------------------------------------------------------------------------------------------ optimisation
def test_schedule_values_by_hand():
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, batch_size=256, lr_scale_batch=512, warmup_init_lr=1e-6,
                                         end_lr=1e-5))
    peak = 1e-3 * 256 / 512
    sched = optim.schedule_from_config(cfg, total_steps=110, warmup_steps=10)
    expect = {
        0: 1e-6,                                                   # first update: warmup start
        5: 1e-6 + (peak - 1e-6) * 0.5,                             # half-way through the linear warmup
        10: peak,                                                  # end of warmup
        35: 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 0.25)),
        60: (peak + 1e-5) / 2,                                     # mid-cosine
        110: 1e-5,                                                 # end
        150: 1e-5,                                                 # clamped after the end
    }
    for count, value in expect.items():
        np.testing.assert_allclose(float(sched(count)), value, rtol=1e-5, err_msg=f"count {count}")


def test_lr_scaling_by_batch():
    cfg = ml_collections.ConfigDict(dict(lr=5e-4, batch_size=1024, lr_scale_batch=512))
    assert optim.peak_lr(cfg) == pytest.approx(1e-3)                # the paper: 128 x 8 GPUs -> 1e-3
    cfg.lr_scale_batch = 0                                          # "unscale-lr" (finetune stage)
    assert optim.peak_lr(cfg) == pytest.approx(5e-4)
    cfg.batch_size, cfg.lr_scale_batch = 128, 512
    assert optim.peak_lr(cfg) == pytest.approx(1.25e-4)


def test_soft_ce_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)) * 3
    targets = rng.dirichlet(np.ones(5), size=4)
    eps = 0.1
    t = (1 - eps) * targets + eps / 5
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(optim.soft_ce(jnp.asarray(logits, jnp.float32),
                                                        jnp.asarray(targets, jnp.float32), eps)),
                               -(t * logp).sum(-1), rtol=1e-5)


# Leaves that must NOT decay (docs/models.md: every 1-D parameter, pos_embed and the class token), by path.
NO_DECAY = {
    "adventurer_tiny": {"blocks/0/mixer/A_log", "blocks/0/mixer/D", "blocks/0/mixer/dt_bias",
                        "blocks/0/mixer/conv1d/bias", "blocks/0/mixer/norm/scale", "blocks/0/mlp/w1/bias",
                        "blocks/0/mlp/w2/bias", "blocks/0/mlp/w3/bias", "blocks/0/norm/scale",
                        "blocks/0/norm2/scale", "cls_token", "head/bias", "norm/scale", "patch_embed/bias",
                        "pos_embed"},
    "vit_tiny": {"blocks/0/attn/proj/bias", "blocks/0/attn/qkv/bias", "blocks/0/mlp/fc1/bias",
                 "blocks/0/mlp/fc2/bias", "blocks/0/norm1/bias", "blocks/0/norm1/scale", "blocks/0/norm2/bias",
                 "blocks/0/norm2/scale", "cls_token", "head/bias", "norm/bias", "norm/scale", "patch_embed/bias",
                 "pos_embed"},
}
DECAY = {
    "adventurer_tiny": {"blocks/0/mixer/conv1d/kernel", "blocks/0/mixer/in_proj/kernel",
                        "blocks/0/mixer/out_proj/kernel", "blocks/0/mlp/w1/kernel", "blocks/0/mlp/w2/kernel",
                        "blocks/0/mlp/w3/kernel", "head/kernel", "patch_embed/kernel"},
    "vit_tiny": {"blocks/0/attn/proj/kernel", "blocks/0/attn/qkv/kernel", "blocks/0/mlp/fc1/kernel",
                 "blocks/0/mlp/fc2/kernel", "head/kernel", "patch_embed/kernel"},
}


@pytest.mark.parametrize("name", ["adventurer_tiny", "vit_tiny"])
def test_weight_decay_mask_by_path(name):
    """One AdamW step with zero gradients moves exactly the decayed leaves, each by -lr * wd * p."""
    cfg = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, wd=0.1, grad_clip_norm=0.0))

    @jax.jit   # one compiled program instead of hundreds of eagerly compiled small ops
    def one_update():
        model = models.create_model(name, patch_size=8, image_size=16, num_classes=3, num_channels=1, width=64,
                                    depth=1)
        for var in jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)):
            var[...] = jnp.full(var[...].shape, 0.5, jnp.float32)   # nonzero everywhere (zero biases hide decay)
        opt = nnx.Optimizer(model, optim.make_tx(cfg, 0.01), wrt=nnx.Param)
        before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
        return before, nnx.to_pure_dict(nnx.state(model, nnx.Param))

    before, after = jax.device_get(one_update())
    moved, still = set(), set()
    for path, b in traverse_util.flatten_dict(before).items():
        a = np.asarray(traverse_util.flatten_dict(after)[path])
        name_ = "/".join(map(str, path))
        if np.array_equal(a, np.asarray(b)):
            still.add(name_)
        else:
            np.testing.assert_allclose(a, 0.5 - 0.01 * 0.1 * 0.5, rtol=1e-6, err_msg=name_)
            moved.add(name_)
    assert moved == DECAY[name]
    assert still == NO_DECAY[name]


def test_gradient_accumulation_matches_full_batch():
    """k x (B/k) micro-batches give the same loss, gradient norm (rtol 1e-5) and update as one batch of B.

    Adam's scale-invariant first step (g / (|g| + eps)) cannot tell a sum from a mean, hence the grad-norm check; it
    also amplifies float32 summation-order noise where |g| ~ eps, hence params to rtol 1e-5 + 1e-3 x lr."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(32, 32, 32, 1)).astype(np.float32),
             "label": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]}
    params, losses = [], []
    for k in (1, 2):
        s = train.plan_run(tiny_config(accum_steps=k, warmup_steps=0))
        with jax.set_mesh(s.mesh):
            state = jax.jit(lambda: train.train_state(*train.build_model_and_optimizer(s.model, s.tx), False),
                            out_shardings=s.state_shardings)()
            step = train.make_train_step(s)
            bad = jnp.array([train.NO_BAD_STEP, 0], jnp.int32)
            state, m, _ = step(state, train.put_batch(s.mesh, batch), bad)
            params.append(jax.device_get(nnx.to_pure_dict(state["model_opt"][0])))
            losses.append((float(m["loss"]), float(m["grad_norm"])))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    lr = s.config.lr
    flat = [traverse_util.flatten_dict(p) for p in params]
    moved = 0
    for path in flat[0]:
        np.testing.assert_allclose(flat[1][path], flat[0][path], rtol=1e-5, atol=1e-3 * lr, err_msg=str(path))
        moved += 1
    assert moved > 10


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    """A short quickstart run (reduced model and steps) shared by the tests below."""
    workdir = str(tmp_path_factory.mktemp("e2e") / "run")
    cfg = tiny_config(**{"total_steps": 60, "batch_size": 64, "warmup_steps": 5, "lr": 5e-3, "model.width": 64,
                         "train_augment": "none", "log_every_steps": 10, "eval_every_steps": 30,
                         "checkpoint_every_steps": 30, "eval_max_batches": 8})
    result = train.train_and_evaluate(cfg, workdir)
    return workdir, cfg, result


def test_quickstart_end_to_end_reduced(e2e_run):
    workdir, cfg, result = e2e_run
    assert result["step"] == 60 and not result["preempted"]
    records = metrics_lib.read_metrics(workdir)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert train_steps == [10, 20, 30, 40, 50, 60]
    assert [r["step"] for r in evals] == [30, 60]
    final = evals[-1]
    assert final["accuracy"] > 0.5                        # chance is 0.1 on Fashion-MNIST
    assert result["accuracy"] == pytest.approx(final["accuracy"])
    assert result["best_accuracy"] == pytest.approx(max(r["accuracy"] for r in evals))
    conf = json.load(open(os.path.join(workdir, "config.json")))
    assert conf["num_devices"] == 8 and conf["mesh"] == {"data": 8, "fsdp": 1}
    assert conf["tokens_per_image"] == 4 * 4 + 2
    assert conf["num_params"] > conf["num_params_non_embedding"] > 0
    assert conf["num_classes"] == 10 and conf["num_channels"] == 1
    last = [r for r in records if r["split"] == "train"][-1]
    assert last["examples_seen"] == 60 * 64
    assert last["tokens_seen"] == 60 * 64 * 18
    assert last["flops"] == pytest.approx(60 * 64 * conf["train_flops_per_image"])
    for r in records:
        assert math.isfinite(r["loss"])
    assert ckpt_lib.resolve_checkpoint(workdir)[1] == 60
    assert ckpt_lib.resolve_checkpoint(workdir, "best")[1] == result["best_step"]
    tb = os.listdir(os.path.join(workdir, "tb"))
    assert any(f.startswith("events.out.tfevents") for f in tb)


def test_evaluate_checkpoint_matches_final_eval(e2e_run):
    workdir, _, result = e2e_run
    out = evaluate.evaluate_checkpoint(workdir)
    assert out["step"] == 60
    assert out["num_examples"] == 8 * 128
    np.testing.assert_allclose(out["accuracy"], result["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(out["loss"], result["loss"], rtol=1e-5)
    best = evaluate.evaluate_checkpoint(workdir, step="best")
    assert best["step"] == result["best_step"]
    np.testing.assert_allclose(best["accuracy"], result["best_accuracy"], rtol=1e-6)


def test_init_from_resizes_pos_embed(e2e_run, tmp_path):
    """Params of another run at 32² are loaded at 16² (same patch 8): pos-embed grid 4x4 -> 2x2, the rest equal."""
    workdir, _, _ = e2e_run
    s = train.plan_run(tiny_config(**{"image_size": 16, "init_from": workdir, "model.width": 64}))
    src_dir, src_step = ckpt_lib.resolve_checkpoint(workdir)
    with jax.set_mesh(s.mesh):
        plan = warm_start.plan_init_from(s)
        state = jax.jit(lambda: train.train_state(*train.build_model_and_optimizer(s.model, s.tx), False),
                        out_shardings=s.state_shardings)()
        state = warm_start.load_init_from(s, state, plan)
        got = traverse_util.flatten_dict(jax.device_get(nnx.to_pure_dict(
            nnx.filter_state(state["model_opt"][0], nnx.Param))))
    src = saved_model_params(src_dir, src_step)
    assert got[("pos_embed",)].shape == (1, 2 * 2 + 1, 64)
    expect = models.resize_posemb(jnp.asarray(src[("pos_embed",)]), 2, layout="adventurer")
    np.testing.assert_allclose(got[("pos_embed",)], np.asarray(expect), rtol=1e-6)
    for path, value in got.items():
        if path != ("pos_embed",):
            np.testing.assert_array_equal(value, src[path], err_msg=str(path))


# ------------------------------------------------------------------------------------------------ resume
def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Run A: 6 steps straight. Run B: stopped after step 3 (checkpoint), then the same config resumed to 6.
    Train losses of steps 4..6 (data order included) and the final eval must match A (warmup + cosine schedule)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = dict(total_steps=6, warmup_steps=2, checkpoint_every_steps=2, eval_max_batches=2, ema_decay=0.5)
    cfg = tiny_config(**common)
    res_a = train.train_and_evaluate(cfg, a)
    stopped = train.train_and_evaluate(tiny_config(**common, stop_at_step=3), b)
    assert stopped["step"] == 3 and not stopped["preempted"]
    assert ckpt_lib.resolve_checkpoint(b)[1] == 3
    # Metrics of an interrupted run beyond its checkpoint are dropped on resume: fake a line from a lost step.
    with open(os.path.join(b, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n")
    res_b = train.train_and_evaluate(cfg, b)
    assert res_b["start_step"] == 3 and res_b["step"] == 6      # resumed, not restarted (that would match too)
    ra, rb = train_records(a), train_records(b)
    assert sorted(ra) == sorted(rb) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        np.testing.assert_allclose(rb[step]["loss"], ra[step]["loss"], rtol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(rb[step]["lr"], ra[step]["lr"], rtol=1e-6)
    np.testing.assert_allclose(res_b["loss"], res_a["loss"], rtol=1e-5)
    assert res_b["accuracy"] == res_a["accuracy"]
    # The EMA of the params is checkpointed too (it differs from the raw params, so this is not a tautology).
    np.testing.assert_allclose(res_b["ema_loss"], res_a["ema_loss"], rtol=1e-5)
    assert abs(res_a["ema_loss"] - res_a["loss"]) > 1e-6


def test_rerun_of_finished_run_does_nothing(tmp_path):
    """Also: bf16 compute + remat reach the model, and a save killed half-way (an uncommitted Orbax temporary
    directory, here a newer step) is neither resumed from nor left behind."""
    cfg = tiny_config(total_steps=2, checkpoint_every_steps=2, eval_max_batches=1, dtype="bfloat16",
                      remat="nothing_saveable")
    first = train.train_and_evaluate(cfg, str(tmp_path))
    assert math.isfinite(first["loss"])
    lines = open(tmp_path / "metrics.jsonl").read()
    half = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1700000000000000"
    (half / "state").mkdir(parents=True)
    (half / "state" / "garbage").write_text("half written")
    assert ckpt_lib.resolve_checkpoint(str(tmp_path))[1] == 2
    again = train.train_and_evaluate(cfg, str(tmp_path))
    assert not half.exists()
    assert again["start_step"] == again["step"] == 2 and again["accuracy"] == first["accuracy"]
    assert open(tmp_path / "metrics.jsonl").read() == lines


# ------------------------------------------------------------------------------------------------ failures
def test_nonfinite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    cfg = tiny_config(lr=1e30, lr_scale_batch=0, warmup_steps=0, total_steps=6, checkpoint_every_steps=1)
    with pytest.raises(train.TrainingDivergedError) as err:
        train.train_and_evaluate(cfg, str(tmp_path))
    msg = str(err.value)
    m = re.fullmatch(r"non-finite (loss|gradient norm) at step (\d+); last good checkpoint is step (\d+) in .*", msg)
    assert m, msg
    bad, good = int(m.group(2)), int(m.group(3))
    assert 1 < bad <= 6 and good == bad - 1
    # The checkpoint is intact, finite and restorable; nothing beyond it was saved.
    ckpt_dir, latest = ckpt_lib.resolve_checkpoint(str(tmp_path))
    assert latest == good
    abstract = ckpt_lib.state_metadata(ckpt_dir, latest)["model"]
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = ckpt_lib.restore_subtree(ckpt_dir, latest, {"model": jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract)})["model"]
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(params))
    # metrics.jsonl holds no record beyond the bad step
    assert max(r["step"] for r in metrics_lib.read_metrics(str(tmp_path))) < bad


def test_bad_workdir_config_rejected_before_writing(e2e_run):
    """Resuming a workdir whose run has other shapes fails up front and leaves the workdir untouched."""
    workdir, _, _ = e2e_run
    before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
    with pytest.raises(train.ConfigError, match="patch_size"):
        train.train_and_evaluate(tiny_config(patch_size=4), workdir)
    assert {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)} == before


# ------------------------------------------------------------------------------------------------ damaged checkpoints
def test_damaged_latest_checkpoint_falls_back_and_ends_like_uninterrupted(tmp_path, capsys):
    """A truncated data file in the newest checkpoint (a full disk, a bad copy): the restart names it in one line,
    sets it aside, resumes from the checkpoint before it and still ends exactly where an uninterrupted run does."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = dict(total_steps=6, warmup_steps=2, checkpoint_every_steps=2, eval_max_batches=2)
    res_a = train.train_and_evaluate(tiny_config(**common), a)
    train.train_and_evaluate(tiny_config(**common, stop_at_step=4), b)
    state_dir = os.path.join(b, "checkpoints", "4", "state")
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs
                  if os.sep + "d" + os.sep in os.path.join(d, f) + os.sep or os.path.basename(d) == "d"]
    assert data_files, os.listdir(state_dir)
    for path in data_files:                               # every data file: which one holds an array varies
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    capsys.readouterr()
    res_b = train.train_and_evaluate(tiny_config(**common), b)
    out = capsys.readouterr().out
    assert re.search(r"checkpoint \S+/checkpoints/4 is unreadable \(", out), out
    assert "moved unreadable checkpoint 4 aside to 4.unreadable; resuming from step 2" in out
    assert "resumed from checkpoints/2" in out
    assert res_b["start_step"] == 2 and res_b["step"] == 6
    ra, rb = train_records(a), train_records(b)
    assert sorted(rb) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        np.testing.assert_allclose(rb[step]["loss"], ra[step]["loss"], rtol=1e-5, err_msg=f"step {step}")
    np.testing.assert_allclose(res_b["loss"], res_a["loss"], rtol=1e-5)
    assert os.path.isdir(os.path.join(b, "checkpoints", "4.unreadable"))


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    workdir = str(tmp_path / "w")
    cfg = tiny_config(total_steps=2, checkpoint_every_steps=2, eval_max_batches=1)
    train.train_and_evaluate(cfg, workdir)
    state_dir = os.path.join(workdir, "checkpoints", "2", "state")
    for d, _, fs in os.walk(state_dir):
        for f in fs:
            open(os.path.join(d, f), "wb").close()       # every file of the only checkpoint emptied
    with pytest.raises(ckpt_lib.CheckpointError, match=r"^no readable checkpoint in .*checkpoints \(tried steps 2; newest: \w+"):
        train.train_and_evaluate(cfg, workdir)


# ------------------------------------------------------------------------------------------------ learning curves
def test_log_eval_schedule_and_cooldown_branch_equals_fresh_wsd_run(tmp_path):
    """A WSD cooldown branch restored from a long run's stable phase is exactly a fresh WSD run of its own length:
    the same losses and learning rates at every step, the parent's stable-phase records at its start."""
    # decay fraction 1/2: the 4-step branch cools down over counts 2, 3; the 8-step parent is at its peak until 4.
    wsd = dict(schedule="wsd", wsd_decay_fraction=0.5, warmup_steps=1, eval_max_batches=1,
               checkpoint_every_steps=0)
    parent, branch, fresh = (str(tmp_path / n) for n in ("parent", "branch", "fresh"))
    train.train_and_evaluate(tiny_config(**wsd, total_steps=8, checkpoint_steps="2"), parent)
    assert 2 in ckpt_lib.Checkpointer(parent).all_steps()     # kept beside the latest for branches
    res_f = train.train_and_evaluate(tiny_config(**wsd, total_steps=4, eval_schedule="log:3"), fresh)
    # The branch also evaluates twice in its cooldown: evaluating must not change what it trains.
    res_b = train.train_and_evaluate(tiny_config(**wsd, total_steps=4, eval_schedule="log:3+cooldown:2",
                                                 cooldown_from=f"{parent}:2"), branch)
    rp, rf, rb = train_records(parent), train_records(fresh), train_records(branch)
    assert sorted(rb) == sorted(rf) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        np.testing.assert_allclose(rb[step]["loss"], rf[step]["loss"], rtol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(rb[step]["lr"], rf[step]["lr"], rtol=1e-6, err_msg=f"step {step}")
    assert rp[4]["lr"] > 1.5 * rb[4]["lr"]        # the parent is still at its peak where the branch cools down
    np.testing.assert_allclose(res_b["loss"], res_f["loss"], rtol=1e-5)
    assert res_b["start_step"] == 2
    # log:3 over 4 steps: geometric points from min(100, 4) = 4 -> {4}; over 1000 steps: 100, 316, 1000.
    evals = [r["step"] for r in metrics_lib.read_metrics(fresh) if r["split"] == "eval"]
    assert evals == [4]
    assert sorted(config_utils.eval_steps(ml_collections.ConfigDict({"eval_schedule": "log:3"}), 1000)) == \
        [100, 316, 1000]
    assert [r["step"] for r in metrics_lib.read_metrics(branch) if r["split"] == "eval" and r["step"] > 2] == [3, 4]
    bad = [({"cooldown_from": f"{parent}:5"}, "not in"),                 # no such checkpoint step
           ({"cooldown_from": f"{parent}:8", "total_steps": 12}, "not this run.s WSD decay start 6"),
           ({"cooldown_from": f"{parent}:2", "lr": 1e-3}, "parent run has lr=")]
    for overrides, needle in bad:
        with pytest.raises(train.ConfigError, match=needle):
            train.train_and_evaluate(tiny_config(**{**wsd, "total_steps": 4, **overrides}), str(tmp_path / "x"))
        assert not os.path.exists(tmp_path / "x")


def test_cooldown_eval_steps_cover_the_wsd_cooldown():
    """cooldown:K puts K evals evenly over the WSD cooldown (hand-computed), so even a 53-step branch has 8."""
    def steps(eval_schedule, total, **kw):
        return sorted(config_utils.eval_steps(ml_collections.ConfigDict(
            {"eval_schedule": eval_schedule, "schedule": "wsd", "wsd_decay_fraction": 0.2, **kw}), total))
    # 1000 steps: cooldown = the last 200, starting after step 800; log:3 adds 100, 316.
    assert steps("log:3+cooldown:4", 1000) == [100, 316, 850, 900, 950, 1000]
    # 53 steps: cooldown round(10.6) = 11 steps after 42 -> 42 + round(i * 11 / 8), i = 1..8.
    assert steps("log:10+cooldown:8", 53) == [43, 45, 46, 48, 49, 50, 52, 53]
    assert steps("cooldown:20", 10) == [9, 10]           # more evals than cooldown steps: each step once
    for bad, needle in (("cooldown:0", "not valid"), ("log:10+warm:3", "not valid"), ("log:1", "not valid")):
        with pytest.raises(ValueError, match=needle):
            steps(bad, 100)
    with pytest.raises(ValueError, match="needs schedule='wsd', not 'cosine'"):
        steps("cooldown:2", 100, schedule="cosine")


def test_classification_task_rejects_dense_data():
    """A segmentation data set under the classification task is one clear ConfigError, before anything runs."""
    with pytest.raises(train.ConfigError, match="holds per-pixel labels; use --config.task=segmentation"):
        train.plan_run(tiny_config(dataset="fashion_mnist_seg"))
