"""Pretrained weights in and out: official Adventurer and timm/DeiT ViT checkpoints <-> pixeltok models.

    from pixeltok.convert import load_pretrained, export
    model = load_pretrained("adventurer_base_patch1_224.pth", source="adventurer")
    model = load_pretrained("deit_base_patch16_224.safetensors", source="timm", num_classes=10, image_size=384)
    export(model, "mine.pth", layout="timm")        # {"model": state_dict} the original code loads

    python -m pixeltok.convert --source=adventurer --checkpoint=adventurer_base_patch1_224.pth --workdir=runs/advb

The CLI writes a pixeltok workdir (`config.json` with the inferred model + an Orbax checkpoint holding
`{"model": params}`) that `python -m pixeltok.evaluate --workdir=...` evaluates and `--config.init_from=...`
fine-tunes from. Key mapping, transposes and the released files' numbers: docs/pretrained.md.

Safety: a `.pth` is a pickle, and unpickling can run arbitrary code. Files are read with
`torch.load(weights_only=True)` with only `argparse.Namespace` allow-listed (the official training saves pickle their
command-line `args` with it); a file that needs any other global is refused with one line naming it, unless
`trust_checkpoint=True` (`--trust_checkpoint`), which unpickles it fully and so RUNS WHATEVER CODE THE FILE HOLDS.
`.safetensors` files hold no code and are read with safetensors' numpy API (no torch needed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SOURCES = ("adventurer", "timm")
LAYOUTS = SOURCES
# Globals a `.pth` may reference beyond torch's own weights-only set: the official saves' `args`.
ALLOWED_GLOBALS = ("argparse.Namespace",)
STATE_DICT_KEYS = ("model", "state_dict", "model_ema")

# ---------------------------------------------------------------------------------------------------------------
# The key mapping. (PyTorch key, pixeltok path, transform); "{i}" is the layer index. Transforms:
#   linear  (out, in)       -> kernel (in, out)        transpose
#   conv2d  (d, C, p, p)    -> kernel (p, p, C, d)     permute(2, 3, 1, 0)
#   conv1d  (C, 1, K)       -> kernel (K, 1, C)        permute(2, 1, 0) (depthwise; PyTorch's conv is a
#                                                      cross-correlation like pixeltok's, so no tap flip)
#   None                    same shape
# ---------------------------------------------------------------------------------------------------------------
ADVENTURER_TOP = (
    ("patch_embed.proj.weight", ("patch_embed", "kernel"), "conv2d"),
    ("patch_embed.proj.bias", ("patch_embed", "bias"), None),
    ("cls_token", ("cls_token",), None),
    ("pos_embed", ("pos_embed",), None),          # (1, n + 1, d), cls LAST in both
    ("norm_f.weight", ("norm", "scale"), None),
    ("head.weight", ("head", "kernel"), "linear"),
    ("head.bias", ("head", "bias"), None),
)
ADVENTURER_BLOCK = (      # official `layers.{i}.*` -> pixeltok `blocks/{i}/*`
    ("norm.weight", ("norm", "scale"), None),
    ("mixer.in_proj.weight", ("mixer", "in_proj", "kernel"), "linear"),     # split order [z, x, B, C, dt] in both
    ("mixer.conv1d.weight", ("mixer", "conv1d", "kernel"), "conv1d"),
    ("mixer.conv1d.bias", ("mixer", "conv1d", "bias"), None),
    ("mixer.A_log", ("mixer", "A_log"), None),
    ("mixer.dt_bias", ("mixer", "dt_bias"), None),
    ("mixer.D", ("mixer", "D"), None),
    ("mixer.norm.weight", ("mixer", "norm", "scale"), None),                # the gated RMSNorm
    ("mixer.out_proj.weight", ("mixer", "out_proj", "kernel"), "linear"),
    ("norm_mlp.weight", ("norm2", "scale"), None),
    ("mlp.w1.weight", ("mlp", "w1", "kernel"), "linear"),
    ("mlp.w1.bias", ("mlp", "w1", "bias"), None),
    ("mlp.w2.weight", ("mlp", "w2", "kernel"), "linear"),
    ("mlp.w2.bias", ("mlp", "w2", "bias"), None),
    ("mlp.w3.weight", ("mlp", "w3", "kernel"), "linear"),
    ("mlp.w3.bias", ("mlp", "w3", "bias"), None),
)
TIMM_TOP = (
    ("patch_embed.proj.weight", ("patch_embed", "kernel"), "conv2d"),
    ("patch_embed.proj.bias", ("patch_embed", "bias"), None),
    ("cls_token", ("cls_token",), None),
    ("pos_embed", ("pos_embed",), None),          # (1, n + 1, d), cls FIRST in both
    ("norm.weight", ("norm", "scale"), None),
    ("norm.bias", ("norm", "bias"), None),
    ("head.weight", ("head", "kernel"), "linear"),
    ("head.bias", ("head", "bias"), None),
)
TIMM_BLOCK = (            # timm `blocks.{i}.*` -> pixeltok `blocks/{i}/*`
    ("norm1.weight", ("norm1", "scale"), None),
    ("norm1.bias", ("norm1", "bias"), None),
    ("attn.qkv.weight", ("attn", "qkv", "kernel"), "linear"),    # columns (3, heads, head_dim) in both
    ("attn.qkv.bias", ("attn", "qkv", "bias"), None),
    ("attn.proj.weight", ("attn", "proj", "kernel"), "linear"),
    ("attn.proj.bias", ("attn", "proj", "bias"), None),
    ("norm2.weight", ("norm2", "scale"), None),
    ("norm2.bias", ("norm2", "bias"), None),
    ("mlp.fc1.weight", ("mlp", "fc1", "kernel"), "linear"),
    ("mlp.fc1.bias", ("mlp", "fc1", "bias"), None),
    ("mlp.fc2.weight", ("mlp", "fc2", "kernel"), "linear"),
    ("mlp.fc2.bias", ("mlp", "fc2", "bias"), None),
)
LAYOUT_TABLES = {"adventurer": ("layers", ADVENTURER_TOP, ADVENTURER_BLOCK),
                 "timm": ("blocks", TIMM_TOP, TIMM_BLOCK)}

# Known variants that are not plain ViT/DeiT: (regex on the key, what it is).
UNSUPPORTED = (
    (r"^(dist_token|head_dist\.)", "distilled DeiT (dist_token / head_dist)"),
    (r"^blocks\.\d+\.(gamma_[12]|ls[12]\.gamma)$", "LayerScale (DeiT-III gamma_* / ls*.gamma)"),
    (r"^reg_token$", "register tokens (reg_token)"),
    (r"^fc_norm\.", "global-average-pool ViTs (fc_norm)"),
    (r"^blocks\.\d+\.attn\.[qk]_norm\.", "QK-norm attention (attn.q_norm / k_norm)"),
    (r"^norm_pre\.", "pre-norm ViTs (norm_pre, CLIP style)"),
)
ADVENTURER_SIZES = {256: "adventurer_tiny", 512: "adventurer_small", 768: "adventurer_base", 1024: "adventurer_large"}
VIT_SIZES = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large"}


def _transform(value: np.ndarray, kind: str | None, inverse: bool = False) -> np.ndarray:
    if kind is None:
        return value
    if kind == "linear":
        return value.T
    if kind == "conv2d":
        return value.transpose((3, 2, 0, 1) if inverse else (2, 3, 1, 0))
    if kind == "conv1d":
        return value.transpose(2, 1, 0)
    raise AssertionError(kind)


def _expected_shape_in_torch(shape: tuple, kind: str | None) -> tuple:
    """The PyTorch shape of a pixeltok parameter of `shape` (for error messages)."""
    return tuple(_transform(np.empty(shape, np.bool_), kind, inverse=True).shape)


def mapping_table(layout: str, depth: int) -> list[tuple[str, tuple, str | None]]:
    """Every (PyTorch key, pixeltok path, transform) of a model of `depth` blocks in `layout`."""
    if layout not in LAYOUT_TABLES:
        raise ValueError(f"source {layout!r} is unknown; valid: {', '.join(SOURCES)}")
    prefix, top, block = LAYOUT_TABLES[layout]
    rows = list(top)
    for i in range(depth):
        rows += [(f"{prefix}.{i}.{key}", ("blocks", i) + path, kind) for key, path, kind in block]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# reading checkpoints
# ---------------------------------------------------------------------------------------------------------------

def read_checkpoint(path: str, *, trust_checkpoint: bool = False, ema: bool = False) -> dict[str, np.ndarray]:
    """A checkpoint file's state dict as {key: float32 numpy array}.

    `.safetensors`: read with safetensors' numpy API. Anything else is a PyTorch pickle (`.pth`, `.pt`, `.bin`):
    read with `torch.load(weights_only=True)` (only `argparse.Namespace` allow-listed), or fully unpickled when
    `trust_checkpoint` (runs the file's code). The state dict is the file itself when it maps names to tensors,
    else its "model" (or "state_dict", or "model_ema") entry; `ema=True` takes "model_ema". A "module." prefix
    (DistributedDataParallel, timm's ModelEma) is stripped.

    Raises:
      ValueError: a missing/unreadable file, a refused pickle global (named), no state dict inside.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            raw = load_file(path)
        except Exception as e:                      # noqa: BLE001 - any parse failure is bad input
            raise ValueError(f"checkpoint {path!r} is not a readable .safetensors file: {e}") from e
        return _clean_state_dict(raw, path)
    obj = _torch_load(path, trust_checkpoint)
    return _clean_state_dict(_select_state_dict(obj, path, ema), path)


def _torch_load(path: str, trust: bool) -> Any:
    try:
        import torch
    except ImportError as e:
        raise ValueError(f"reading {path!r} needs torch (pip install 'pixeltok[torch]'); .safetensors files need "
                         f"no torch") from e
    import pickle
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    # Name the offending global before unpickling anything (zip-format files; legacy files fall through to the
    # weights-only unpickler, which refuses at the first unknown global).
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:                               # noqa: BLE001 - not a zip checkpoint: let torch.load decide
        unsafe = []
    refused = [g for g in unsafe if g not in ALLOWED_GLOBALS]
    if refused:
        raise ValueError(_refusal(path, refused[0]))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise ValueError(_refusal(path, found.group(1))) from None
        raise ValueError(f"checkpoint {path!r} cannot be read safely: {str(e).splitlines()[0]}") from None
    except Exception as e:                          # noqa: BLE001 - truncated/corrupt files
        raise ValueError(f"checkpoint {path!r} is not a readable PyTorch file: {str(e).splitlines()[0]}") from None


def _refusal(path: str, name: str) -> str:
    return (f"checkpoint {path!r} needs the pickle global {name!r}, which could run arbitrary code; refused "
            f"(allowed: torch tensors and {', '.join(ALLOWED_GLOBALS)}). Pass trust_checkpoint=True / "
            f"--trust_checkpoint only for a file you trust")


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (str, bytes))


def _select_state_dict(obj: Any, path: str, ema: bool) -> Mapping:
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict")
    if ema:
        if "model_ema" not in obj or not isinstance(obj["model_ema"], Mapping):
            raise ValueError(f"checkpoint {path!r} has no 'model_ema' state dict (keys: {', '.join(map(str, obj))})")
        return obj["model_ema"]
    if obj and all(_is_tensor(v) for v in obj.values()):
        return obj
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping) and obj[key]:
            return obj[key]
    raise ValueError(f"checkpoint {path!r} holds no state dict: expected tensors or one of "
                     f"{', '.join(STATE_DICT_KEYS)} (found keys: {', '.join(map(str, list(obj)[:8]))})")


