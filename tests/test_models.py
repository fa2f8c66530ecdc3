"""Tests for pixeltok.models and pixeltok.flops (docs/models.md; FLOPs: docs/ssd.md).

Parameter counts are checked against layout formulas written here by hand and against the literal numbers of
docs/models.md ("Sizes"); position-embedding resizing against an independent NumPy Keys-cubic implementation; the block
wiring (heading average, flips, cls slot) against references composed from the blocks' own submodules.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pixeltok.models
from pixeltok import flops
from pixeltok.models import (ARCH, KeySeq, count_params, create_model, drop_path_rates, flip_layer_set,
                             resize_patch_embed, resize_posemb, resolve_architecture)
from pixeltok.models import adventurer as adv
from pixeltok.models import vit
from pixeltok.models import common
from pixeltok.ops import attention
from pixeltok.ops import resize

# A tiny Adventurer / ViT for behavioural tests: 16×16 images, p=4 -> 16 patches.
TINY_ADV = dict(patch_size=4, image_size=16, num_classes=10, width=32, depth=2, d_state=16, head_dim=32,
                chunk_size=8)
TINY_VIT = dict(patch_size=4, image_size=16, num_classes=10, width=32, depth=2)


def _images(batch=2, size=16, channels=3, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, channels), jnp.float32)


def _abstract(name, **kw):
    return nnx.eval_shape(lambda: create_model(name, **kw))


# Jitted calls: eager op-by-op execution of the SSD compiles dozens of tiny kernels per new shape (slow on CPU).
_forward = nnx.jit(lambda model, x: model(x))
_features = nnx.jit(lambda model, x: (model.embed(x), model.forward_features(x), model(x)))
_block = nnx.jit(lambda block, x, flip: block(x, flip=flip), static_argnames="flip")
_mixer = nnx.jit(lambda mixer, u: mixer(u))


# ---------------------------------------------------------------------------------------------------------------
# parameter counts (hand formulas, docs/models.md "Sizes")
# ---------------------------------------------------------------------------------------------------------------

def adventurer_params_by_hand(d, depth, n, channels=3, p=16, classes=1000, state=64, head_dim=64, conv=4):
    inner = 2 * d
    heads = inner // head_dim
    hidden = int(2.5 * d)
    in_proj = d * (2 * inner + 2 * state + heads)
    conv1d = (inner + 2 * state) * conv + (inner + 2 * state)
    per_head = 3 * heads                          # A_log, dt_bias, D
    gated_norm, out_proj = inner, inner * d
    norms = 2 * d
    swiglu = 2 * (d * hidden + hidden) + hidden * d + d
    block = in_proj + conv1d + per_head + gated_norm + out_proj + norms + swiglu
    embed = channels * p * p * d + d              # conv kernel + bias
    return depth * block + embed + d + (n + 1) * d + d + d * classes + classes   # + cls, pos, final norm, head


def vit_params_by_hand(d, depth, n, channels=3, p=16, classes=1000):
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    assert block == 12 * d * d + 13 * d
    return depth * block + channels * p * p * d + d + d + (n + 1) * d + 2 * d + d * classes + classes


SIZES = {"tiny": (256, 192, 12), "small": (512, 384, 12), "base": (768, 768, 12), "large": (1024, 1024, 24)}
# The paper's parameter counts (docs/models.md "Sizes": p16/224, 1000 classes) and p1/224 totals.
DOC_P16 = {"adventurer_tiny": 11_608_840, "adventurer_small": 44_491_816, "adventurer_base": 98_657_608,
           "adventurer_large": 346_196_200, "vit_tiny": 5_717_416, "vit_small": 22_050_664,
           "vit_base": 86_567_656, "vit_large": 304_326_632}
DOC_P1 = {"adventurer_tiny": 24_207_880, "adventurer_small": 69_689_896, "adventurer_base": 136_454_728,
          "adventurer_large": 396_592_360, "vit_base": 124_364_776}


@pytest.mark.parametrize("size", list(SIZES))
def test_param_counts_match_hand_formulas(size):
    d_adv, d_vit, depth = SIZES[size]
    for p, n in ((16, 196), (1, 50_176)):
        a = _abstract(f"adventurer_{size}", patch_size=p)
        v = _abstract(f"vit_{size}", patch_size=p)
        # eval_shape: nothing allocated, every leaf is abstract.
        assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(a, nnx.Param)))
        assert count_params(a) == adventurer_params_by_hand(d_adv, depth, n, p=p)
        assert count_params(v) == vit_params_by_hand(d_vit, depth, n, p=p)
        assert count_params(a, exclude_embeddings=True) == count_params(a) - (n + 1) * d_adv
        assert count_params(v, exclude_embeddings=True) == count_params(v) - (n + 1) * d_vit
        if p == 16:
            assert count_params(a) == DOC_P16[f"adventurer_{size}"]
            assert count_params(v) == DOC_P16[f"vit_{size}"]
        else:
            assert count_params(a) == DOC_P1[f"adventurer_{size}"]
            if f"vit_{size}" in DOC_P1:
                assert count_params(v) == DOC_P1[f"vit_{size}"]


def test_param_counts_base_literals():
    assert count_params(_abstract("adventurer_base")) == 98_657_608
    assert count_params(_abstract("adventurer_base"), exclude_embeddings=True) == 98_506_312
    assert count_params(_abstract("adventurer_base", patch_size=1), exclude_embeddings=True) == 97_918_792
    assert count_params(_abstract("vit_base")) == 86_567_656
    assert count_params(_abstract("vit_base", patch_size=1)) == 124_364_776
    # Width/depth overrides reach the architecture; classes and channels too.
    a = _abstract("adventurer_base", width=128, depth=3, num_classes=10, num_channels=1, patch_size=4,
                  image_size=32)
    assert count_params(a) == adventurer_params_by_hand(128, 3, 64, channels=1, p=4, classes=10)


def test_param_names_follow_contract():
    m = _abstract("adventurer_tiny", patch_size=8, image_size=32, depth=2)
    keys = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(m, nnx.Param))}
    for name in ("['pos_embed']", "['cls_token']", "['patch_embed']['kernel']", "['norm']['scale']",
                 "['head']['kernel']", "['blocks'][1]['mixer']['A_log']", "['blocks'][0]['mixer']['in_proj']"):
        assert any(k.startswith(name) for k in keys), name
    assert isinstance(m.blocks, nnx.List)
    assert m.head.kernel.shape == (256, 1000)                # nnx.Linear kernel (in, out)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------

def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"(?=.*\b5\b)(?=.*\b32\b)"):
        create_model("vit_tiny", patch_size=5, image_size=32)
    with pytest.raises(ValueError, match=r"(?=.*\b6\b)(?=.*\b224\b)"):
        nnx.eval_shape(lambda: create_model("adventurer_base", patch_size=6))
    with pytest.raises(ValueError, match="adventurer_base"):
        create_model("adventurer_huge")
    with pytest.raises(ValueError, match="depth"):
        create_model("vit_tiny", dept=3)
    with pytest.raises(ValueError, match="flip_rule"):
        _abstract("adventurer_tiny", flip_rule="every_two")
    with pytest.raises(ValueError, match="adventurer"):
        create_model("vit_tiny", flip_rule="released_code")
    _abstract("vit_tiny", flip_rule="alternate", chunk_size=128)     # shared config defaults are accepted
    model = create_model("vit_tiny", **TINY_VIT)
    with pytest.raises(ValueError, match="16, 16, 3"):
        model(_images(size=32))


# ---------------------------------------------------------------------------------------------------------------
# embedding, cls slot, head token
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cfg,cls_index", [("adventurer_tiny", TINY_ADV, -1), ("vit_tiny", TINY_VIT, 0)])
def test_cls_slot_and_head_token(name, cfg, cls_index):
    model = create_model(name, **cfg)
    x = _images()
    tokens, feats, logits = _features(model, x)
    assert tokens.shape == (2, 17, 32)
    pos, cls = np.asarray(model.pos_embed[...])[0], np.asarray(model.cls_token[...])[0, 0]
    np.testing.assert_allclose(tokens[:, cls_index], np.broadcast_to(cls + pos[cls_index], (2, 32)), rtol=1e-6)
    # Patch tokens: the conv with kernel = stride = p (lax conv through the module itself), row-major.
    conv = np.asarray(model.patch_embed(x)).reshape(2, 16, 32)
    patches = slice(0, 16) if cls_index == -1 else slice(1, 17)
    np.testing.assert_allclose(tokens[:, patches], conv + pos[patches], rtol=1e-5, atol=1e-5)
    # The head reads the cls token: last for Adventurer, first for ViT.
    np.testing.assert_allclose(logits, model.head(model.norm(feats[:, cls_index])), rtol=1e-5, atol=1e-6)
    other = 0 if cls_index == -1 else -1
    assert not np.allclose(logits, model.head(model.norm(feats[:, other])), atol=1e-3)


def _zero_residual_branches(model) -> None:
    """Zeroes each block's last projection (kernel and bias), so every block is the identity."""
    for block in model.blocks:
        for layer in ((block.attn.proj, block.mlp.fc2) if hasattr(block, "attn") else
                      (block.mixer.out_proj, block.mlp.w3)):
            for name in ("kernel", "bias"):
                param = getattr(layer, name, None)
                if param is not None:
                    param.value = jnp.zeros_like(param.value)


