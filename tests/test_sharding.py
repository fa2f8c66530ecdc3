"""pixeltok.sharding / pixeltok.distributed: meshes, regex rules, NNX train-state shardings, sharded training.

The in-process tests use the 8 virtual CPU devices of conftest.py. The training-equivalence test runs the real CLI in
subprocesses (their own XLA_FLAGS) on meshes data=8, data=4 x fsdp=2 and a single device and compares losses.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from pixeltok import distributed, sharding

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------ mesh
def test_make_mesh_fill_and_order():
    mesh = sharding.make_mesh({"fsdp": 2, "data": -1})     # given out of order: data stays outermost
    assert mesh.axis_names == ("data", "fsdp")
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert sharding.make_mesh({"data": -1}).devices.size == 8
    assert dict(sharding.make_mesh({"data": 2, "fsdp": -1, "model": 2}).shape) == {"data": 2, "fsdp": 2, "model": 2}
    one = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    assert one.devices.size == 1 and one.devices.flat[0] == jax.devices()[0]
    assert sharding.describe_mesh(mesh) == {"data": 4, "fsdp": 2}


@pytest.mark.parametrize("cfg, needle", [
    ({"data": 3}, "8 devices"),                        # product != device count
    ({"data": -1, "fsdp": 3}, "does not divide"),        # fixed part does not divide
    ({"data": -1, "fsdp": -1}, "at most one -1"),
    ({"data": 0, "fsdp": -1}, "sizes must be >= 1"),
    ({}, "no axes"),
])
def test_make_mesh_errors(cfg, needle):
    with pytest.raises(ValueError, match=needle):
        sharding.make_mesh(cfg)


def test_batch_spec():
    assert sharding.batch_spec(sharding.make_mesh({"data": 4, "fsdp": 2})) == P(("data", "fsdp"))
    assert sharding.batch_spec(sharding.make_mesh({"data": -1})) == P(("data",))
    assert sharding.batch_spec(sharding.make_mesh({"model": -1})) == P()


def test_constrain_batch_under_set_mesh():
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    x = jnp.arange(16 * 3, dtype=jnp.float32).reshape(16, 3)
    f = jax.jit(lambda x: sharding.constrain_batch(x * 2))
    with jax.set_mesh(mesh):
        y = f(x)
    assert y.sharding.spec == P(("data", "fsdp"))
    assert y.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.asarray(x))
    # No mesh set: a no-op (stays on one device); batch not divisible: no constraint either.
    assert len(jax.jit(lambda x: sharding.constrain_batch(x))(x).sharding.device_set) == 1
    with jax.set_mesh(mesh):
        z = jax.jit(lambda x: sharding.constrain_batch(x))(jnp.ones((5, 3)))
    assert z.shape == (5, 3)


# ----------------------------------------------------------------------------------------------------------- rules
def test_parse_rules_syntax():
    rules = sharding.parse_rules("pos_embed$=replicate; kernel=fsdp(1024) ;x=fsdp(model, 8);y=shard_dim(fsdp, -1)")
    assert [p.pattern for p, _ in rules] == ["pos_embed$", "kernel", "x", "y"]
    assert [r for _, r in rules] == [sharding.Rule("replicate"), sharding.Rule("fsdp", "fsdp", 1024),
                                     sharding.Rule("fsdp", "model", 8), sharding.Rule("shard_dim", "fsdp", dim=-1)]
    assert sharding.parse_rules([("a", ("shard_dim", "data", 1))])[0][1] == sharding.Rule("shard_dim", "data", dim=1)
    default = sharding.parse_rules("")
    assert len(default) == 1 and default[0][0].pattern == ".*" and default[0][1].kind == "fsdp"
    assert sharding.parse_rules(None) == default == sharding.parse_rules([])
    for bad in ["kernel", "kernel=shard", "kernel=fsdp(1,2,3)", "[=replicate", "a=shard_dim(fsdp)"]:
        with pytest.raises(ValueError):
            sharding.parse_rules(bad)


def test_rule_matching_first_match_wins_and_fsdp_dim_choice():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    rules = sharding.parse_rules("pos_embed=replicate;blocks/0/=shard_dim(data, 0);.*=fsdp(64)")

    def spec(path, shape):
        return sharding.spec_for(path, shape, mesh, rules)

    assert spec("0/pos_embed", (1, 64, 32)) == P()                       # first rule wins over the catch-all
    assert spec("0/blocks/0/kernel", (6, 32)) == P("data", None)         # second rule
    assert spec("0/blocks/1/kernel", (12, 10)) == P("fsdp", None)        # largest dim, divisible by 4
    assert spec("0/blocks/1/kernel", (10, 12)) == P(None, "fsdp")
    assert spec("0/blocks/1/kernel", (16, 6)) == P("fsdp", None)
    assert spec("0/x", (6, 20, 10)) == P(None, "fsdp", None)
    assert spec("0/x", (8, 8)) == P("fsdp", None)                        # tie: the earlier dim
    assert spec("0/x", (10, 6, 3)) == P()                                # nothing divisible by 4 -> replicate
    assert spec("0/x", (4, 8)) == P()                                    # 32 < min_size 64 -> replicate
    assert spec("1/step", ()) == P()                                     # scalars replicate
    with pytest.raises(ValueError, match="not divisible"):
        spec("0/blocks/0/kernel", (5, 32))
    # fsdp over an axis of size 1 (or absent) is replication.
    one = sharding.make_mesh({"data": -1, "fsdp": 1})
    assert sharding.spec_for("k", (1024, 1024), one, sharding.parse_rules(None)) == P()


# ----------------------------------------------------------------------------------------------------------- state
class _Tiny(nnx.Module):
    """Leaves with hand-checkable specs on a fsdp=2 mesh with min_size 4096 (see test below)."""

    def __init__(self, rngs):
        self.pos_embed = nnx.Param(jnp.zeros((1, 65, 64)))          # 4160 elements, dim 2 (64) largest divisible
        self.embed = nnx.Linear(64, 128, rngs=rngs)                 # kernel (64,128): dim 1
        self.blocks = nnx.List([nnx.Linear(128, 48, rngs=rngs) for _ in range(2)])   # (128,48)=6144: dim 0
        self.odd = nnx.Linear(48, 91, rngs=rngs)                    # (48,91)=4368: 91 odd -> dim 0
        self.head = nnx.Linear(91, 10, rngs=rngs)                   # 910 < 4096: replicated
        self.norm = nnx.LayerNorm(91, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x + self.pos_embed[0, :x.shape[1]].mean())
        for b in self.blocks:
            x = jax.nn.gelu(b(x) @ jnp.ones((48, 128)) / 48)
        return self.head(self.norm(self.odd(x[..., :48])))


_EXPECTED = {
    "pos_embed": P(None, None, "fsdp"), "embed/kernel": P(None, "fsdp"), "embed/bias": P(),
    "blocks/0/kernel": P("fsdp", None), "blocks/1/kernel": P("fsdp", None), "blocks/0/bias": P(),
    "blocks/1/bias": P(), "odd/kernel": P("fsdp", None), "odd/bias": P(), "head/kernel": P(), "head/bias": P(),
    "norm/scale": P(), "norm/bias": P(),
}


def _expected_spec(path: str) -> P:
    if path in ("1/step", "1/opt_state/0/count"):
        return P()
    for prefix in ("0/", "1/opt_state/0/mu/", "1/opt_state/0/nu/"):
        if path.startswith(prefix):
            return _EXPECTED[path[len(prefix):]]
    raise AssertionError(f"unexpected leaf {path}")


def test_state_shardings_real_model_and_optimizer():
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    model = _Tiny(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    state = nnx.state((model, opt))
    shardings = sharding.state_shardings(state, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    assert len(flat) == 3 * len(_EXPECTED) + 2
    for path, s in flat:
        assert isinstance(s, NamedSharding) and s.mesh == mesh
        assert s.spec == _expected_spec(sharding.path_name(path)), sharding.path_name(path)

    # Abstract state (eval_shape) gives the same shardings.
    abs_model = nnx.eval_shape(lambda: _Tiny(nnx.Rngs(0)))
    abs_state = nnx.state((abs_model, nnx.eval_shape(lambda: nnx.Optimizer(_Tiny(nnx.Rngs(0)), optax.adamw(1e-3),
                                                                              wrt=nnx.Param))))
    assert jax.tree.leaves(sharding.state_shardings(abs_state, mesh)) == jax.tree.leaves(shardings)

    # Really sharded after device_put, values unchanged; a jitted train step keeps the layout.
    put = jax.device_put(state, shardings)
    graphdef = nnx.graphdef((model, opt))
    kernel = put[0]["blocks"][0]["kernel"][...]
    assert kernel.sharding.spec == P("fsdp", None)
    assert {s.data.shape for s in kernel.addressable_shards} == {(64, 48)}
    np.testing.assert_array_equal(np.asarray(kernel), np.asarray(model.blocks[0].kernel[...]))

    def step(state, x):
        m, o = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(m)
        o.update(m, grads)
        return nnx.state((m, o)), loss

    x = jax.device_put(jnp.ones((8, 5, 64)), NamedSharding(mesh, sharding.batch_spec(mesh)))
    new, loss = jax.jit(step, out_shardings=(shardings, None))(put, x)
    assert new[1]["opt_state"][0]["mu"]["embed"]["kernel"][...].sharding.spec == P(None, "fsdp")
    ref_new, ref_loss = jax.jit(step)(state, jnp.ones((8, 5, 64)))      # unsharded reference
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new[0]["odd"]["kernel"][...]),
                               np.asarray(ref_new[0]["odd"]["kernel"][...]), rtol=1e-5, atol=1e-7)


def test_state_shardings_rules_and_plain_pytrees():
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    tree = {"pos_embed": jax.ShapeDtypeStruct((1, 65, 64), jnp.float32), "w": np.zeros((64, 64)), "n": 3.0}
    out = sharding.state_shardings(tree, mesh, "pos_embed=replicate;w=shard_dim(data, 1)")
    assert out["pos_embed"].spec == P() and out["w"].spec == P(None, "data") and out["n"].spec == P()
    cfg = type("C", (), {"sharding_rules": "w=replicate"})()
    assert sharding.state_specs(tree, mesh, sharding.rules_from_config(cfg))["w"] == P()


# ----------------------------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("env, mode", [
    ({}, "single"),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, "single"),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, "auto"),
    ({"SLURM_NTASKS": "8"}, "single"),                        # allocation only, not inside srun
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, "single"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2", "CLOUD_TPU_TASK_ID": "1"}, "auto"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1:8080"}, "auto"),
    ({"PIXELTOK_DISTRIBUTED": "1"}, "auto"),
    ({"PIXELTOK_DISTRIBUTED": "0", "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, "single"),
    ({"PIXELTOK_COORDINATOR": "h:1234", "PIXELTOK_NUM_PROCESSES": "1", "PIXELTOK_PROCESS_ID": "0"}, "single"),
])
def test_launch_mode(env, mode):
    assert distributed.launch_mode(env)[0] == mode


def test_launch_mode_explicit():
    env = {"PIXELTOK_COORDINATOR": "h:1234", "PIXELTOK_NUM_PROCESSES": "4", "PIXELTOK_PROCESS_ID": "2",
           "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}
    assert distributed.launch_mode(env) == ("explicit", dict(coordinator_address="h:1234", num_processes=4,
                                                             process_id=2))
    slurm = {"PIXELTOK_COORDINATOR": "h:1234", "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}   # ids from SLURM
    assert distributed.launch_mode(slurm)[1] == dict(coordinator_address="h:1234", num_processes=8, process_id=3)
    for bad in [{"PIXELTOK_PROCESS_ID": "4"}, {"PIXELTOK_NUM_PROCESSES": "x"}, {"PIXELTOK_PROCESS_ID": ""}]:
        with pytest.raises(ValueError):
            distributed.launch_mode({**env, **bad})


def test_maybe_initialize_single_process_is_noop(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("PIXELTOK_", "SLURM_", "TPU_", "MEGASCALE_")):
            monkeypatch.delenv(k)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    distributed.maybe_initialize()
    distributed.maybe_initialize()
    assert calls == [] and distributed.is_main_process()


# ------------------------------------------------------------------------------------ sharded training via the CLI
# Tiny quickstart: Adventurer width 16, depth 1, p8 on 32x32 (16 patches), global batch 16, no augmentation (so the
# batch is a pure function of the data order), a real lr from step 2 on so the parameter updates show in the losses.
TINY = ["--config=configs/quickstart.py:p8", "--config.total_steps=3", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.eval_every_steps=3", "--config.eval_max_batches=1",
        "--config.log_every_steps=1", "--config.model.width=16", "--config.model.depth=1",
        "--config.train_augment=none", "--config.hflip=False", "--config.warmup_steps=1", "--config.lr=0.01",
        "--config.checkpoint_every_steps=3"]


def cli_env(num_devices: int, **extra) -> dict:
    """Environment for a CLI subprocess: its own virtual device count, no inherited launcher variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELTOK_", "SLURM_", "TPU_", "MEGASCALE_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu", **extra)
    return env


