"""Sequence parallelism on 8 virtual CPU devices (conftest.py): every sharded op against a float64 NumPy reference
or the unsharded computation, then whole models (losses and gradients) and the compiled per-device memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeltok import sharding
from pixeltok.ops import seq_parallel as sp
from pixeltok.ops import ssd as ssd_lib

# (mesh, token count): lengths that are multiples of neither the shard count nor the chunk (8).
MESHES = [({"seq": 2, "data": 4}, 37), ({"seq": 4, "data": 2}, 37), ({"seq": 8}, 61)]


def _mesh(cfg):
    """A mesh of exactly the named sizes on the first prod(sizes) of the 8 virtual devices."""
    return sharding.make_mesh({"data": 1, **cfg}, jax.devices()[:int(np.prod(list(cfg.values())))])


# ------------------------------------------------------------------------------------------------ float64 oracles
def ssd_reference(x, dt, A, B, C, s0):
    """The SSD recurrence token by token in float64 (head h uses group h // (heads // groups))."""
    x, dt, A, B, C, s = (np.asarray(t, np.float64) for t in (x, dt, A, B, C, s0))
    b, L, H, _ = x.shape
    reps = H // B.shape[2]
    y = np.zeros_like(x)
    for t in range(L):
        Bt, Ct = np.repeat(B[:, t], reps, axis=1), np.repeat(C[:, t], reps, axis=1)        # (b, H, N)
        s = np.exp(dt[:, t] * A)[..., None, None] * s + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None]
        y[:, t] = np.einsum("bhpn,bhn->bhp", s, Ct)
    return y


def _ssd_inputs(b, L, H=4, P=8, G=2, N=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, L, H, P)).astype(np.float32)
    dt = (0.5 * np.log1p(np.exp(rng.standard_normal((b, L, H))))).astype(np.float32)
    A = (-np.exp(rng.uniform(-1, 1.5, (H,)))).astype(np.float32)
    B = rng.standard_normal((b, L, G, N)).astype(np.float32)
    C = rng.standard_normal((b, L, G, N)).astype(np.float32)
    s0 = rng.standard_normal((b, H, P, N)).astype(np.float32)
    return x, dt, A, B, C, s0


@pytest.mark.parametrize("mesh_cfg, L", MESHES[1:])      # seq = 2 runs inside the model tests
def test_sharded_ssd_matches_recurrence_and_grads(mesh_cfg, L):
    b = 4
    args = _ssd_inputs(b, L)
    w = jnp.cos(jnp.arange(L, dtype=jnp.float32))[None, :, None, None]       # a non-uniform loss weighting

    def sharded(x, dt, A, B, C, s0):
        lay = sp.current_layout(L, b)
        assert lay is not None and lay.shards == mesh_cfg["seq"]
        y = sp.ssd(*(sp.shard_tokens(t, lay) for t in (x, dt)), A, *(sp.shard_tokens(t, lay) for t in (B, C)),
                   lay, chunk_size=8, initial_state=s0)
        return y[:, :L]

    def unsharded(x, dt, A, B, C, s0):
        return ssd_lib.ssd(x, dt, A, B, C, chunk_size=8, initial_state=s0)

    with jax.set_mesh(_mesh(mesh_cfg)):
        y = jax.jit(sharded)(*args)
        np.testing.assert_allclose(np.asarray(y), ssd_reference(*args), rtol=1e-4, atol=1e-4)
        grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=tuple(range(6))))  # noqa: E731
        got, want = grad(sharded)(*args), grad(unsharded)(*args)
    for name, g, r in zip("x dt A B C s0".split(), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-4 * np.abs(r).max(),
                                   err_msg=name)