@pytest.mark.parametrize("name,extra", [("adventurer_tiny", dict(d_state=16, head_dim=32, chunk_size=8)),
                                        ("vit_tiny", {})])
def test_patch_grid_is_the_image_layout(name, extra):
    """20x20 images at p=4: a 5x5 grid. With identity blocks, patch_grid(features)[b, i, j] must be the final norm of
    (image patch (i, j) · kernel + bias + its position embedding), computed here in float64 NumPy."""
    model = create_model(name, patch_size=4, image_size=20, num_classes=7, width=32, depth=2, **extra)
    _zero_residual_branches(model)
    x = _images(size=20)
    feats = nnx.jit(lambda m, x: m.features(x))(model, x)
    grid = nnx.jit(lambda m, t: m.patch_grid(t))(model, feats)
    assert feats.dtype == jnp.float32 and feats.shape == (2, 26, 32) and grid.shape == (2, 5, 5, 32)
    img = np.asarray(x, np.float64)
    kernel = np.asarray(model.patch_embed.kernel[...], np.float64).reshape(4 * 4 * 3, 32)
    bias = np.asarray(model.patch_embed.bias[...], np.float64)
    pos = np.asarray(model.pos_embed[...], np.float64)[0]
    first = 1 if name.startswith("vit") else 0                          # ViT's cls token comes first
    for i in range(5):
        for j in range(5):
            tok = img[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4, :].reshape(2, -1) @ kernel + bias + pos[first + 5 * i + j]
            if name.startswith("vit"):
                want = (tok - tok.mean(-1, keepdims=True)) / np.sqrt(tok.var(-1, keepdims=True) + 1e-6)
            else:
                want = tok / np.sqrt(np.mean(tok**2, -1, keepdims=True) + 1e-5)
            np.testing.assert_allclose(grid[:, i, j], want, rtol=1e-4, atol=1e-4, err_msg=f"patch ({i}, {j})")
    # The classification head reads the cls token of the same features.
    logits = _forward(model, x)
    cls = feats[:, 0 if name.startswith("vit") else -1]
    np.testing.assert_allclose(logits, model.head(cls), rtol=1e-5, atol=1e-6)


def test_head_type_override():
    for name, cfg in (("vit_tiny", TINY_VIT), ("adventurer_tiny", TINY_ADV)):
        assert "head_type" in pixeltok.models.valid_overrides(name)
        model = _abstract(name, head_type="classification", **cfg)
        assert model.head.kernel.shape == (32, 10)
        with pytest.raises(ValueError, match="head_type 'bogus' is unknown; valid: classification"):
            _abstract(name, head_type="bogus", **cfg)


# ---------------------------------------------------------------------------------------------------------------
# Adventurer block: heading average, flips, causality
# ---------------------------------------------------------------------------------------------------------------

def _tiny_block(seed=0):
    model = create_model("adventurer_tiny", seed=seed, **TINY_ADV)
    x = jax.random.normal(jax.random.key(1), (2, 17, 32))
    return model.blocks[0], x