def losses(workdir: Path) -> dict:
    """{(split, step): loss} from metrics.jsonl; each (split, step) must appear once."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = (row["split"], row["step"])
        assert key not in out, f"{key} logged twice in {workdir}"
        out[key] = row["loss"]
    return out


def saved_partition_specs(workdir: Path, step: int) -> dict:
    """{state path: partition spec} of the arrays Orbax saved (its `_sharding` record of the live arrays)."""
    import base64
    raw = json.loads((workdir / "checkpoints" / str(step) / "state" / "_sharding").read_text())
    return {base64.b64decode(k).decode(): json.loads(v)["partition_spec"] for k, v in raw.items()}


@pytest.mark.slow
def test_cli_training_same_losses_on_three_meshes(tmp_path):
    """data=8, data=4 x fsdp=2 (every leaf FSDP-sharded) and one device give the same losses (rtol 1e-4)."""
    data_dir = tmp_path / "data"
    runs = {"single": (1, ["--config.mesh.data=1"]),
            "data8": (8, ["--config.mesh.data=8", "--config.mesh.fsdp=1"]),
            "fsdp": (8, ["--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.sharding_rules=.*=fsdp(1)"])}
    # Prepare the data set once, then start the three runs together (compiles dominate; 2 cores overlap them).
    first = "single"
    procs = {}
    for name in [first] + [n for n in runs if n != first]:
        devices, flags = runs[name]
        cmd = [sys.executable, "-m", "pixeltok.main", *TINY, *flags, f"--workdir={tmp_path / name}",
               f"--config.data_dir={data_dir}"]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=cli_env(devices), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        if name == first:
            while not (tmp_path / name / "config.json").exists() and procs[name].poll() is None:
                time.sleep(0.2)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}"

    ref = losses(tmp_path / "single")
    assert set(ref) == {("train", 1), ("train", 2), ("train", 3), ("eval", 3)}
    assert abs(ref[("train", 3)] - ref[("train", 1)]) > 1e-3          # the updates do move the loss
    for name in ("data8", "fsdp"):
        got = losses(tmp_path / name)
        assert set(got) == set(ref)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, err_msg=f"{name} {key}")

    meshes = {n: json.loads((tmp_path / n / "config.json").read_text()) for n in runs}
    assert meshes["single"]["mesh"] == {"data": 1, "fsdp": 1, "seq": 1} and meshes["single"]["num_devices"] == 1
    assert meshes["data8"]["mesh"] == {"data": 8, "fsdp": 1, "seq": 1} and meshes["data8"]["num_devices"] == 8
    assert meshes["fsdp"]["mesh"] == {"data": 4, "fsdp": 2, "seq": 1}

    # The saved arrays carry the shardings they were trained with: kernels and AdamW moments split over fsdp.
    specs = saved_partition_specs(tmp_path / "fsdp", 3)
    kernels = {p: s for p, s in specs.items() if p.endswith("kernel")}
    assert kernels and all("fsdp" in s for s in kernels.values()), kernels
    assert any(".mu." in p for p in kernels) and any(".nu." in p for p in kernels)
    assert all("fsdp" not in str(s) for s in saved_partition_specs(tmp_path / "data8", 3).values())


# ---------------------------------------------------------------------------------------------------------- memory
def test_memory_estimate_hand_count_and_compiled_band():
    """pixeltok.memory: the per-block count matches a hand count; remat keeps only block inputs; the compiled
    temp memory of a tiny model lies within a loose band of the estimate (XLA:CPU keeps ~2x the minimal set)."""
    from pixeltok import memory
    from pixeltok.models import count_params, create_model
    kw = dict(width=32, depth=2, d_state=16, num_classes=10, num_channels=1)
    est = memory.estimate("adventurer_tiny", 8, 32, batch=2, chunk_size=8, **kw)
    # Hand count per token (module doc): float32 32+161+96+1+64+64+32+32+160+384 = 1026, compute 336 elements.
    assert est.tokens == 18 and est.block_bytes == (1026 * 4 + 336 * 4) * 18 * 2
    assert est.saved_bytes == 2 * est.block_bytes and est.working_bytes == est.block_bytes
    assert est.transient_bytes == (6 * 1 + 2) * 18 * 8 * 4 * 2
    model = create_model("adventurer_tiny", 8, 32, chunk_size=8, **{k: v for k, v in kw.items()})
    assert est.state_bytes == 16 * count_params(model)
    bf16 = memory.estimate("adventurer_tiny", 8, 32, batch=2, chunk_size=8, dtype="bfloat16", **kw)
    assert bf16.block_bytes == (1026 * 4 + 336 * 2) * 18 * 2
    remat = memory.estimate("adventurer_tiny", 8, 32, batch=2, chunk_size=8, remat="nothing_saveable", **kw)
    assert remat.saved_bytes == 2 * 18 * 32 * 4 * 2 and remat.working_bytes == 2 * est.block_bytes
    assert est.max_batch(est.total_bytes / 0.9) == 2
    measured = memory.measure_compiled("adventurer_tiny", 8, 32, batch=2, chunk_size=8, **kw)
    assert 0.5 < measured["temp_bytes"] / est.activation_bytes < 4.0, (measured, est)
    assert abs(measured["output_bytes"] - 4 * count_params(model)) < 1024      # grads: 4 B/param (+ the loss)


@pytest.mark.parametrize("attn_impl", ["xla", "chunked"])
def test_memory_estimate_vit_attention_band(attn_impl):
    """pixeltok.memory for a ViT at 1k tokens: dense attention's (heads, L, L) probabilities dominate its estimate and
    its compiled temp memory alike; chunked attention removes them from both; each estimate stays within the band."""
    from pixeltok import memory
    kw = dict(width=64, depth=2, num_classes=10, num_channels=1)
    est = memory.estimate("vit_tiny", 1, 32, batch=1, attn_impl=attn_impl, **kw)
    dense = memory.estimate("vit_tiny", 1, 32, batch=1, attn_impl="xla", **kw)
    heads, tokens = 2, 1025                                       # width 64 -> head_dim 32 -> 2 heads
    assert dense.transient_bytes == 4 * heads * tokens * tokens * 4
    if attn_impl == "chunked":
        assert est.transient_bytes == 3 * heads * 256 * tokens * 4
        assert est.activation_bytes < 0.4 * dense.activation_bytes          # 0.30 at these sizes
    measured = memory.measure_compiled("vit_tiny", 1, 32, batch=1, attn_impl=attn_impl, **kw)
    assert 0.5 < measured["temp_bytes"] / est.activation_bytes < 4.0, (measured, est)