@pytest.mark.parametrize("mesh_cfg, L", MESHES)
def test_sharded_token_ops(mesh_cfg, L):
    """Masked mean, prefix reversal (cls + padding stay put), conv with halo and prefix."""
    b, d = 4, 6
    rng = np.random.default_rng(1)
    h = rng.standard_normal((b, L, d)).astype(np.float32)
    kernel = rng.standard_normal((4, 1, d)).astype(np.float32)
    bias = rng.standard_normal(d).astype(np.float32)
    prefix = rng.standard_normal((b, 3, d)).astype(np.float32)
    with jax.set_mesh(_mesh(mesh_cfg)):
        lay = sp.current_layout(L, b)
        put = lambda t: sp.shard_tokens(t, lay)  # noqa: E731
        mean = jax.jit(lambda h: sp.global_mean(put(h), lay))(h)
        revs = {n: jax.jit(lambda h, n=n: sp.reverse_prefix(put(h), n, lay)[:, :L])(h) for n in (L, L - 1, 3)}
        conv = jax.jit(lambda h, p: sp.causal_conv(put(h), kernel, bias, lay, prefix=p)[:, :L])(h, prefix)
    h64 = h.astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean)[:, 0], h64.mean(1), rtol=1e-5, atol=1e-6)
    for n, r in revs.items():
        np.testing.assert_array_equal(np.asarray(r), np.concatenate([h[:, :n][:, ::-1], h[:, n:]], axis=1))
    xp = np.concatenate([prefix, h], axis=1).astype(np.float64)
    want = bias + sum(xp[:, j:j + L] * kernel[j, 0] for j in range(4))
    np.testing.assert_allclose(np.asarray(conv), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh_cfg, L", [({"seq": 4, "data": 2}, 37), ({"seq": 8}, 5)])
@pytest.mark.parametrize("impl", ["attention", "ring_attention"])
def test_sharded_attention_grads(impl, mesh_cfg, L):
    """Both attention forms: value and q/k/v gradients of a weighted sum against a float64 NumPy reference
    (L = 5 over 8 shards: whole shards of padding)."""
    b, h, d = 4, 2, 8
    rng = np.random.default_rng(2)
    q, k, v, w = (rng.standard_normal((b, L, h, d)).astype(np.float32) for _ in range(4))
    fn = getattr(sp, impl)
    with jax.set_mesh(_mesh(mesh_cfg)):
        lay = sp.current_layout(L, b)
        loss = lambda q, k, v: jnp.sum(w * fn(*(sp.shard_tokens(t, lay) for t in (q, k, v)), lay,  # noqa: E731
                                                 q_block=3)[:, :L])
        val, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    q64, k64, v64, w64 = (t.astype(np.float64) for t in (q, k, v, w))
    s = np.einsum("bqhd,bkhd->bhqk", q64, k64) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v64)
    dp = np.einsum("bqhd,bkhd->bhqk", w64, v64)
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) / np.sqrt(d)
    want = (np.einsum("bhqk,bkhd->bqhd", ds, k64), np.einsum("bhqk,bqhd->bkhd", ds, q64),
            np.einsum("bhqk,bqhd->bkhd", p, w64))
    np.testing.assert_allclose(float(val), np.sum(w64 * o), rtol=1e-5)
    for name, g, r in zip("qkv", grads, want):
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-5, err_msg=name)


def test_layout_padding_and_no_seq_axis():
    lay = sp.make_layout(37, 8)
    assert (lay.padded, lay.local) == (40, 5)
    assert sp.make_layout(5, 4).local == sp.MIN_LOCAL          # tiny sequences: at least a conv halo per shard
    with jax.set_mesh(sharding.make_mesh({"data": 8})):
        assert sp.current_layout(37, 8) is None
    with jax.set_mesh(sharding.make_mesh({"data": 2, "fsdp": 2, "seq": 2})):
        lay = sp.current_layout(37, 8)
        assert lay.batch_axes == ("data", "fsdp") and lay.shards == 2
        assert sp.current_layout(37, 3).batch_axes == ()       # a batch that does not divide: replicated
    with pytest.raises(ValueError, match="shards"):
        sp.make_layout(10, 0)


# ------------------------------------------------------------------------------------------------------- models
def _model_loss_and_grads(name, mesh_cfg, *, image=6, patch=1, batch=4, **overrides):
    """Loss and parameter gradients of a train-mode step (drop-path on) under `mesh_cfg` (None: no mesh)."""
    import optax
    from flax import nnx
    from pixeltok.models import create_model
    kw = dict(width=32, depth=2, num_classes=5, num_channels=2, drop_path=0.5, drop_path_schedule="linear")
    if name.startswith("adventurer"):
        kw.update(d_state=16, head_dim=16, chunk_size=8)
    kw.update(overrides)
    model = create_model(name, patch, image, **kw)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(3)
    images = rng.standard_normal((batch, image, image, 2)).astype(np.float32)
    labels = rng.integers(0, 5, batch)

    def loss_fn(params, images):
        m = nnx.merge(graphdef, params, rest)
        logits = m(images, train=True, rng=jax.random.key(7))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    if mesh_cfg is None:
        return jax.device_get(step(params, images))
    with jax.set_mesh(_mesh(mesh_cfg)):
        return jax.device_get(step(params, images))


def _assert_same(got, want):
    (lg, gg), (lw, gw) = got, want
    np.testing.assert_allclose(lg, lw, rtol=1e-4)
    flat_w = dict(jax.tree_util.tree_leaves_with_path(gw))
    for path, g in jax.tree_util.tree_leaves_with_path(gg):
        w = np.asarray(flat_w[path])
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4 * max(np.abs(w).max(), 1e-6),
                                   err_msg=jax.tree_util.keystr(path))


_REFERENCE = {}


