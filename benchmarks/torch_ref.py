"""PyTorch reference models for the benchmark: a DeiT-layout ViT and an Adventurer (Mamba-2 SSD) written from the math.

Runs in its own environment (`.venv-torch`: torch 2.13.0 CPU + numpy; timm is not installable CPU-only here,
benchmarks/README.md) as a subprocess of `benchmarks/run.py`, which merges the JSON this writes:

    .venv-torch/bin/python -m benchmarks.torch_ref --configs cfg.json --out torch.json

On CPU: eager float32, the way a user would run these models on this CPU. On CUDA (the GPU benchmark, where the
machine's own python3 holds torch and timm): the ViT is timm's `VisionTransformer`, the forward runs under bf16
autocast (float32 weights), timing synchronises the device, and the peak allocated memory is recorded. Two choices that keep the reference fair:
- the causal depthwise conv is K shifted multiply-adds, not `conv1d` (whose CPU backward is pathologically slow,
  benchmarks/README.md);
- the SSD is the chunked form of docs/ssd.md in plain PyTorch (batched matmuls inside chunks, a dense
  chunk-to-chunk decay matrix between chunks), all decays/exps/cumsums in float32 with exponents ≤ 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import log, time_calls, write_json


# ------------------------------------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):  # x: (b, l, d)
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # timm's fused path on CPU
        return self.proj(y.transpose(1, 2).reshape(b, l, d))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """DeiT layout (docs/models.md, "ViT"): CLS first, learned pos-embed, pre-LN blocks, final LN, head on x[:, 0]."""

    def __init__(self, width, depth, heads, mlp, patch, image, channels, classes):
        super().__init__()
        self.patch = patch
        n = (image // patch) ** 2
        self.patch_embed = nn.Linear(channels * patch * patch, width)  # == conv2d(kernel=stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        self.blocks = nn.ModuleList([ViTBlock(width, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, classes)

    def forward(self, images):  # images: (b, H, W, C)
        x = patchify(images, self.patch)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def patchify(images, p):
    """(b, H, W, C) -> (b, n, p*p*C), row-major patches."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


# ------------------------------------------------------------------------------------------------------- Adventurer
class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def segsum(a):
    """a: (..., T) -> (..., T, T) with [i, j] = sum_{k=j+1..i} a_k for i >= j, -inf above the diagonal.

    Built by cumulative-summing a masked copy of `a` down the rows, so it only ever adds non-positive terms
    (docs/ssd.md, the decay matrix) and every exponent stays ≤ 0.
    """
    t = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, t)                   # [i, j] = a_i
    strict = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), -1)
    seg = torch.cumsum(rows.masked_fill(~strict, 0.0), dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device))
    return seg.masked_fill(~lower, -math.inf)