def test_block_heading_average_reference():
    block, x = _tiny_block()
    for flip in (False, True):
        out = _block(block, x, flip)
        assert out.shape == x.shape                                 # the heading token's output is dropped
        # Reference from the block's submodules: numpy flips and numpy mean over all n+1 tokens incl. cls.
        h = np.asarray(block.norm(x))
        if flip:
            h = np.concatenate([h[:, -2::-1], h[:, -1:]], axis=1)
        head = h.astype(np.float64).mean(axis=1, keepdims=True).astype(np.float32)
        m = np.asarray(_mixer(block.mixer, jnp.asarray(np.concatenate([head, h], axis=1))))[:, 1:]
        if flip:
            m = np.concatenate([m[:, -2::-1], m[:, -1:]], axis=1)
        y = np.asarray(x) + m
        ref = y + np.asarray(block.mlp(block.norm2(jnp.asarray(y))))
        np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
    # Without the heading token the result differs (the average really is prepended). By causality the first n+1
    # outputs of mixer([h, anything]) are mixer(h); this keeps the compiled length n+2.
    h = block.norm(x)
    no_head = np.asarray(_mixer(block.mixer, jnp.concatenate([h, h[:, :1]], 1)))[:, :-1]
    with_head = np.asarray(_mixer(block.mixer, jnp.concatenate([h.mean(1, keepdims=True), h], 1)))[:, 1:]
    assert not np.allclose(no_head, with_head, atol=1e-4)


