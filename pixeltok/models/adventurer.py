"""Adventurer: a causal Mamba-2 (SSD) vision model with the cls token last and a per-block heading average.

Faithful to the released code (docs/models.md, "Adventurer"); every deviation or quirk is a switch:
`flip_rule` ("alternate" | "released_code"), `drop_path_schedule` ("released_code" | "linear").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixeltok.models import common, heads
from pixeltok.ops import seq_parallel
from pixeltok.ops.ssd import ssd

Array = jax.Array

FLIP_RULES = ("alternate", "released_code", "none")
SSD_IMPLS = ("chunked", "recurrent")


def flip_layers(rule: str, depth: int) -> list[bool]:
    """Which layers scan the patches in reverse (docs/models.md, the flip rule).

    "alternate" (default): i % 2 == 1, i.e. layers 1, 3, 5, ... as the paper and the code comment describe.
    "released_code": i // 2 == 1 as the released code calls it, i.e. only layers 2 and 3 at any depth.
    "none": never (a unidirectional ablation; not in the paper).
    """
    if rule == "alternate":
        return [i % 2 == 1 for i in range(depth)]
    if rule == "released_code":
        return [i // 2 == 1 for i in range(depth)]
    if rule == "none":
        return [False] * depth
    raise ValueError(f"flip_rule {rule!r} is unknown; valid: {', '.join(FLIP_RULES)}")


def reverse_patches(x: Array) -> Array:
    """Reverses the patch tokens of (batch, n + 1, d), keeping the cls token (last) in place. Self-inverse."""
    return jnp.concatenate([x[:, -2::-1], x[:, -1:]], axis=1)


def maybe_reverse_patches(x: Array, flip: bool | Array) -> Array:
    """`reverse_patches(x)` if flip else x; flip is a Python bool or a traced bool scalar (scan over layers)."""
    if isinstance(flip, (bool, np.bool_)):
        return reverse_patches(x) if flip else x
    return jnp.where(flip, reverse_patches(x), x)


def _maybe(fn, x: Array, flip: bool | Array) -> Array:
    """fn(x) if flip else x; flip is a Python bool or a traced bool scalar (scan over layers)."""
    if isinstance(flip, (bool, np.bool_)):
        return fn(x) if flip else x
    return jnp.where(flip, fn(x), x)


def causal_depthwise_conv(x: Array, kernel: Array, bias: Array) -> Array:
    """Causal depthwise conv1d as K shifted multiply-adds (faster than a conv and its backward on CPU).

    Same as PyTorch's Conv1d(groups=C, padding=K-1)[..., :L]: out[t] = Σ_k kernel[k]·x[t - (K-1) + k] + bias.

    Args:
      x: (batch, length, channels) float32.
      kernel: (K, 1, channels) (flax depthwise layout).
      bias: (channels,).
    """
    k_size, length = kernel.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k_size - 1, 0), (0, 0)))
    out = bias.astype(x.dtype)
    for k in range(k_size):
        out = out + xp[:, k:k + length] * kernel[k, 0].astype(x.dtype)
    return out


def _dt_bias_init(heads: int, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4):
    """dt_bias = softplus⁻¹(dt0), dt0 = exp(U[log dt_min, log dt_max]) clamped ≥ dt_floor (mamba_ssm init)."""
    def init(key, shape=(heads,), dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = jnp.maximum(dt, dt_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)      # inverse softplus, stable for small dt
    return init


class Mamba2Mixer(nnx.Module):
    """The Mamba-2 token mixer of mamba_ssm 2.0.4 (docs/models.md, "The Mamba-2 mixer"), calling `pixeltok.ops.ssd.ssd`.

    Attributes:
      in_proj: Linear(d -> 2·d_inner + 2·G·N + H), no bias; output split [z, x, B, C, dt].
      conv1d: depthwise causal conv over [x, B, C] (K = 4, kernel (K, 1, d_inner + 2GN), bias), then SiLU.
      A_log, dt_bias, D: (H,) per-head parameters; A = -exp(A_log), dt = softplus(dt_raw + dt_bias) in f32.
      norm: gated RMSNorm over d_inner: y = RMSNorm(y · silu(z)) · w.
      out_proj: Linear(d_inner -> d), no bias, init U(±1/√d_inner) / √depth.
    """

    def __init__(self, d: int, *, depth: int, d_state: int = 64, expand: int = 2, head_dim: int = 64,
                 ngroups: int = 1, conv_kernel: int = 4, chunk_size: int = 128, ssd_impl: str = "chunked",
                 dtype=jnp.float32, rngs: nnx.Rngs):
        d_inner = expand * d
        if d_inner % head_dim:
            raise ValueError(f"head_dim {head_dim} does not divide d_inner {d_inner} (= expand·width)")
        heads = d_inner // head_dim
        if heads % ngroups:
            raise ValueError(f"ngroups {ngroups} does not divide heads {heads}")
        if ssd_impl not in SSD_IMPLS:
            raise ValueError(f"ssd_impl {ssd_impl!r} is unknown; valid: {', '.join(SSD_IMPLS)}")
        self.d_inner, self.heads, self.head_dim = d_inner, heads, head_dim
        self.ngroups, self.d_state = ngroups, d_state
        self.chunk_size, self.ssd_impl, self.dtype = chunk_size, ssd_impl, dtype
        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = common.linear(d, 2 * d_inner + 2 * ngroups * d_state + heads, use_bias=False,
                                     kernel_init=common.torch_linear_init(d), dtype=dtype, rngs=rngs)
        # PyTorch default Conv1d init: fan_in = (in/groups)·K = K, so U(±1/√K) = U(±0.5) for weight AND bias.
        conv_init = common.uniform_init(1.0 / math.sqrt(conv_kernel))
        self.conv1d = nnx.Conv(conv_dim, conv_dim, (conv_kernel,), feature_group_count=conv_dim,
                               padding=((conv_kernel - 1, 0),), use_bias=True, param_dtype=jnp.float32,
                               kernel_init=conv_init, bias_init=conv_init, rngs=rngs)
        self.A_log = nnx.Param(jnp.log(jax.random.uniform(rngs.params(), (heads,), jnp.float32, 1.0, 16.0)))
        self.dt_bias = nnx.Param(_dt_bias_init(heads)(rngs.params()))
        self.D = nnx.Param(jnp.ones((heads,), jnp.float32))
        self.norm = common.RMSNorm(d_inner, eps=1e-5, out_dtype=dtype)
        # rescale_prenorm_residual: out_proj (and only it, not SwiGLU's w3) is divided by √depth.
        self.out_proj = common.linear(d_inner, d, use_bias=False,
                                      kernel_init=common.torch_linear_init(d_inner, 1.0 / math.sqrt(depth)),
                                      dtype=dtype, rngs=rngs)

    def __call__(self, u: Array) -> Array:
        """u: (batch, length, d) in the compute dtype -> (batch, length, d) float32."""
        b, length, _ = u.shape
        gn = self.ngroups * self.d_state
        zxbcdt = self.in_proj(u.astype(self.dtype))                       # float32 (f32 accumulation)
        z, xbc, dt_raw = jnp.split(zxbcdt, [self.d_inner, 2 * self.d_inner + 2 * gn], axis=-1)
        xbc = jax.nn.silu(causal_depthwise_conv(xbc.astype(jnp.float32), self.conv1d.kernel[...],
                                                self.conv1d.bias[...]))
        x, bmat, cmat = jnp.split(xbc.astype(self.dtype), [self.d_inner, self.d_inner + gn], axis=-1)
        x = x.reshape(b, length, self.heads, self.head_dim)
        bmat = bmat.reshape(b, length, self.ngroups, self.d_state)
        cmat = cmat.reshape(b, length, self.ngroups, self.d_state)
        # dt, A and everything decaying stays float32 (docs/ssd.md, "Numerics rules"); no dt clamp at run time.
        dt = jax.nn.softplus(dt_raw.astype(jnp.float32) + self.dt_bias[...])
        a = -jnp.exp(self.A_log[...])
        y = ssd(x, dt, a, bmat, cmat, chunk_size=self.chunk_size, impl=self.ssd_impl)
        y = y.astype(jnp.float32) + self.D[...][:, None] * x.astype(jnp.float32)
        y = y.reshape(b, length, self.d_inner) * jax.nn.silu(z.astype(jnp.float32))
        return self.out_proj(self.norm(y)).astype(jnp.float32)

    def call_sharded(self, u: Array, head: Array, seq: seq_parallel.SeqLayout) -> Array:
        """`__call__(concat([head, u]))[:, 1:]` with u's tokens split over the seq mesh axis (docs/sharding.md).

        u: (batch, padded, d) sharded; head: (batch, 1, d) the heading token, replicated, which sits in front of
        shard 0: it enters as the conv's left context there and, through its state, as the scan's initial state
        (its own output is dropped by the block, so it is never computed). Returns (batch, padded, d) float32.
        """
        b, length, _ = u.shape
        gn = self.ngroups * self.d_state
        cuts = [self.d_inner, 2 * self.d_inner + 2 * gn]
        z, xbc, dt_raw = jnp.split(self.in_proj(u.astype(self.dtype)), cuts, axis=-1)
        _, xbc_h, dt_h = jnp.split(self.in_proj(head.astype(self.dtype)), cuts, axis=-1)
        kernel, bias = self.conv1d.kernel[...], self.conv1d.bias[...]
        xbc_h = xbc_h.astype(jnp.float32)
        k_size = kernel.shape[0]
        prefix = jnp.concatenate([jnp.zeros((b, k_size - 1, xbc_h.shape[-1]), jnp.float32), xbc_h], 1)[:, 1:]
        xbc = jax.nn.silu(seq_parallel.causal_conv(xbc.astype(jnp.float32), kernel, bias, seq, prefix=prefix))
        xbc_h = jax.nn.silu(causal_depthwise_conv(xbc_h, kernel, bias))     # zeros before the head token

        def parts(t, n):
            x, bm, cm = jnp.split(t.astype(self.dtype), [self.d_inner, self.d_inner + gn], axis=-1)
            return (x.reshape(b, n, self.heads, self.head_dim), bm.reshape(b, n, self.ngroups, self.d_state),
                    cm.reshape(b, n, self.ngroups, self.d_state))

        x, bmat, cmat = parts(xbc, length)
        x_h, b_h, c_h = parts(xbc_h, 1)
        dt = jax.nn.softplus(dt_raw.astype(jnp.float32) + self.dt_bias[...])
        dt_h = jax.nn.softplus(dt_h.astype(jnp.float32) + self.dt_bias[...])
        a = -jnp.exp(self.A_log[...])
        _, state = ssd(x_h, dt_h, a, b_h, c_h, chunk_size=1, return_state=True)   # the head token's state
        y = seq_parallel.ssd(x, dt, a, bmat, cmat, seq, chunk_size=self.chunk_size, initial_state=state)
        y = y.astype(jnp.float32) + self.D[...][:, None] * x.astype(jnp.float32)
        y = y.reshape(b, length, self.d_inner) * jax.nn.silu(z.astype(jnp.float32))
        return self.out_proj(self.norm(y)).astype(jnp.float32)


class SwiGLU(nnx.Module):
    """Channel mixer swiglu(u) = w3(silu(w1 u) · w2 u), hidden int(2.5 d), all Linears with bias (init 0)."""

    def __init__(self, d: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.w1 = common.linear(d, hidden, use_bias=True, kernel_init=common.torch_linear_init(d), dtype=dtype,
                                rngs=rngs)
        self.w2 = common.linear(d, hidden, use_bias=True, kernel_init=common.torch_linear_init(d), dtype=dtype,
                                rngs=rngs)
        self.w3 = common.linear(hidden, d, use_bias=True, kernel_init=common.torch_linear_init(hidden),
                                dtype=dtype, rngs=rngs)

    def __call__(self, u: Array) -> Array:
        """u: (batch, length, d) compute dtype -> (batch, length, d) float32."""
        h = jax.nn.silu(self.w1(u)) * self.w2(u)                      # float32
        return self.w3(h.astype(self.dtype)).astype(jnp.float32)


class AdventurerBlock(nnx.Module):
    """RMSNorm -> (flip) -> heading average prepended -> Mamba-2 mixer -> drop head output -> (un-flip) -> residual;
    RMSNorm -> SwiGLU -> residual (docs/models.md, the forward pass)."""

    def __init__(self, d: int, *, depth: int, mixer_kwargs: dict, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm = common.RMSNorm(d, eps=1e-5, out_dtype=dtype)
        self.mixer = Mamba2Mixer(d, depth=depth, dtype=dtype, rngs=rngs, **mixer_kwargs)
        self.norm2 = common.RMSNorm(d, eps=1e-5, out_dtype=dtype)
        self.mlp = SwiGLU(d, int(2.5 * d), dtype=dtype, rngs=rngs)

    def token_mix(self, x: Array, flip: bool | Array, seq: seq_parallel.SeqLayout | None = None) -> Array:
        """The mixer branch without drop-path: (batch, n + 1, d) float32 -> (batch, n + 1, d) float32.

        flip: a Python bool, or a traced bool scalar when the blocks run as a scan over layers.
        seq: the layout when the tokens are split over the seq mesh axis (x is then (batch, padded, d)).
        """
        if seq is not None:
            return self._token_mix_sharded(x, flip, seq)
        h = maybe_reverse_patches(self.norm(x), flip)
        # Heading average: mean of all n + 1 tokens (incl. cls), accumulated in float32, prepended so every
        # position of the causal scan sees a global summary first; its own output is dropped.
        head = jnp.mean(h, axis=1, keepdims=True, dtype=jnp.float32).astype(h.dtype)
        h = self.mixer(jnp.concatenate([head, h], axis=1))[:, 1:]
        return maybe_reverse_patches(h, flip)                       # every block outputs the same token order

    def _token_mix_sharded(self, x: Array, flip: bool | Array, seq: seq_parallel.SeqLayout) -> Array:
        """token_mix on seq-sharded tokens [patches, cls, padding]: the flip is a global reversal of the patches
        (cls and padding stay in place), the heading average a masked global mean placed in front of shard 0."""
        reverse = lambda t: seq_parallel.reverse_prefix(t, seq.length - 1, seq)  # noqa: E731
        h = _maybe(reverse, self.norm(x), flip)
        head = seq_parallel.global_mean(h, seq).astype(h.dtype)
        y = self.mixer.call_sharded(h, head, seq)
        y = jnp.where(seq_parallel.token_mask(seq)[None, :, None], y, 0.0)     # padding stays zero
        return _maybe(reverse, y, flip)

    def __call__(self, x: Array, *, flip: bool | Array = False, drop_rate: float | Array = 0.0,
                 rng: Array | None = None, seq: seq_parallel.SeqLayout | None = None) -> Array:
        """x: (batch, n + 1, d) float32 residual stream -> same. `rng` (train only) draws two independent masks.

        flip and drop_rate are Python values in the layer loop, traced scalars in the scan over layers.
        """
        r1, r2 = common.split_rngs(rng, 2)
        x = x + common.drop_path(self.token_mix(x, flip, seq), drop_rate, r1)
        return x + common.drop_path(self.mlp(self.norm2(x)), drop_rate, r2)


class Adventurer(nnx.Module):
    """Adventurer classifier: patch embed, cls appended LAST, learned pos-embed, blocks, final RMSNorm, head on the
    last token.

    Attributes:
      patch_embed: nnx.Conv kernel (p, p, C, d), timm 0.4.12 lecun_normal_ (`common.lecun_normal`), bias 0
        (applied as a GEMM over patches).
      cls_token: (1, 1, d), pos_embed: (1, n + 1, d); timm trunc_normal_(std=.02) (`common.trunc_normal`).
      blocks: nnx.List of AdventurerBlock (one module per layer, also when they run as a scan: `remat` or
        `scan_layers` stack their states on the fly).
      norm: final RMSNorm (eps 1e-5); head: `heads.make_head(head_type)` (classification: Linear(d, num_classes)
        on the last token).
    """

    def __init__(self, *, width: int, depth: int, patch_size: int = 16, image_size: int = 224,
                 num_classes: int = 1000, num_channels: int = 3, d_state: int = 64, expand: int = 2,
                 head_dim: int = 64, chunk_size: int = 128, ssd_impl: str = "chunked", flip_rule: str = "alternate",
                 drop_path: float = 0.0, drop_path_schedule: str = "released_code", dtype="float32", remat=None,
                 posemb: str = "learned", scan_layers: bool = False, head_type: str = "classification",
                 rngs: nnx.Rngs):
        grid = common.check_patch_size(patch_size, image_size)
        if posemb != "learned":
            raise ValueError(f"posemb {posemb!r} is unknown; valid: learned")
        if width < 1 or depth < 1:
            raise ValueError(f"width {width} and depth {depth} must be >= 1")
        dt = common.compute_dtype(dtype)
        self.patch_size, self.image_size, self.num_channels = patch_size, image_size, num_channels
        self.num_patches, self.width, self.depth, self.dtype = grid * grid, width, depth, dt
        self.grid, self.cls_index, self.head_type = grid, -1, heads.check_head_type(head_type)
        self.flips = tuple(flip_layers(flip_rule, depth))
        self.drop_rates = tuple(common.drop_path_rates(drop_path, depth, drop_path_schedule))
        self.remat_policy = common.remat_policy(remat)
        self.scan_layers = bool(scan_layers)
        head_dim = min(head_dim, expand * width)       # tiny widths: one head spanning d_inner
        mixer_kwargs = dict(d_state=d_state, expand=expand, head_dim=head_dim, chunk_size=chunk_size,
                            ssd_impl=ssd_impl)
        self.patch_embed = common.patch_embed_conv(num_channels, width, patch_size,
                                                   kernel_init=common.lecun_normal(),
                                                   bias_init=nnx.initializers.zeros, rngs=rngs)
        self.cls_token = nnx.Param(common.trunc_normal()(rngs.params(), (1, 1, width)))
        self.pos_embed = nnx.Param(common.trunc_normal()(rngs.params(), (1, self.num_patches + 1, width)))
        self.blocks = nnx.List([AdventurerBlock(width, depth=depth, mixer_kwargs=mixer_kwargs, dtype=dt, rngs=rngs)
                                for _ in range(depth)])
        # float32 out: `features` are float32; the head casts to the compute dtype, as a bf16 out_dtype would.
        self.norm = common.RMSNorm(width, eps=1e-5, out_dtype=jnp.float32)
        self.head = heads.make_head(head_type, width, num_classes, patch_size=patch_size, dtype=dt, rngs=rngs)

    def embed(self, images: Array) -> Array:
        """images (batch, H, W, C) -> tokens (batch, n + 1, d) float32: patches row-major, cls LAST, + pos."""
        return common.embed_with_cls(self, images, cls_first=False)

    def forward_features(self, images: Array, train: bool = False, *, rng: Array | None = None) -> Array:
        """The residual stream after the last block (before the final norm): (batch, n + 1, d) float32."""
        x, seq = self._stream(images, train, rng)
        return x if seq is None else x[:, :seq.length]

    def _stream(self, images: Array, train: bool, rng: Array | None):
        """(residual stream after the blocks, its sequence-parallel layout or None). Under a mesh with seq > 1
        (`jax.set_mesh`) the tokens [patches, cls] are padded at the end and split over seq from here to the head
        (docs/sharding.md)."""
        x = self.embed(images)
        seq = seq_parallel.current_layout(x.shape[1], x.shape[0])
        if seq is None:
            return common.run_block_stack(self, x, train, rng, flip=self.flips), None
        x = seq_parallel.shard_tokens(x, seq)
        return common.run_block_stack(self, x, train, rng, flip=self.flips, seq=(seq,) * self.depth), seq

    def features(self, images: Array, train: bool = False, rng: Array | None = None) -> Array:
        """All tokens after the final RMSNorm: (batch, n + 1, d) float32, patches row-major, cls LAST.

        Every block un-flips its output and drops its heading-average token, so the residual stream always has
        this layout.
        """
        x, seq = self._stream(images, train, rng)
        x = self.norm(x)
        return x if seq is None else x[:, :seq.length]

    def patch_grid(self, tokens: Array) -> Array:
        """The patch tokens of `features` as the image grid (batch, gh, gw, d) (cls dropped)."""
        return common.patch_grid(tokens[:, :-1], self.grid)

    def __call__(self, images: Array, train: bool = False, *, rng: Array | None = None) -> Array:
        """images (batch, H, W, C) float -> the head's output; classification: logits (batch, num_classes) float32
        from the LAST (cls) token."""
        return heads.apply_head(self, self.features(images, train, rng=rng))


def flip_layer_set(rule: str, depth: int) -> set[int]:
    """The indices of flipped layers, e.g. {1, 3, 5, ...} ("alternate") or {2, 3} ("released_code")."""
    return set(np.nonzero(flip_layers(rule, depth))[0].tolist())