def ssd_chunked(x, dt, A, B, C, chunk):
    """Chunked SSD, G = 1 (Adventurer). x: (b, l, H, P); dt: (b, l, H); A: (H,); B, C: (b, l, N) -> y like x."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    pad = (-l) % chunk
    if pad:  # dt = 0, x = B = C = 0 at the end: decay 1, input 0 (docs/ssd.md, padding)
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = (l + pad) // chunk
    x = x.reshape(b, c, chunk, h, p)
    dt = dt.reshape(b, c, chunk, h)
    B, C = B.reshape(b, c, chunk, n), C.reshape(b, c, chunk, n)
    a = (dt * A).permute(0, 3, 1, 2)                               # (b, h, c, Q), ≤ 0, float32
    cs = torch.cumsum(a, -1)
    xd = (x * dt[..., None]).permute(0, 3, 1, 2, 4)                # (b, h, c, Q, P)
    # Diagonal blocks: (C Bᵀ ∘ L) x̃, contracted pairwise (never a (Q, Q, H, P) intermediate).
    gram = C @ B.transpose(-1, -2)                                  # (b, c, Q, Q)
    y = (gram[:, None] * torch.exp(segsum(a))) @ xd                 # (b, h, c, Q, P)
    # Chunk states from zero: S_c = sum_j exp(cs_last - cs_j) x̃_j ⊗ B_j.
    decay = torch.exp(torch.clamp(cs[..., -1:] - cs, max=0.0))      # (b, h, c, Q)
    states = (xd * decay[..., None]).transpose(-1, -2) @ B[:, None]  # (b, h, c, P, N)
    # Between chunks: dense (c+1)×(c+1) decay matrix over the chunk log-decays.
    lam = F.pad(cs[..., -1], (1, 0))                                # (b, h, c+1)
    states = torch.cat([torch.zeros_like(states[:, :, :1]), states], 2)
    inter = torch.exp(segsum(lam))                                  # (b, h, c+1, c+1)
    states_in = torch.einsum("bhzc,bhcpn->bhzpn", inter, states)[:, :, :-1]
    # Off-diagonal: exp(cs_i) · S_in C_i.
    y = y + (C[:, None] @ states_in.transpose(-1, -2)) * torch.exp(cs)[..., None]
    return y.permute(0, 2, 3, 1, 4).reshape(b, c * chunk, h, p)[:, :l]


class Mamba2Mixer(nn.Module):
    """mamba_ssm 2.0.4 `Mamba2`, ngroups 1 (docs/models.md); `shape` from `train_step.reference_shape` gives
    d_inner, d_state, head_dim and the conv width as pixeltok's model has them (default: 2d, 64, 64, 4)."""

    def __init__(self, d: int, chunk: int, depth: int, shape: dict):
        super().__init__()
        self.inner, self.state, self.head_dim = shape["d_inner"], shape["d_state"], shape["head_dim"]
        self.heads, self.chunk, self.conv = self.inner // self.head_dim, chunk, shape["conv"]
        conv_ch = self.inner + 2 * self.state
        self.in_proj = nn.Linear(d, 2 * self.inner + 2 * self.state + self.heads, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(conv_ch, self.conv).uniform_(-0.5, 0.5))
        self.conv_bias = nn.Parameter(torch.empty(conv_ch).uniform_(-0.5, 0.5))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1, 16)))
        dt0 = torch.exp(torch.empty(self.heads).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt0 + torch.log(-torch.expm1(-dt0)))   # softplus⁻¹
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = RMSNorm(self.inner)
        self.out_proj = nn.Linear(self.inner, d, bias=False)
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(depth)

    def causal_conv(self, u):
        """Depthwise causal conv, K shifted multiply-adds (u: (b, l, ch)); weight[:, k] multiplies u[t - (K-1) + k]."""
        k = self.conv
        up = F.pad(u, (0, 0, k - 1, 0))
        out = self.conv_bias + up[:, k - 1:] * self.conv_weight[:, k - 1]
        for i in range(k - 1):
            out = out + up[:, i:i + u.shape[1]] * self.conv_weight[:, i]
        return out

    def forward(self, u):
        b, l, _ = u.shape
        z, xbc, dt = torch.split(self.in_proj(u), [self.inner, self.inner + 2 * self.state, self.heads], -1)
        xbc = F.silu(self.causal_conv(xbc))
        x, B, C = torch.split(xbc, [self.inner, self.state, self.state], -1)
        x = x.reshape(b, l, self.heads, self.head_dim)
        dt = F.softplus(dt.float() + self.dt_bias)
        A = -torch.exp(self.A_log.float())
        y = ssd_chunked(x, dt, A, B, C, self.chunk) + self.D[:, None] * x
        y = self.norm(y.reshape(b, l, self.inner) * F.silu(z))
        return self.out_proj(y)


class AdventurerBlock(nn.Module):
    def __init__(self, d: int, chunk: int, depth: int, flip: bool, shape: dict):
        super().__init__()
        self.flip = flip
        self.norm, self.norm_mlp = RMSNorm(d), RMSNorm(d)
        self.mixer = Mamba2Mixer(d, chunk, depth, shape)
        hidden = shape["mlp"]
        self.w1, self.w2, self.w3 = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, d)

    def _flip(self, h):  # reverse the patches, CLS stays last
        return torch.cat([h[:, :-1].flip(1), h[:, -1:]], 1)

    def forward(self, x):
        h = self.norm(x)
        if self.flip:
            h = self._flip(h)
        h = torch.cat([h.mean(1, keepdim=True), h], 1)             # heading average token
        h = self.mixer(h)[:, 1:]
        if self.flip:
            h = self._flip(h)
        x = x + h
        u = self.norm_mlp(x)
        return x + self.w3(F.silu(self.w1(u)) * self.w2(u))


class Adventurer(nn.Module):
    """Adventurer (docs/models.md): CLS appended last, pos-embed, blocks with alternate flips, RMSNorm, head on
    x[:, -1]."""

    def __init__(self, width, depth, patch, image, channels, classes, chunk, shape):
        super().__init__()
        self.patch = patch
        n = (image // patch) ** 2
        self.patch_embed = nn.Linear(channels * patch * patch, width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        self.blocks = nn.ModuleList([AdventurerBlock(width, chunk, depth, i % 2 == 1, shape) for i in range(depth)])
        self.norm = RMSNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, images):
        x = self.patch_embed(patchify(images, self.patch))
        x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, -1])