def test_flip_is_conjugation_by_patch_reversal():
    block, x = _tiny_block()
    rev = adv.reverse_patches
    np.testing.assert_array_equal(rev(rev(x)), x)
    np.testing.assert_array_equal(rev(x)[:, -1], x[:, -1])           # cls stays last
    np.testing.assert_array_equal(rev(x)[:, 0], x[:, -2])
    flipped = _block(block, x, True)
    np.testing.assert_allclose(flipped, rev(_block(block, rev(x), False)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(flipped, _block(block, x, False), atol=1e-3)


def test_flip_rules_layer_sets_and_model_behaviour():
    assert flip_layer_set("alternate", 12) == {1, 3, 5, 7, 9, 11}
    assert flip_layer_set("released_code", 12) == {2, 3}
    assert flip_layer_set("released_code", 24) == {2, 3}
    assert flip_layer_set("none", 6) == set()
    x = _images()
    cfg = dict(TINY_ADV, depth=2)
    rules = ("alternate", "released_code", "none")
    out = {r: _forward(create_model("adventurer_tiny", flip_rule=r, **cfg), x) for r in rules}
    # depth 2: "alternate" flips layer 1, "released_code" flips nothing (layers 2, 3 do not exist).
    np.testing.assert_allclose(out["released_code"], out["none"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out["alternate"], out["none"], atol=1e-4)
    # depth 3: "released_code" now flips layer 2.
    cfg3 = dict(TINY_ADV, depth=3)
    a3 = _forward(create_model("adventurer_tiny", flip_rule="released_code", **cfg3), x)
    n3 = _forward(create_model("adventurer_tiny", flip_rule="none", **cfg3), x)
    assert not np.allclose(a3, n3, atol=1e-4)


def test_mixer_is_causal():
    block, _ = _tiny_block()
    u = jax.random.normal(jax.random.key(2), (1, 23, 32))
    base = np.asarray(_mixer(block.mixer, u))
    for j in (0, 7, 8, 15, 22):                                       # chunk_size 8: inside and at chunk edges
        out = np.asarray(_mixer(block.mixer, u.at[:, j].add(1.0)))
        np.testing.assert_array_equal(out[:, :j], base[:, :j])
        assert np.abs(out[:, j:] - base[:, j:]).max() > 1e-4


def _np(v):
    return np.asarray(v[...], np.float64)


def mamba2_mixer_numpy(mixer, u):
    """Float64 NumPy Mamba-2 mixer (docs/models.md): split [z, x, B, C, dt], causal conv, sequential SSD."""
    b, length, _ = u.shape
    inner, heads, hd, n = mixer.d_inner, mixer.heads, mixer.head_dim, mixer.d_state
    zxbcdt = u @ _np(mixer.in_proj.kernel)
    z, xbc, dt = zxbcdt[..., :inner], zxbcdt[..., inner:2 * inner + 2 * n], zxbcdt[..., 2 * inner + 2 * n:]
    w, bias = _np(mixer.conv1d.kernel)[:, 0], _np(mixer.conv1d.bias)          # (K, channels)
    k = w.shape[0]
    padded = np.concatenate([np.zeros((b, k - 1, xbc.shape[-1])), xbc], axis=1)
    conv = np.stack([(padded[:, t:t + k] * w).sum(1) for t in range(length)], axis=1) + bias
    xbc = conv / (1 + np.exp(-conv))
    x, bm, cm = xbc[..., :inner].reshape(b, length, heads, hd), xbc[..., inner:inner + n], xbc[..., inner + n:]
    dt = np.log1p(np.exp(dt + _np(mixer.dt_bias)))
    a = -np.exp(_np(mixer.A_log))
    y = np.zeros_like(x)
    state = np.zeros((b, heads, hd, n))
    for t in range(length):
        decay = np.exp(dt[:, t] * a)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None, None] * x[:, t, :, :, None]) * bm[:, t, None, None, :]
        y[:, t] = np.einsum("bhpn,bn->bhp", state, cm[:, t])
    y = y + _np(mixer.D)[:, None] * x
    g = y.reshape(b, length, inner) * (z / (1 + np.exp(-z)))
    g = g / np.sqrt((g ** 2).mean(-1, keepdims=True) + 1e-5) * _np(mixer.norm.scale)
    return g @ _np(mixer.out_proj.kernel)


def test_mixer_matches_numpy_reference():
    block, _ = _tiny_block()
    u = jax.random.normal(jax.random.key(4), (2, 19, 32))            # 19: not a multiple of chunk_size 8
    np.testing.assert_allclose(_mixer(block.mixer, u), mamba2_mixer_numpy(block.mixer, np.asarray(u, np.float64)),
                               rtol=1e-4, atol=1e-5)


def test_vit_block_matches_numpy_reference():
    model = create_model("vit_tiny", head_dim=16, **TINY_VIT)      # 2 heads of 16
    assert model.heads == 2
    block = model.blocks[0]
    x = np.asarray(jax.random.normal(jax.random.key(5), (2, 17, 32)), np.float64)

    def ln(v, norm):
        v = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)
        return v * _np(norm.scale) + _np(norm.bias)

    def lin(v, layer):
        return v @ _np(layer.kernel) + _np(layer.bias)

    heads = model.heads
    qkv = lin(ln(x, block.norm1), block.attn.qkv).reshape(2, 17, 3, heads, 32 // heads)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(32 // heads)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    o = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(2, 17, 32)
    y = x + lin(o, block.attn.proj)
    h = lin(ln(y, block.norm2), block.mlp.fc1)
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    ref = y + lin(h, block.mlp.fc2)
    out = nnx.jit(lambda blk, x: blk(x))(block, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_causal_conv_matches_lax_conv():
    block, _ = _tiny_block()
    conv = block.mixer.conv1d
    u = jax.random.normal(jax.random.key(3), (2, 11, conv.kernel.shape[-1]))
    ref = conv(u)                                                      # nnx.Conv: lax conv, left padding K-1
    np.testing.assert_allclose(adv.causal_depthwise_conv(u, conv.kernel[...], conv.bias[...]), ref,
                               rtol=1e-5, atol=1e-5)


def test_adventurer_init_rules():
    depth = 4
    model = create_model("adventurer_tiny", **dict(TINY_ADV, depth=depth))     # width 32, d_inner 64, 2 heads
    mixer = model.blocks[1].mixer
    a_log = np.asarray(mixer.A_log[...])
    assert np.all(a_log >= 0) and np.all(a_log <= math.log(16)) and a_log.shape == (2,)
    dt0 = np.asarray(jax.nn.softplus(mixer.dt_bias[...]))
    assert np.all(dt0 >= 1e-3 * 0.999) and np.all(dt0 <= 1e-1 * 1.001)
    np.testing.assert_array_equal(mixer.D[...], 1.0)
    for w in (mixer.conv1d.kernel, mixer.conv1d.bias):
        assert np.abs(np.asarray(w[...])).max() <= 0.5 and np.abs(np.asarray(w[...])).max() > 0.4
    assert np.abs(np.asarray(mixer.in_proj.kernel[...])).max() <= 1 / math.sqrt(32)
    out_bound = 1 / math.sqrt(64) / math.sqrt(depth)
    assert np.abs(np.asarray(mixer.out_proj.kernel[...])).max() <= out_bound
    assert np.abs(np.asarray(mixer.out_proj.kernel[...])).max() > 0.9 * out_bound
    w3 = np.asarray(model.blocks[0].mlp.w3.kernel[...])
    assert np.abs(w3).max() > 0.9 / math.sqrt(80)                    # w3 is NOT rescaled by √depth
    np.testing.assert_array_equal(model.blocks[0].mlp.w1.bias[...], 0.0)
    np.testing.assert_array_equal(mixer.norm.scale[...], 1.0)
    assert 0.015 < np.std(np.asarray(model.pos_embed[...])) < 0.025
    np.testing.assert_array_equal(model.patch_embed.bias[...], 0.0)
    # lecun_normal: std 1/√fan_in with fan_in = C·p² = 48.
    assert 0.85 < np.std(np.asarray(model.patch_embed.kernel[...])) * math.sqrt(48) < 1.15


# ---------------------------------------------------------------------------------------------------------------
# dtype, remat, drop-path
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cfg", [("adventurer_tiny", TINY_ADV), ("vit_tiny", TINY_VIT)])
def test_bf16_and_remat(name, cfg):
    x = _images()
    y = jax.random.normal(jax.random.key(5), (2, 10))
    grads = {}
    for dtype, remat in (("float32", None), ("float32", "nothing_saveable"), ("bfloat16", None)):
        model = create_model(name, dtype=dtype, remat=remat, **cfg)
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(x)
            return jnp.mean((logits - y) ** 2), logits

        (_, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        assert logits.dtype == jnp.float32
        grads[dtype, remat] = (logits, g)
    ref_logits, ref_grads = grads["float32", None]
    bf_logits, bf_grads = grads["bfloat16", None]
    assert jnp.abs(bf_logits - ref_logits).max() < 0.03 * jnp.abs(ref_logits).max()
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(bf_grads))
    _, rm_grads = grads["float32", "nothing_saveable"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), ref_grads, rm_grads)


def _loss_and_grads(model, x, y):
    """A jitted rng -> (train-mode MSE loss, its gradients w.r.t. the whole model state) for a fixed batch."""
    graphdef, state = nnx.split(model)

    def loss(state, rng):
        return jnp.mean((nnx.merge(graphdef, state)(x, train=True, rng=rng) - y) ** 2)

    fn = jax.jit(jax.value_and_grad(loss))
    return lambda rng: fn(state, rng)


def _build(name, **kw):
    """create_model through its own override resolution, plus constructor-only switches (scan_layers)."""
    extra = {k: kw.pop(k) for k in ("scan_layers",) if k in kw}
    arch, kwargs = resolve_architecture(name, **kw)
    return ARCH[arch](patch_size=4, image_size=16, num_classes=10, num_channels=3, rngs=KeySeq(0), **kwargs,
                      **extra)


@pytest.mark.parametrize("name,cfg,flip_rule,variants", [
    ("adventurer_tiny", TINY_ADV, "alternate", (dict(remat="nothing_saveable"), dict(scan_layers=True))),
    ("adventurer_tiny", TINY_ADV, "released_code", (dict(remat="nothing_saveable"),)),
    ("vit_tiny", TINY_VIT, None, (dict(remat="nothing_saveable"), dict(remat="full")))])
def test_remat_scan_matches_layer_loop_with_flips_and_drop_path(name, cfg, flip_rule, variants):
    """remat runs the blocks as a checkpointed lax.scan over stacked per-layer states, with the flip flags and
    drop-path rates traced per layer; it must give the loop's loss and gradients, drop-path masks included."""
    cfg = {k: v for k, v in cfg.items() if k not in ("patch_size", "image_size", "num_classes")}
    cfg.update(depth=4, drop_path=0.5, drop_path_schedule="released_code")     # rates 0, 0, 1/6, 1/3
    if flip_rule is not None:
        cfg["flip_rule"] = flip_rule
        # depth 4: "alternate" flips {1, 3}, "released_code" {2, 3}: mixed flags, so the flip is a traced choice.
        assert len(set(adv.flip_layers(flip_rule, 4))) == 2
    x = _images(batch=8, seed=3)
    y = jax.random.normal(jax.random.key(6), (8, 10))
    rng = jax.random.key(11)
    ref_model = _build(name, **cfg)
    ref_loss, ref_grads = _loss_and_grads(ref_model, x, y)(rng)
    eval_loss = jnp.mean((_forward(ref_model, x) - y) ** 2)
    assert abs(float(ref_loss) - float(eval_loss)) > 1e-4                 # drop-path really drops something
    for variant in variants:
        fn = _loss_and_grads(_build(name, **cfg, **variant), x, y)
        loss, grads = fn(rng)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=str(variant))
        # Same tree (blocks/<i>/... layout unchanged by the scan) and same values.
        assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=str(variant)),
                     grads, ref_grads)
    # A different key gives different masks in the scan too (the per-layer keys come from rng).
    assert abs(float(fn(jax.random.key(12))[0]) - float(ref_loss)) > 1e-5