def _clean_state_dict(sd: Mapping, path: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in sd.items():
        key = str(key)
        if key.startswith("module."):
            key = key[len("module."):]
        if not _is_tensor(value):
            raise ValueError(f"checkpoint {path!r}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if hasattr(value, "detach"):               # a torch tensor (any float dtype, e.g. bf16) -> float32 numpy
            import torch
            value = value.detach().to("cpu", torch.float32).numpy()
        out[key] = np.asarray(value, np.float32)
    return out


# ---------------------------------------------------------------------------------------------------------------
# inferring the architecture and mapping the tensors
# ---------------------------------------------------------------------------------------------------------------

def _need(sd: Mapping, key: str, source: str) -> np.ndarray:
    if key not in sd:
        raise ValueError(f"checkpoint lacks {key!r}, which every {_source_name(source)} checkpoint has"
                         + _wrong_source_hint(sd, source))
    return sd[key]


def _source_name(source: str) -> str:
    return "official Adventurer" if source == "adventurer" else "timm ViT"


def _wrong_source_hint(sd: Mapping, source: str) -> str:
    other = "timm" if source == "adventurer" else "adventurer"
    prefix = LAYOUT_TABLES[other][0]
    if any(k.startswith(prefix + ".0.") for k in sd) and not any(k.startswith(LAYOUT_TABLES[source][0] + ".0.")
                                                                   for k in sd):
        return f" (its keys look like source={other!r})"
    return ""


def _depth(sd: Mapping, prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd for m in [re.match(rf"^{prefix}\.(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def infer_spec(sd: Mapping[str, np.ndarray], source: str) -> dict:
    """The pixeltok model a state dict describes: {model_name, patch_size, image_size, num_classes, num_channels,
    overrides}; from tensor shapes only (width from cls_token, depth from the block indices, patch size and
    channels from the patch-embed conv, resolution from the pos-embed length, classes from the head; Adventurer:
    d_state, expand and head_dim from the mixer; timm: the MLP ratio). ViT attention heads are not in the tensors:
    pixeltok's rule (head_dim 64 from width 192 on, the DeiT sizes) applies unless `head_dim=` is passed.
    Adventurer checkpoints get flip_rule="released_code" (see `load_pretrained`).
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is unknown; valid: {', '.join(SOURCES)}")
    prefix = LAYOUT_TABLES[source][0]
    cls = _need(sd, "cls_token", source)
    if cls.ndim != 3 or cls.shape[:2] != (1, 1):
        raise ValueError(f"tensor 'cls_token' has shape {cls.shape}; expected (1, 1, width)")
    width = int(cls.shape[2])
    pw = _need(sd, "patch_embed.proj.weight", source)
    if pw.ndim != 4 or pw.shape[0] != width or pw.shape[2] != pw.shape[3]:
        raise ValueError(f"tensor 'patch_embed.proj.weight' has shape {pw.shape}; expected ({width}, C, p, p)")
    channels, patch = int(pw.shape[1]), int(pw.shape[2])
    pe = _need(sd, "pos_embed", source)
    g = math.isqrt(max(pe.shape[1] - 1, 0)) if pe.ndim == 3 else 0
    if pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[2] != width or g < 1 or g * g != pe.shape[1] - 1:
        raise ValueError(f"tensor 'pos_embed' has shape {pe.shape}; expected (1, g*g + 1, {width}) (a square grid "
                         f"plus the cls row; pos-embeds without a cls row are not supported)")
    head = _need(sd, "head.weight", source)
    if head.ndim != 2 or head.shape[1] != width:
        raise ValueError(f"tensor 'head.weight' has shape {head.shape}; expected (num_classes, {width})")
    depth = _depth(sd, prefix)
    if depth == 0:
        raise ValueError(f"checkpoint has no '{prefix}.<i>.*' blocks" + _wrong_source_hint(sd, source))
    spec = {"patch_size": patch, "image_size": g * patch, "num_classes": int(head.shape[0]),
            "num_channels": channels}
    overrides = {"width": width, "depth": depth}
    if source == "adventurer":
        d_inner = int(_need(sd, "layers.0.mixer.norm.weight", source).shape[0])
        heads = int(_need(sd, "layers.0.mixer.A_log", source).shape[0])
        conv = _need(sd, "layers.0.mixer.conv1d.weight", source)
        if d_inner % width or d_inner % heads or conv.ndim != 3 or (conv.shape[0] - d_inner) % 2:
            raise ValueError(f"mixer tensors do not fit Mamba-2 with one group: d_inner {d_inner}, heads {heads}, "
                             f"conv1d {conv.shape}")
        overrides.update(d_state=(int(conv.shape[0]) - d_inner) // 2, expand=d_inner // width,
                         head_dim=d_inner // heads, flip_rule="released_code")
        spec["model_name"] = ADVENTURER_SIZES.get(width, "adventurer_tiny")
    else:
        hidden = int(_need(sd, "blocks.0.mlp.fc1.weight", source).shape[0])
        if hidden != 4 * width:
            overrides["mlp_ratio"] = hidden / width
        spec["model_name"] = VIT_SIZES.get(width, "vit_tiny")
    spec["overrides"] = overrides
    return spec


def map_to_pixeltok(sd: Mapping[str, np.ndarray], source: str, depth: int) -> dict[tuple, np.ndarray]:
    """Renames and transposes every tensor to its pixeltok path; both ways strict.

    Raises:
      ValueError: one line naming the first unknown key (known unsupported variants by name) or the first
        missing key.
    """
    rows = mapping_table(source, depth)
    by_key = {key: (path, kind) for key, path, kind in rows}
    for key in sd:
        if key in by_key:
            continue
        for pattern, what in UNSUPPORTED:
            if re.search(pattern, key):
                raise ValueError(f"checkpoint key {key!r}: {what} is not supported; pixeltok loads plain "
                                 f"{_source_name(source)} checkpoints")
        raise ValueError(f"unknown checkpoint key {key!r} for a {_source_name(source)} of depth {depth}"
                         + _wrong_source_hint(sd, source))
    for key, _, _ in rows:
        if key not in sd:
            raise ValueError(f"checkpoint lacks {key!r} (expected for a {_source_name(source)} of depth {depth})")
    return {path: np.ascontiguousarray(_transform(sd[key], kind)) for key, path, kind in rows}


def _flat_params(model_or_state) -> dict[tuple, Any]:
    from flax import nnx, traverse_util
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return traverse_util.flatten_dict(nnx.to_pure_dict(state))


def _abstract_params(spec: Mapping) -> dict[tuple, Any]:
    from flax import nnx

    from pixeltok.models import create_model
    return _flat_params(nnx.eval_shape(lambda: create_model(
        spec["model_name"], patch_size=spec["patch_size"], image_size=spec["image_size"],
        num_classes=spec["num_classes"], num_channels=spec["num_channels"], **spec["overrides"])))


def check_shapes(mapped: Mapping[tuple, np.ndarray], expected: Mapping[tuple, Any], source: str,
                 depth: int) -> None:
    """Both-ways check of converted tensors against a pixeltok model's parameters; names the PyTorch key."""
    from pixeltok.models.pretrained import path_str
    keys = {path: (key, kind) for key, path, kind in mapping_table(source, depth)}
    for path, leaf in expected.items():
        if path not in mapped:
            raise ValueError(f"pixeltok parameter {path_str(path)} has no checkpoint tensor (conversion table out "
                             f"of date with the model?)")
    for path, value in mapped.items():
        key, kind = keys[path]
        if path not in expected:
            raise ValueError(f"checkpoint key {key!r} maps to {path_str(path)}, which the inferred model lacks")
        want = tuple(expected[path].shape)
        if tuple(value.shape) != want:
            raise ValueError(f"tensor {key!r} has shape {tuple(_transform(value, kind, inverse=True).shape)} but "
                             f"the inferred model needs {_expected_shape_in_torch(want, kind)} "
                             f"(pixeltok {path_str(path)} {want})")


def convert_state_dict(sd: Mapping[str, np.ndarray], source: str = "adventurer", *, num_classes: int | None = None,
                       image_size: int | None = None, patch_size: int | None = None,
                       posemb_resize: str = "correct", **overrides) -> tuple[dict, dict, list[str]]:
    """A state dict -> (model spec, pixeltok params, notes), all checks done, nothing built or written.

    The spec is the checkpoint's own architecture with `num_classes` / `image_size` / `patch_size` / `overrides`
    applied; the params (flat path -> array) initialise it: equal shapes copied, the pos-embed resized for another
    image or patch size, the patch-embed kernel resized (FlexiViT) for another patch size, the head left out
    (fresh) for another class count. Notes say what was adapted.
    """
    from pixeltok.models import pretrained
    own = infer_spec(sd, source)
    depth = own["overrides"]["depth"]
    mapped = map_to_pixeltok(sd, source, depth)
    check_shapes(mapped, _abstract_params(own), source, depth)
    spec = {**own, "overrides": {**own["overrides"], **overrides}}
    for key, value in (("num_classes", num_classes), ("image_size", image_size), ("patch_size", patch_size)):
        if value is not None:
            if int(value) < 1:
                raise ValueError(f"{key}={value} must be >= 1")
            spec[key] = int(value)
    target = _abstract_params(spec)
    arch = "adventurer" if source == "adventurer" else "vit"
    params, notes = pretrained.adapt_params(mapped, target, arch=arch, posemb_resize=posemb_resize)
    return spec, params, notes


def build_model(spec: Mapping, params: Mapping[tuple, Any] | None = None, *, seed: int = 0):
    """Creates the pixeltok model of `spec` and overwrites its parameters with `params` (flat path -> array)."""
    import jax.numpy as jnp
    from flax import nnx, traverse_util

    from pixeltok.models import create_model
    model = create_model(spec["model_name"], patch_size=spec["patch_size"], image_size=spec["image_size"],
                         num_classes=spec["num_classes"], num_channels=spec["num_channels"], seed=seed,
                         **spec["overrides"])
    if params:
        state = nnx.state(model, nnx.Param)
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
        flat.update({path: jnp.asarray(value, flat[path].dtype) for path, value in params.items()})
        nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
        nnx.update(model, state)
    return model


def load_pretrained(path: str, source: str = "adventurer", *, num_classes: int | None = None,
                    image_size: int | None = None, patch_size: int | None = None, trust_checkpoint: bool = False,
                    ema: bool = False, posemb_resize: str = "correct", seed: int = 0, **overrides):
    """Builds a pixeltok model from an official Adventurer or a timm/DeiT ViT checkpoint.

    Args:
      path: `.pth` (a dict with "model" / "state_dict" / "model_ema", or a bare state dict; "module." stripped)
        or `.safetensors`.
      source: "adventurer" (the released Adventurer / Patch_Scaling layout) or "timm" (timm / DeiT ViT layout).
      num_classes: another class count: a freshly initialised head (seeded by `seed`).
      image_size: another resolution: the position embedding's grid is resized bicubically (cls row kept on its
        side: first for ViT, last for Adventurer; `posemb_resize="released_code"` for the released resize quirk).
      patch_size: another patch size: FlexiViT pseudo-inverse resize of the patch embedding (and a pos-embed
        resize for the new grid); the resolution stays the checkpoint's unless `image_size` is given.
      trust_checkpoint: fully unpickle a `.pth` that needs more than tensors and `argparse.Namespace`. This RUNS
        ANY CODE THE FILE CONTAINS; only for files you trust.
      ema: take the file's "model_ema" state dict.
      seed: init seed of the parameters not taken from the file (a new head).
      **overrides: `create_model` overrides on top of the inferred ones (e.g. dtype="bfloat16", remat=...,
        head_dim=... for a ViT whose heads are not width/64).

    Returns:
      The nnx model; `model(images_nhwc, train=False)` gives the logits.

    Architecture inferred from the tensors (`infer_spec`). Adventurer checkpoints are built with
    `flip_rule="released_code"`: the official forward calls `layer(x, flip=(i // 2 == 1))`, which reverses the
    patch order only in layers 2 and 3 (at every depth), while the paper and pixeltok's default ("alternate")
    flip every odd layer; the same weights give different outputs under "alternate", so the released numbers need
    "released_code" (override `flip_rule=` only to experiment).

    Raises:
      ValueError: one line for an unreadable/refused file, an unknown/missing key, an unsupported variant
        (distilled DeiT, LayerScale, ...), or a shape that does not fit.
    """
    sd = read_checkpoint(path, trust_checkpoint=trust_checkpoint, ema=ema)
    spec, params, _ = convert_state_dict(sd, source, num_classes=num_classes, image_size=image_size,
                                         patch_size=patch_size, posemb_resize=posemb_resize, **overrides)
    return build_model(spec, params, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------

def to_state_dict(model, layout: str | None = None, *, strict: bool = True) -> dict[str, np.ndarray]:
    """A pixeltok model's parameters as a PyTorch-layout state dict {key: float32 numpy array}.

    layout: "adventurer" (official Adventurer, for Adventurer models) or "timm" (for ViTs); None picks it from the
    model. strict: refuse an Adventurer whose flips differ from the official forward's (layers 2 and 3): its
    weights would compute something else there.
    """
    from pixeltok.models import Adventurer, ViT, flip_layers
    arch = "adventurer" if isinstance(model, Adventurer) else "timm" if isinstance(model, ViT) else None
    if arch is None:
        raise ValueError(f"cannot export a {type(model).__name__}; valid: pixeltok ViT or Adventurer models")
    layout = layout or arch
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; valid: {', '.join(LAYOUTS)}")
    if layout != arch:
        raise ValueError(f"layout {layout!r} does not fit a {type(model).__name__}; use layout={arch!r}")
    head_type = getattr(model, "head_type", "classification")
    if head_type != "classification":
        raise ValueError(f"head_type {head_type!r} has no layout in the original code; only classification "
                         f"models export")
    if strict and arch == "adventurer" and tuple(model.flips) != tuple(flip_layers("released_code", model.depth)):
        flipped = [i for i, f in enumerate(model.flips) if f]
        raise ValueError(f"this Adventurer flips layers {flipped}, the official code only layers 2 and 3 "
                         f"(flip_rule='released_code'); its outputs would differ there. Pass strict=False to export "
                         f"anyway")
    flat = _flat_params(model)
    rows = mapping_table(layout, model.depth)
    mapped_paths = {path for _, path, _ in rows}
    extra = sorted(set(flat) - mapped_paths, key=str)
    if extra:
        from pixeltok.models.pretrained import path_str
        raise ValueError(f"parameter {path_str(extra[0])} has no key in the {layout} layout")
    return {key: np.ascontiguousarray(_transform(np.asarray(flat[path], np.float32), kind, inverse=True))
            for key, path, kind in rows}


def export(model, path: str, layout: str | None = None, *, strict: bool = True) -> str:
    """Writes the model as a state dict the original code loads; returns the path written.

    `.pth` / `.pt`: `{"model": state_dict}` of torch tensors (needs torch), loadable by the official
    `model.load_state_dict(torch.load(path)["model"])`. `.safetensors`: the bare state dict (no torch needed).
    Any other name: `.pth` appended when torch is installed, else `.safetensors`. Written atomically.
    """
    sd = to_state_dict(model, layout, strict=strict)
    try:
        import torch
    except ImportError:
        torch = None
    if not path.endswith((".pth", ".pt", ".safetensors")):
        path += ".pth" if torch is not None else ".safetensors"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # torch names the archive's records after the file's stem, which must be a plain name (no leading dot).
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="pixeltok_export_tmp_", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import save_file
            save_file(sd, tmp)
        else:
            if torch is None:
                raise ValueError(f"writing {path!r} needs torch (pip install 'pixeltok[torch]'); export to a "
                                 f".safetensors path instead")
            torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ---------------------------------------------------------------------------------------------------------------
# CLI: a pixeltok workdir from a checkpoint
# ---------------------------------------------------------------------------------------------------------------

def workdir_config(spec: Mapping) -> dict:
    """The config.json record of a converted model: today's base config with the inferred model."""
    from pixeltok import config_utils
    config = config_utils.base_config()
    record = json.loads(config.to_json_best_effort())
    overrides = dict(spec["overrides"])
    record.update(model_name=spec["model_name"], patch_size=spec["patch_size"], image_size=spec["image_size"],
                  num_classes=spec["num_classes"], num_channels=spec["num_channels"])
    for key in ("dtype", "remat"):                 # top-level config keys, not model overrides
        if key in overrides:
            record[key] = overrides.pop(key)
    record["model"] = {**record.get("model", {}), **overrides}
    if spec["num_classes"] == 1000 and spec["num_channels"] == 3:
        # An ImageNet-1k model: evaluate as the official code does (bicubic resize to int(s / crop_ratio), center
        # crop, ImageNet mean/std; the README's crop rule), every image resized (none zero-padded), full JPEG decode.
        from pixeltok import recipes
        record.update(dataset="imagenet2012", train_split="train", eval_split="validation",
                      crop_ratio=recipes.eval_crop_ratio(spec["patch_size"], spec["image_size"]),
                      small_image_mode="resize", jpeg_draft=False)
    return record


def write_workdir(workdir: str, spec: Mapping, params: Mapping[tuple, Any], meta: Mapping[str, Any]) -> None:
    """Writes `config.json` and a params-only checkpoint into a NEW workdir, atomically (built in a sibling
    temporary directory and renamed into place, so a failure leaves nothing behind).

    Raises:
      ValueError: the workdir exists and is not empty.
    """
    from flax import traverse_util

    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise ValueError(f"workdir {workdir!r} already exists and is not empty; pick a new one")
    parent = os.path.dirname(workdir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(workdir)}.convert-")
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(workdir_config(spec), f, indent=2, sort_keys=True)
        from pixeltok import checkpoint as ckpt_lib
        model = {k: np.asarray(v, np.float32) for k, v in params.items()}
        # The trainer's layout: checkpoints/0/{state: {"model": params}, meta}.
        ckpt_lib.save_params(tmp, traverse_util.unflatten_dict(model), {"step": 0, **meta})
        if os.path.isdir(workdir):
            os.rmdir(workdir)                      # empty (checked above)
        os.replace(tmp, workdir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one `pixeltok: error:` line, exit 2 (as pixeltok.main)
        sys.stderr.write(f"pixeltok: error: {message}\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pixeltok.convert",
                description="Convert an official Adventurer or timm ViT checkpoint into a pixeltok workdir.")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--checkpoint", required=True, help=".pth or .safetensors file")
    p.add_argument("--workdir", required=True, help="new directory to write (config.json + checkpoints/)")
    p.add_argument("--num_classes", type=int, default=None, help="another class count: a fresh head")
    p.add_argument("--image_size", type=int, default=None, help="another resolution: resized pos-embed")
    p.add_argument("--patch_size", type=int, default=None, help="another patch size: FlexiViT patch-embed resize")
    p.add_argument("--posemb_resize", default="correct", choices=("correct", "released_code"))
    p.add_argument("--ema", action="store_true", help="take the file's model_ema state dict")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="fully unpickle a .pth that needs more than tensors (RUNS THE FILE'S CODE)")
    p.add_argument("--seed", type=int, default=0, help="init seed of a fresh head")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0, or 2 after one `pixeltok: error:` line)."""
    args = _parser().parse_args(argv)
    try:
        sd = read_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint, ema=args.ema)
        spec, params, notes = convert_state_dict(sd, args.source, num_classes=args.num_classes,
                                                 image_size=args.image_size, patch_size=args.patch_size,
                                                 posemb_resize=args.posemb_resize)
        if len(params) != len(_abstract_params(spec)):
            # A fresh head: materialise it from the model's own init so the checkpoint is complete.
            from pixeltok.models.pretrained import path_str
            model = build_model(spec, params, seed=args.seed)
            params = _flat_params(model)
            notes = notes + [f"initialised with seed {args.seed}: "
                             + ", ".join(path_str(p) for p in params if p[0] == "head")]
        meta = {"converted_from": os.path.abspath(args.checkpoint), "source": args.source, "notes": notes}
        write_workdir(args.workdir, spec, params, meta)
    except ValueError as e:
        sys.stderr.write(f"pixeltok: error: {' '.join(str(e).split())}\n")
        return 2
    summary = {"workdir": os.path.abspath(args.workdir), "model_name": spec["model_name"],
               "patch_size": spec["patch_size"], "image_size": spec["image_size"],
               "num_classes": spec["num_classes"], "num_channels": spec["num_channels"],
               "overrides": spec["overrides"], "notes": notes}
    for note in notes:
        print(f"pixeltok.convert: {note}")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