# ---------------------------------------------------------------------------------------------------------- timing
def build(cfg: dict, use_timm: bool = False) -> nn.Module:
    """The reference model of a configuration; `use_timm` takes timm's VisionTransformer for the ViT shapes."""
    s = cfg["shape"]              # from pixeltok.models (train_step.reference_shape), resolved on the JAX side
    if s["arch"] == "vit":
        if use_timm:
            return TimmViT(cfg)
        return ViT(s["width"], s["depth"], s["heads"], s["mlp"], cfg["patch"], cfg["image"], cfg["channels"],
                   cfg["classes"])
    return Adventurer(s["width"], s["depth"], cfg["patch"], cfg["image"], cfg["channels"], cfg["classes"],
                      cfg.get("chunk_size", 128), s)


class TimmViT(nn.Module):
    """timm's `VisionTransformer` (DeiT layout, fused SDPA attention) at the configuration's patch and image size,
    fed NHWC images like the other references."""

    def __init__(self, cfg: dict):
        super().__init__()
        import timm
        name = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
                "vit_base": "vit_base_patch16_224"}[cfg["model"]]
        self.net = timm.create_model(name, pretrained=False, img_size=cfg["image"], patch_size=cfg["patch"],
                                     num_classes=cfg["classes"], in_chans=cfg["channels"])

    def forward(self, images):
        return self.net(images.permute(0, 3, 1, 2))


def _have_timm() -> bool:
    try:
        import timm  # noqa: F401
        return True
    except ImportError:
        return False


def bench_one(cfg: dict, max_time_s: float, device: str = "cpu", amp: str = "none") -> dict:
    """Times fwd+bwd (cross-entropy on soft labels) and the AdamW step of one configuration.

    On CUDA every timed call ends with `torch.cuda.synchronize()` (kernels are asynchronous) and the peak allocated
    memory is recorded; `amp="bf16"` runs the forward under `torch.autocast` (bf16 matmuls, float32 master weights),
    which is what pixeltok's bf16 compute dtype corresponds to.
    """
    torch.manual_seed(0)
    use_timm = _have_timm()
    model = build(cfg, use_timm).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    b, s, c, k = cfg["batch"], cfg["image"], cfg["channels"], cfg["classes"]
    images = torch.randn(b, s, s, c, device=device)
    labels = F.one_hot(torch.randint(0, k, (b,), device=device), k).float()
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=(amp == "bf16"))

    def fwd_bwd():
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        sync()
        return loss

    def opt_step():
        opt.step()
        sync()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fwd_bwd()  # first call: allocator warm-up, also gives a time estimate for the repetition count
    first = time.perf_counter() - t0
    fb = time_calls(fwd_bwd, warmup=1 if cuda else 0, min_reps=2 if first > 5 else 3, max_reps=10 if not cuda else 50,
                    min_time_s=min(6.0, max_time_s) if not cuda else 1.0, max_time_s=max_time_s)
    step = time_calls(opt_step, warmup=1, min_reps=3, max_reps=10, min_time_s=0.5, max_time_s=5.0)
    out = {**cfg, "first_call_s": first, "fwd_bwd": fb, "opt_step": step,
           "train_step_s": fb["median_s"] + step["median_s"], "device": device, "amp": amp,
           "vit_impl": "timm" if use_timm else "benchmarks.torch_ref",
           "num_params": sum(p.numel() for p in model.parameters())}
    if cuda:
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", required=True, help="JSON list of {model, patch, image, batch, channels, shape, ...}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-time-s", type=float, default=30.0, help="timing budget per configuration")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=("none", "bf16"), default=None,
                    help="autocast dtype; default bf16 on CUDA (pixeltok computes in bf16), none on CPU")
    args = ap.parse_args(argv)
    amp = args.amp or ("bf16" if args.device.startswith("cuda") else "none")
    torch.set_num_threads(args.threads)
    with open(args.configs, encoding="utf-8") as f:
        configs = json.load(f)
    results = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
               "mkldnn": torch.backends.mkldnn.is_available(), "device": args.device, "amp": amp,
               "dtype": "float32" if amp == "none" else f"float32 params, {amp} autocast", "results": []}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    for cfg in configs:
        log(f"torch {cfg['model']} p{cfg['patch']} {cfg['image']}² ×{cfg['batch']}")
        try:
            r = bench_one(cfg, args.max_time_s, args.device, amp)
            log(f"  fwd+bwd {r['fwd_bwd']['median_s']:.3f} s, AdamW {r['opt_step']['median_s'] * 1e3:.1f} ms")
        except (RuntimeError, MemoryError) as e:
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()  # recorded, never fatal: the main benchmark reports the reason
            r = {**cfg, "skipped": f"{type(e).__name__}: {str(e)[:200]}"}
        results["results"].append(r)
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