def test_scan_blocks_needs_identical_blocks():
    a = create_model("adventurer_tiny", **TINY_ADV)
    b = create_model("adventurer_tiny", **dict(TINY_ADV, chunk_size=4))
    x = jnp.zeros((1, 17, 32))
    with pytest.raises(ValueError, match="identical"):
        common.scan_blocks([a.blocks[0], b.blocks[0]], x, True)
    with pytest.raises(ValueError, match="drop_rate"):
        common.apply_blocks(a.blocks, x, None, drop_rate=[0.0])


def test_drop_path_traced_rate_matches_static():
    x = jax.random.normal(jax.random.key(0), (64, 5, 3))
    key = jax.random.key(1)
    traced = jax.jit(common.drop_path)
    np.testing.assert_array_equal(traced(x, jnp.float32(0.0), key), x)          # rate 0: exactly the identity
    for rate in (0.1, 0.25, 0.5):
        out, ref = traced(x, jnp.float32(rate), key), common.drop_path(x, rate, key)
        np.testing.assert_array_equal(out == 0, ref == 0)                          # the same mask
        assert 0 < int((np.asarray(ref)[:, 0, 0] == 0).sum()) < 64
        np.testing.assert_allclose(out, ref, rtol=1e-6)                           # 1/keep rounds alike to an ulp
    np.testing.assert_array_equal(traced(x, jnp.float32(0.25), None), x)


def test_drop_path_rates_schedules():
    rates = drop_path_rates(0.1, 12, "released_code")
    assert rates[0] == rates[1] == 0.0
    np.testing.assert_allclose(rates[2:], [0.1 * (i - 1) / 11 for i in range(2, 12)])
    np.testing.assert_allclose(rates[-1], 0.0909, atol=1e-4)
    np.testing.assert_allclose(drop_path_rates(0.1, 12, "linear"), [0.1 * i / 11 for i in range(12)])
    with pytest.raises(ValueError, match="linear"):
        drop_path_rates(0.1, 12, "cosine")


def test_drop_path_masks_per_sample():
    x = jnp.ones((64, 5, 3))
    out = np.asarray(common.drop_path(x, 0.25, jax.random.key(0)))
    per_sample = out.reshape(64, -1)
    assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    np.testing.assert_array_equal(common.drop_path(x, 0.25, None), x)


@pytest.mark.parametrize("name,cfg", [("adventurer_tiny", TINY_ADV), ("vit_tiny", TINY_VIT)])
def test_drop_path_train_vs_eval(name, cfg):
    model = create_model(name, drop_path=0.5, drop_path_schedule="linear", **cfg)
    x = _images(batch=8)
    fwd = nnx.jit(lambda m, x, rng: m(x, train=True, rng=rng))
    fwd_eval = nnx.jit(lambda m, x, rng: m(x, train=False, rng=rng))
    ev = _forward(model, x)
    np.testing.assert_array_equal(ev, _forward(model, x))             # eval is deterministic
    np.testing.assert_array_equal(ev, fwd_eval(model, x, jax.random.key(0)))
    t0 = fwd(model, x, jax.random.key(0))
    assert not np.allclose(t0, ev, atol=1e-4)
    np.testing.assert_array_equal(t0, fwd(model, x, jax.random.key(0)))
    assert not np.allclose(t0, fwd(model, x, jax.random.key(1)), atol=1e-4)
    with pytest.raises(ValueError, match="rng"):
        model(x, train=True)


# ---------------------------------------------------------------------------------------------------------------
# training sanity: overfit a fixed batch
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cfg,lr", [("adventurer_tiny", TINY_ADV, 3e-3), ("vit_tiny", TINY_VIT, 3e-3)])
def test_overfits_fixed_batch(name, cfg, lr):
    model = create_model(name, **cfg)
    x = _images(batch=8, seed=7)
    labels = jnp.arange(8) % 10
    tx = optax.adam(lr)
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)

    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(80):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


# ---------------------------------------------------------------------------------------------------------------
# memory: linear vs quadratic in tokens (compile only)
# ---------------------------------------------------------------------------------------------------------------