def _reference(name):
    """The unsharded loss and gradients of `name` (computed once per test session)."""
    if name not in _REFERENCE:
        _REFERENCE[name] = _model_loss_and_grads(name, None)
    return _REFERENCE[name]


# seq = 2, 4, 8, alone and with data / fsdp. The seq=8 Adventurer also runs the scan-over-layers path (remat),
# where the flip flags are traced; remat changes no number, so the reference stays the plain unsharded step.
MODEL_CASES = [("adventurer_tiny", {"seq": 2, "data": 4}, {}), ("adventurer_tiny", {"seq": 4, "fsdp": 2}, {}),
               ("adventurer_tiny", {"seq": 8}, {"remat": "nothing_saveable"}),
               ("vit_tiny", {"seq": 2, "fsdp": 4}, {}), ("vit_tiny", {"seq": 8}, {"remat": "nothing_saveable"})]


@pytest.mark.parametrize("name, mesh_cfg, extra", MODEL_CASES,
                         ids=[f"{n.split('_')[0]}-" + "-".join(f"{k}{v}" for k, v in m.items()) for n, m, _ in
                              MODEL_CASES])
def test_model_loss_and_grads_match_unsharded(name, mesh_cfg, extra):
    """6x6 images at p=1: 36 patches + cls (+ the heading token) over 2, 4, 8 shards, with a flip (layer 1),
    drop-path 0.5 on layer 1 (same per-sample masks), and padding (37 tokens is a multiple of no shard count)."""
    _assert_same(_model_loss_and_grads(name, mesh_cfg, **extra), _reference(name))


def test_adventurer_compiled_memory_scales_with_seq():
    """At 4,096 patches (64x64, p=1) the compiled per-device memory of a train-mode loss+grad step with seq=4 is
    <= 0.4x the single-device one (compiled memory is deterministic)."""
    from pixeltok import memory
    kw = dict(width=32, depth=2, d_state=16, head_dim=16, num_classes=5, num_channels=1, remat="nothing_saveable")
    one = memory.measure_compiled("adventurer_tiny", 1, 64, batch=1, mesh_cfg={"data": 1}, **kw)
    four = memory.measure_compiled("adventurer_tiny", 1, 64, batch=1, mesh_cfg={"data": 1, "seq": 4},
                                   **kw)
    assert four["per_device_bytes"] <= 0.4 * one["per_device_bytes"], (one, four)


# ---------------------------------------------------------------------------------------------------- CLI end to end
E2E = ["--config=configs/quickstart.py:p4", "--config.total_steps=3", "--config.batch_size=16",
       "--config.eval_batch_size=16", "--config.eval_every_steps=3", "--config.eval_max_batches=1",
       "--config.log_every_steps=1", "--config.model.width=16", "--config.model.depth=2", "--config.warmup_steps=1",
       "--config.lr=0.01", "--config.checkpoint_every_steps=3"]


@pytest.mark.slow
def test_cli_seq4_data2_same_losses_as_one_device(tmp_path):
    """`python -m pixeltok.main --config=configs/quickstart.py:p4 --config.mesh.data=2 --config.mesh.seq=4` on 8
    virtual devices logs the losses of a one-device run (64 patches + cls over 4 shards), Adventurer and ViT;
    config.json records the mesh with its seq axis."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    data_dir = tmp_path / "data"
    runs = {}
    for model in ("adventurer_tiny", "vit_tiny"):
        runs[f"{model}-one"] = (1, [f"--config.model_name={model}", "--config.mesh.data=1"])
        runs[f"{model}-seq"] = (8, [f"--config.model_name={model}", "--config.mesh.data=2", "--config.mesh.seq=4"])
    procs = {}
    for i, (name, (devices, flags)) in enumerate(runs.items()):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELTOK_", "SLURM_", "TPU_"))}
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        procs[name] = subprocess.Popen([sys.executable, "-m", "pixeltok.main", *E2E, *flags,
                                        f"--workdir={tmp_path / name}", f"--config.data_dir={data_dir}"],
                                       cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if i == 0:               # the first run prepares the data set; the others start once it is there
            while not (tmp_path / name / "config.json").exists() and procs[name].poll() is None:
                time.sleep(0.2)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}"

    def losses(workdir):
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {(r["split"], r["step"]): r["loss"] for r in rows}

    for model in ("adventurer_tiny", "vit_tiny"):
        ref, got = losses(tmp_path / f"{model}-one"), losses(tmp_path / f"{model}-seq")
        assert set(ref) == set(got) == {("train", 1), ("train", 2), ("train", 3), ("eval", 3)}
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, err_msg=f"{model} {key}")
        conf = json.loads((tmp_path / f"{model}-seq" / "config.json").read_text())
        assert conf["mesh"] == {"data": 2, "fsdp": 1, "seq": 4} and conf["num_devices"] == 8
