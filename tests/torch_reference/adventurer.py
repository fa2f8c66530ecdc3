"""The official Adventurer in plain PyTorch, written from the released `models_mamba.py` / `mamba_custom.py`
structure (module names = state-dict keys): `patch_embed.proj`, `cls_token`, `pos_embed`, `layers.{i}.{norm,
mixer.{in_proj,conv1d,dt_bias,A_log,D,norm,out_proj}, norm_mlp, mlp.{w1,w2,w3}}`, `norm_f`, `head`.

The mixer is mamba_ssm 2.0.4's `Mamba2` (only d_state and expand set by Adventurer; headdim 64, one group, conv
K = 4, gated RMSNorm after the gate) on its unfused path, with the Triton chunked scan replaced by the plain
recurrence S_t = exp(dt_t·A)·S_{t-1} + dt_t·x_t B_tᵀ, y_t = S_t C_t (+ D·x_t). Not the pixeltok code: an
independent implementation for the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_reference import PatchEmbed


class RMSNorm(nn.Module):
    """mamba_ssm's RMSNorm: weight only (no bias), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormGated(RMSNorm):
    """mamba_ssm's gated RMSNorm with norm_before_gate=False and one group: rmsnorm(x · silu(z)) · weight."""

    def forward(self, x, z):
        return super().forward(x * F.silu(z))


class Mamba2(nn.Module):
    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.nheads = self.d_inner // headdim
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads      # order [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=False)
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=True)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNormGated(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u):
        b, length, _ = u.shape
        gn = self.ngroups * self.d_state
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :length].transpose(1, 2))     # causal: drop the tail
        x, bm, cm = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        x = x.reshape(b, length, self.nheads, self.headdim)
        bm = bm.reshape(b, length, self.ngroups, self.d_state)
        cm = cm.reshape(b, length, self.ngroups, self.d_state)
        dt = F.softplus(dt + self.dt_bias)                                    # (b, l, h)
        a = -torch.exp(self.A_log)
        rep = self.nheads // self.ngroups
        bm, cm = bm.repeat_interleave(rep, dim=2), cm.repeat_interleave(rep, dim=2)      # (b, l, h, n)
        state = x.new_zeros(b, self.nheads, self.headdim, self.d_state)
        ys = []
        for t in range(length):
            decay = torch.exp(dt[:, t] * a)[:, :, None, None]
            state = decay * state + (dt[:, t, :, None, None] * x[:, t, :, :, None] * bm[:, t, :, None, :])
            ys.append(torch.einsum("bhpn,bhn->bhp", state, cm[:, t]))
        y = torch.stack(ys, 1) + self.D[:, None] * x
        y = self.norm(y.reshape(b, length, self.d_inner), z)
        return self.out_proj(y)


class SwiGLU(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.w1 = nn.Linear(in_features, hidden_features)
        self.w2 = nn.Linear(in_features, hidden_features)
        self.act = nn.SiLU()
        self.w3 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.w3(self.act(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    def __init__(self, dim: int, d_state: int, expand: int):
        super().__init__()
        self.mixer = Mamba2(dim, d_state=d_state, expand=expand)
        self.norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * 2.5))
        self.norm_mlp = RMSNorm(dim)

    def forward(self, hidden_states, flip=False):
        x = self.norm(hidden_states)
        x = torch.cat([x[:, :-1].flip(1), x[:, -1:]], dim=1) if flip else x       # patches reversed, cls stays
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)                    # heading average
        x = self.mixer(x)[:, 1:]
        x = torch.cat([x[:, :-1].flip(1), x[:, -1:]], dim=1) if flip else x
        hidden_states = hidden_states + x
        return hidden_states + self.mlp(self.norm_mlp(hidden_states))


class Adventurer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, depth: int = 12, embed_dim: int = 256,
                 channels: int = 3, num_classes: int = 1000, d_state: int = 64, expand: int = 2):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, channels, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.head = nn.Linear(embed_dim, num_classes)
        self.layers = nn.ModuleList([Block(embed_dim, d_state, expand) for _ in range(depth)])
        self.norm_f = RMSNorm(embed_dim)

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1) + self.pos_embed     # cls LAST
        for n, layer in enumerate(self.layers):
            x = layer(x, flip=(n // 2 == 1))                   # the released rule: only layers 2 and 3 flip
        return self.norm_f(x)[:, -1]

    def forward(self, x):
        return self.head(self.forward_features(x))