def _grad_temp_bytes(name, res, batch=1, **kw):
    model = nnx.eval_shape(lambda: create_model(name, patch_size=1, image_size=res, num_classes=10,
                                                num_channels=1, **kw))
    graphdef, state = nnx.split(model)                                # abstract: nothing is allocated or run

    def loss(state, x):
        return jnp.mean(nnx.merge(graphdef, state)(x))

    x = jax.ShapeDtypeStruct((batch, res, res, 1), jnp.float32)
    return jax.jit(jax.grad(loss)).lower(state, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_grad_memory_linear_for_adventurer_quadratic_for_vit(record_property):
    """Compiled (not run) forward+backward temp memory at p=1, batch 1: SSD linear in tokens, dense (XLA) attention
    quadratic, chunked attention linear (a fixed number of query rows against all keys at a time)."""
    sides = (32, 64, 128)                                             # 1k, 4k, 16k tokens at p=1
    adv_bytes = [_grad_temp_bytes("adventurer_tiny", s, width=32, depth=1, d_state=16, head_dim=32,
                                  chunk_size=256) for s in sides]
    vit_bytes = [_grad_temp_bytes("vit_tiny", s, width=32, depth=1, attn_impl="xla") for s in sides]
    chunked_bytes = [_grad_temp_bytes("vit_tiny", s, width=32, depth=1, attn_impl="chunked") for s in sides]
    record_property("adventurer_temp_bytes", adv_bytes)
    record_property("vit_temp_bytes", vit_bytes)
    record_property("vit_chunked_temp_bytes", chunked_bytes)
    print("grad temp bytes (1k, 4k, 16k tokens): adventurer", adv_bytes, "vit", vit_bytes, "chunked", chunked_bytes)
    adv_ratios = [b / a for a, b in zip(adv_bytes, adv_bytes[1:])]
    vit_ratios = [b / a for a, b in zip(vit_bytes, vit_bytes[1:])]
    chunked_ratios = [b / a for a, b in zip(chunked_bytes, chunked_bytes[1:])]
    assert all(r <= 4.5 for r in adv_ratios), adv_ratios
    assert all(r >= 8.0 for r in vit_ratios), vit_ratios
    assert all(r <= 4.5 for r in chunked_ratios), chunked_ratios          # query blocks: linear in tokens


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [("adventurer_tiny", dict(width=64, d_state=16, chunk_size=64)),
                                     ("vit_tiny", dict(width=64))])
def test_remat_lowers_grad_memory(name, kw, record_property):
    """Compiled forward+backward temp memory, p=1 at 16×16 (256 tokens), batch 2: with remat (a checkpointed scan
    over layers) the per-layer activations are not kept, so memory is well below no-remat at depth 8 and grows
    little with depth. (A checkpoint per block in an unrolled loop saved nothing here: XLA:CPU may schedule the
    recomputation early.) Measured: adventurer 58.6 -> 12.1 MiB, vit 41.1 -> 10.2 MiB at depth 8."""
    mib = {(depth, remat): _grad_temp_bytes(name, 16, batch=2, depth=depth, remat=remat, **kw) / 2**20
           for depth in (2, 8) for remat in ("", "nothing_saveable")}
    record_property("temp_mib", {f"{d}/{r or 'none'}": round(v, 2) for (d, r), v in mib.items()})
    assert mib[8, "nothing_saveable"] < 0.6 * mib[8, ""], mib
    growth_remat = mib[8, "nothing_saveable"] - mib[2, "nothing_saveable"]
    growth_plain = mib[8, ""] - mib[2, ""]
    assert growth_plain > 0 and growth_remat < 0.25 * growth_plain, mib


# ---------------------------------------------------------------------------------------------------------------
# position-embedding and patch-kernel resizing
# ---------------------------------------------------------------------------------------------------------------

def keys_matrix_numpy(n_in, n_out, a=-0.75):
    """Independent PyTorch-style bicubic weights: vectorised, written from Keys' piecewise cubic."""
    dst = np.arange(n_out, dtype=np.float64)
    src = (dst + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    m = np.zeros((n_out, n_in))
    for tap in (-1, 0, 1, 2):
        s = np.abs(t - tap)
        w = np.where(s <= 1, (a + 2) * s**3 - (a + 3) * s**2 + 1,
                     np.where(s < 2, a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a, 0.0))
        idx = np.clip(base + tap, 0, n_in - 1).astype(int)
        np.add.at(m, (np.arange(n_out), idx), w)
    return m


def test_cubic_matrix_parity_and_properties():
    for n_in, n_out in ((8, 14), (14, 8), (7, 7), (4, 16), (16, 5)):
        mine = resize.keys_cubic_matrix(n_in, n_out)
        np.testing.assert_allclose(mine, keys_matrix_numpy(n_in, n_out), atol=1e-12)
        np.testing.assert_allclose(mine.sum(1), 1.0, atol=1e-12)      # constants stay constant
    np.testing.assert_array_equal(resize.keys_cubic_matrix(9, 9), np.eye(9))
    # Exact 2× upsampling weights of PyTorch bicubic (a=-0.75): t = 0.75 and 0.25.
    # Output 5 samples source 2.25 (t = 0.25): taps 1..4 weigh W(1.25), W(0.25), W(0.75), W(1.75).
    np.testing.assert_allclose(resize.keys_cubic_matrix(8, 16)[5, 1:5], [-0.10546875, 0.87890625, 0.26171875,
                                                                         -0.03515625], atol=1e-12)


@pytest.mark.parametrize("layout", ["vit", "adventurer"])
def test_resize_posemb(layout):
    g, d = 6, 5
    pe = jax.random.normal(jax.random.key(0), (1, g * g + 1, d))
    np.testing.assert_allclose(resize_posemb(pe, g, layout=layout), pe, atol=1e-6)
    out = resize_posemb(pe, 10, layout=layout)
    assert out.shape == (1, 101, d)
    cls_in, grid_in = (pe[:, 0], pe[:, 1:]) if layout == "vit" else (pe[:, -1], pe[:, :-1])
    cls_out, grid_out = (out[:, 0], out[:, 1:]) if layout == "vit" else (out[:, -1], out[:, :-1])
    np.testing.assert_array_equal(cls_out, cls_in)
    m = keys_matrix_numpy(g, 10)
    ref = np.einsum("ih,jw,hwd->ijd", m, m, np.asarray(grid_in, np.float64).reshape(g, g, d)).reshape(1, 100, d)
    np.testing.assert_allclose(grid_out, ref, rtol=1e-5, atol=1e-5)


def test_resize_posemb_released_code_bug():
    g, d = 4, 3
    pe = jax.random.normal(jax.random.key(1), (1, g * g + 1, d))      # Adventurer layout: cls is the last row
    out = resize_posemb(pe, 6, layout="adventurer", method="released_code")
    np.testing.assert_array_equal(out[:, 0], pe[:, 0])                # patch 0 carried over as the "extra token"
    m = keys_matrix_numpy(g, 6)
    ref = np.einsum("ih,jw,hwd->ijd", m, m, np.asarray(pe[0, 1:], np.float64).reshape(g, g, d)).reshape(36, d)
    np.testing.assert_allclose(out[0, 1:], ref, rtol=1e-5, atol=1e-5)  # cls row interpolated as a grid cell
    np.testing.assert_allclose(resize_posemb(pe, 6, layout="vit", method="released_code"),
                               resize_posemb(pe, 6, layout="vit"), atol=1e-6)


def test_resize_patch_embed_pseudo_inverse():
    p, c, d = 4, 3, 6
    w = jax.random.normal(jax.random.key(0), (p, p, c, d))
    x = jax.random.normal(jax.random.key(1), (10, p, p, c))
    for new in (4, 6, 8):
        w_new = resize_patch_embed(w, new)
        assert w_new.shape == (new, new, c, d)
        x_up = jax.image.resize(x, (10, new, new, c), method="bilinear")
        np.testing.assert_allclose(jnp.einsum("bhwc,hwcd->bd", x_up, w_new),
                                   jnp.einsum("bhwc,hwcd->bd", x, w), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# FLOPs (docs/ssd.md, "FLOPs")
# ---------------------------------------------------------------------------------------------------------------

def test_flops_per_layer_and_tokens():
    np.testing.assert_allclose(flops.adventurer_layer_flops(768, chunk_size=256) / 1e6, 17.38, atol=0.005)
    np.testing.assert_allclose(flops.adventurer_layer_flops(768, chunk_size=128) / 1e6, 16.97, atol=0.005)
    for d, ref in ((256, 2.27), (512, 8.05), (1024, 30.26)):
        np.testing.assert_allclose(flops.adventurer_layer_flops(d, chunk_size=256) / 1e6, ref, atol=0.005)
    np.testing.assert_allclose(flops.vit_layer_flops(768, 197) / 1e6, 14.8, atol=0.05)
    np.testing.assert_allclose(flops.vit_layer_flops(768, 50_177) / 1e6, 168.3, atol=0.05)
    assert flops.tokens_per_image("vit_base", 16, 224) == 197
    assert flops.tokens_per_image("adventurer_base", 16, 224) == 198
    assert flops.tokens_per_image("adventurer_base", 1, 224) == 50_178
    with pytest.raises(ValueError, match=r"(?=.*\b3\b)(?=.*\b224\b)"):
        flops.tokens_per_image("vit_base", 3, 224)


def test_train_flops_table():
    table = {16: (0.105, 0.124), 8: (0.468, 0.492), 4: (2.69, 1.96), 2: (23.8, 7.85), 1: (304, 31.4)}
    for p, (vit_t, adv_t) in table.items():
        v = flops.train_flops_per_image("vit_base", p, 224) / 1e12
        a = flops.train_flops_per_image("adventurer_base", p, 224, chunk_size=256) / 1e12
        np.testing.assert_allclose(v, vit_t, rtol=5e-3)
        np.testing.assert_allclose(a, adv_t, rtol=5e-3)
    ratio = [flops.train_flops_per_image("vit_base", 1, s) / flops.train_flops_per_image(
        "adventurer_base", 1, s, chunk_size=256) for s in (128, 64)]
    np.testing.assert_allclose(ratio, [3.71, 1.54], atol=0.006)
    # Overrides: depth scales linearly, width changes the per-layer cost, chunk_size defaults to 128.
    base = flops.train_flops_per_image("adventurer_base", 16, 224)
    np.testing.assert_allclose(base, 3 * 12 * 198 * flops.adventurer_layer_flops(768, chunk_size=128))
    np.testing.assert_allclose(flops.train_flops_per_image("adventurer_base", 16, 224, depth=6), base / 2)
    np.testing.assert_allclose(flops.train_flops_per_image("vit_tiny", 16, 224, width=768),
                               flops.train_flops_per_image("vit_base", 16, 224))


# ---------------------------------------------------------------------------------------------------------------
# chunked (query-block) attention
# ---------------------------------------------------------------------------------------------------------------

def attention_numpy(q, k, v, g):
    """float64 softmax(q·kᵀ/√d)·v and the gradients of sum(out * g) w.r.t. q, k, v, from the softmax Jacobian
    (ds = p∘(dp - rowsum(dp∘p))); all (batch, length, heads, head_dim)."""
    q, k, v, g = (np.asarray(x, np.float64).transpose(0, 2, 1, 3) for x in (q, k, v, g))
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.swapaxes(-1, -2) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = g @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    grads = (ds @ k * scale, ds.swapaxes(-1, -2) @ q * scale, p.swapaxes(-1, -2) @ g)
    return (p @ v).transpose(0, 2, 1, 3), tuple(x.transpose(0, 2, 1, 3) for x in grads)


def _qkvg(length, batch=2, heads=3, dim=8, seed=7):
    # x2: peaked softmax rows (logits of std ~2), not near-uniform ones.
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, g = (jax.random.normal(key, (batch, length, heads, dim)) for key in keys)
    return 2 * q, k, v, g


def test_attention_numpy_reference_gradient_by_finite_differences():
    q, k, v, g = (np.asarray(x, np.float64) for x in _qkvg(5, batch=1, heads=2, dim=4))
    _, grads = attention_numpy(q, k, v, g)
    loss = lambda *qkv: float((attention_numpy(*qkv, g)[0] * g).sum())
    eps = 1e-6
    for which in range(3):
        for index in [(0, 0, 0, 0), (0, 3, 1, 2), (0, 4, 1, 3)]:
            args = [q.copy(), k.copy(), v.copy()]
            args[which][index] += eps
            up = loss(*args)
            args[which][index] -= 2 * eps
            fd = (up - loss(*args)) / (2 * eps)
            np.testing.assert_allclose(grads[which][index], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("length,q_block", [(37, 16), (37, 64), (32, 16)])
def test_chunked_attention_matches_numpy(length, q_block):
    """37 rows in blocks of <= 16: three blocks of 13 with 2 padded rows; 64: one block; 32: two exact blocks."""
    q, k, v, g = _qkvg(length)
    ref, ref_grads = attention_numpy(q, k, v, g)
    fn = jax.jit(lambda q, k, v, g: jax.vjp(lambda *a: attention.chunked_attention(*a, q_block=q_block), q, k, v)[1](g))
    out = jax.jit(lambda q, k, v: attention.chunked_attention(q, k, v, q_block=q_block))(q, k, v)
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(fn(q, k, v, g), ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_attention_bf16():
    """bf16 inputs: output and gradients in bf16, within bf16 rounding of the float64 reference on the same inputs."""
    q, k, v, g = (x.astype(jnp.bfloat16) for x in _qkvg(37))
    ref, ref_grads = attention_numpy(*(np.asarray(x, np.float32) for x in (q, k, v, g)))
    out, vjp = jax.vjp(lambda *a: attention.chunked_attention(*a, q_block=16), q, k, v)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.03 * np.abs(ref).max())
    for got, want in zip(vjp(g), ref_grads):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.03 * np.abs(want).max())



def test_chunked_attention_grad_memory_is_blockwise():
    """Compiled (not run) backward temp memory at 2,048 tokens: XLA's dense attention holds several (B, h, L, L)
    float32 arrays; chunked attention a few (B, h, q_block, L) ones (measured: 162.5 MiB dense; 9.6 / 15.6 MiB
    chunked at q_block 128 / 256, one score matrix being 32 MiB)."""
    b, length, heads, dim = 1, 2048, 2, 32
    x = jax.ShapeDtypeStruct((b, length, heads, dim), jnp.float32)

    def temp_bytes(attn):
        loss = lambda q, k, v: (attn(q, k, v) * q).sum()
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    scores = b * heads * length**2 * 4
    dense = temp_bytes(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    chunked = {qb: temp_bytes(lambda q, k, v: attention.chunked_attention(q, k, v, q_block=qb)) for qb in (128, 256)}
    assert dense >= scores
    assert chunked[256] < 0.25 * dense and chunked[256] < 0.75 * scores, (dense, chunked)
    for qb, used in chunked.items():
        assert used < 6 * b * heads * qb * length * 4, (qb, used)    # a few blocks of probabilities, not L²
    assert chunked[128] < chunked[256]

def test_vit_chunked_attention_matches_xla(monkeypatch):
    """Same logits and gradients with attn_impl "chunked" as "xla" (float32), over several query blocks."""
    monkeypatch.setattr(attention, "CHUNK_Q_BLOCK", 8)                      # 17 tokens: 3 blocks of 6 rows, 1 padded
    x = _images()
    y = jax.random.normal(jax.random.key(5), (2, 10))
    results = {}
    for impl in ("xla", "chunked"):
        graphdef, state = nnx.split(create_model("vit_tiny", attn_impl=impl, **TINY_VIT))

        def loss(state):
            logits = nnx.merge(graphdef, state)(x)
            return jnp.mean((logits - y) ** 2), logits

        results[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    (_, ref_logits), ref_grads = results["xla"]
    (_, logits), grads = results["chunked"]
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)


def test_attn_impl_auto_resolution():
    resolve = attention.resolve_attn_impl
    for impl in ("xla", "chunked"):
        assert resolve(impl, jnp.bfloat16, 4097) == impl
    if jax.default_backend() == "cpu":
        for dtype, min_length in ((jnp.bfloat16, attention.CHUNK_MIN_LENGTH_16BIT),
                                  (jnp.float32, attention.CHUNK_MIN_LENGTH)):
            assert resolve("auto", dtype, min_length) == "chunked"
            assert resolve("auto", dtype, min_length - 1) == "xla"
    with pytest.raises(ValueError, match="chunked"):
        create_model("vit_tiny", attn_impl="flash", **TINY_VIT)


# ---------------------------------------------------------------------------------------------------------------
# initialisers (timm's, as the original models use them)
# ---------------------------------------------------------------------------------------------------------------

def _truncated_normal_std(sigma: float, bound: float) -> float:
    """Standard deviation of N(0, sigma²) truncated to ±bound (absolute), from the closed form."""
    z = bound / sigma
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return sigma * math.sqrt(1 - 2 * z * pdf / math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("fan_in", [3, 768])
def test_timm_initialisers_empirical_std(fan_in):
    """timm's trunc_normal_(std=.02) cuts at ±2 ABSOLUTE (100σ: std 0.02, not the 0.0176 of a ±2σ cut); timm 0.4.12's
    lecun_normal_ is trunc_normal_(std=√(1/fan_in)/0.8796...) with the same absolute cut: std 0.0410 at fan_in 768
    (flax's lecun_normal: 0.0361), and at fan_in 3 (p = 1) the ±2 cut is at 3.05σ: std 0.6487. 400k draws: the
    standard error of a std estimate is 0.11 %, the tolerance 1 % (fixed seed, so it cannot flake)."""
    n = 400_000
    w = np.asarray(common.trunc_normal(0.02)(jax.random.key(0), (n // 100, 100)), np.float64)
    assert abs(w.mean()) < 2e-4 and abs(w.std() / 0.02 - 1) < 0.01, w.std()      # mean: 6 standard errors
    sigma = math.sqrt(1 / fan_in) / 0.87962566103423978
    k = np.asarray(common.lecun_normal()(jax.random.key(1), (1, 1, fan_in, n // fan_in)), np.float64)
    assert np.abs(k).max() <= 2.0
    expected = _truncated_normal_std(sigma, 2.0)
    assert abs(k.std() / expected - 1) < 0.01, (k.std(), expected)
    if fan_in == 3:
        assert abs(expected / 0.6487 - 1) < 1e-3


def test_models_use_timm_initialisers():
    """The weights the originals draw from timm's trunc_normal_(std=.02) and lecun_normal_ have those stds here."""
    vit_model = create_model("vit_tiny", patch_size=16, image_size=32, num_classes=10, width=256, depth=1)
    adv_model = create_model("adventurer_tiny", patch_size=16, image_size=32, num_classes=10, width=256, depth=1)
    std = lambda p: float(np.asarray(p[...], np.float64).std())  # noqa: E731
    for w in (vit_model.blocks[0].attn.qkv.kernel, vit_model.blocks[0].mlp.fc1.kernel):
        assert abs(std(w) / 0.02 - 1) < 0.01, std(w)
    assert abs(std(adv_model.patch_embed.kernel) / (math.sqrt(1 / 768) / 0.87962566103423978) - 1) < 0.01
