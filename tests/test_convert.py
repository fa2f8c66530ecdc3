"""Tests for pixeltok.convert and pixeltok.models.pretrained.

References are independent of pixeltok: PyTorch modules in the original codes' layouts and key names
(tests/torch_reference: the official Adventurer with a plain sequential SSD, a timm-layout ViT), PyTorch's own
bicubic `F.interpolate` for position embeddings, and a float64 NumPy bilinear resize for the FlexiViT property.
Every reference tensor is randomly perturbed (zeros and ones hide mapping errors).
"""

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx, traverse_util

from pixeltok import convert
from pixeltok.models import create_model, pretrained
from torch_reference import perturb_
from torch_reference.adventurer import Adventurer as TorchAdventurer
from torch_reference.vit import VisionTransformer as TorchViT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# depth 4 so that the released flip rule (layers 2 and 3) is exercised; 16x16 images, p=4: 16 patches.
ADV = dict(img_size=16, patch_size=4, depth=4, embed_dim=64, channels=3, num_classes=10, d_state=16)
VIT = dict(img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=64, depth=2, num_heads=2)
_forward = nnx.jit(lambda model, x: model(x))


def _images(n=2, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, channels)).astype(np.float32)


def _torch_logits(ref, images):
    with torch.no_grad():
        return ref(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()


def _assert_rel(got, want, tol=1e-4):
    err = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
    assert err <= tol, f"max error {err:.2e} relative to max |logit| {np.abs(want).max():.3f}"


def _float_sd(ref):
    return {k: v.detach().to(torch.float32).clone() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def adv_files(tmp_path_factory):
    """An official-layout Adventurer: (torch model in float64, {'pth': path, 'safetensors': path})."""
    torch.manual_seed(0)
    ref = perturb_(TorchAdventurer(**ADV), seed=1).double().eval()
    d = tmp_path_factory.mktemp("adv")
    sd = _float_sd(ref)
    # What the official main.py saves: model + optimizer state + epoch + argparse args (+ EMA).
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 299, "model_ema": sd,
                "args": argparse.Namespace(model="adventurer_tiny_patch16", lr=5e-4, input_size=16)}, d / "a.pth")
    from safetensors.torch import save_file
    save_file(sd, str(d / "a.safetensors"))
    return ref, {"pth": str(d / "a.pth"), "safetensors": str(d / "a.safetensors")}


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb_(TorchViT(**VIT), seed=2).double().eval()
    d = tmp_path_factory.mktemp("vit")
    sd = _float_sd(ref)
    torch.save(sd, d / "v.pth")                                   # a bare state dict (timm's release format)
    from safetensors.torch import save_file
    save_file(sd, str(d / "v.safetensors"))
    return ref, {"pth": str(d / "v.pth"), "safetensors": str(d / "v.safetensors")}


# ---------------------------------------------------------------------------------------------------------------
# parity with the PyTorch references
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_adventurer_logits_match_official_layout(adv_files, fmt):
    ref, files = adv_files
    x = _images()
    # chunk_size 8: the 18-token sequence (16 patches + cls + heading) spans three SSD chunks.
    model = convert.load_pretrained(files[fmt], source="adventurer", chunk_size=8)
    assert model.flips == (False, False, True, True)               # flip_rule="released_code"
    _assert_rel(_forward(model, jnp.asarray(x)), _torch_logits(ref, x))
    if fmt == "pth":
        # The reference can tell the flip rules apart: the default rule gives other logits with the same weights.
        alt = convert.load_pretrained(files[fmt], source="adventurer", chunk_size=8, flip_rule="alternate")
        assert np.abs(np.asarray(_forward(alt, jnp.asarray(x))) - _torch_logits(ref, x)).max() > 1e-2


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vit_logits_match_timm_layout(vit_files, fmt):
    ref, files = vit_files
    x = _images()
    model = convert.load_pretrained(files[fmt], source="timm")
    _assert_rel(_forward(model, jnp.asarray(x)), _torch_logits(ref, x))


def test_infer_spec_from_tensors(adv_files, vit_files):
    adv = convert.infer_spec(convert.read_checkpoint(adv_files[1]["pth"]), "adventurer")
    assert adv == {"model_name": "adventurer_tiny", "patch_size": 4, "image_size": 16, "num_classes": 10,
                   "num_channels": 3, "overrides": {"width": 64, "depth": 4, "d_state": 16, "expand": 2,
                                                    "head_dim": 64, "flip_rule": "released_code"}}
    vit = convert.infer_spec(convert.read_checkpoint(vit_files[1]["safetensors"]), "timm")
    assert vit == {"model_name": "vit_tiny", "patch_size": 4, "image_size": 16, "num_classes": 10,
                   "num_channels": 3, "overrides": {"width": 64, "depth": 2}}


def test_export_round_trips_exactly(adv_files, vit_files, tmp_path):
    for (ref, files), source in ((adv_files, "adventurer"), (vit_files, "timm")):
        model = convert.load_pretrained(files["safetensors"], source=source)
        sd = _float_sd(ref)
        for name in ("out.pth", "out.safetensors"):
            path = convert.export(model, str(tmp_path / f"{source}_{name}"), layout=source)
            # What the original code would load: the same keys and values as the file we started from.
            if name.endswith(".pth"):
                back = torch.load(path, weights_only=True)["model"]
                ref_copy = (TorchAdventurer(**ADV) if source == "adventurer" else TorchViT(**VIT))
                ref_copy.load_state_dict(back, strict=True)
            else:
                from safetensors.torch import load_file
                back = load_file(path)
            assert set(back) == set(sd)
            for k in sd:
                assert torch.equal(back[k], sd[k]), k
            again = convert.load_pretrained(path, source=source)
            a = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
            b = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(again, nnx.Param)))
            assert set(a) == set(b)
            for k in a:
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


def test_export_from_a_pixeltok_model_and_refusals(tmp_path):
    model = create_model("adventurer_tiny", patch_size=4, image_size=16, num_classes=7, width=32, depth=4,
                         d_state=8, flip_rule="released_code", seed=3)
    path = convert.export(model, str(tmp_path / "m.safetensors"))
    again = convert.load_pretrained(path, source="adventurer")
    for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items():
        got = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(again, nnx.Param)))[k]
        np.testing.assert_array_equal(np.asarray(v), np.asarray(got))
    alternate = create_model("adventurer_tiny", patch_size=4, image_size=16, num_classes=7, width=32, depth=4,
                             d_state=8)
    with pytest.raises(ValueError, match=r"flips layers \[1, 3\].*strict=False"):
        convert.export(alternate, str(tmp_path / "alt.safetensors"))
    assert not os.path.exists(tmp_path / "alt.safetensors")
    assert convert.export(alternate, str(tmp_path / "alt.safetensors"), strict=False).endswith(".safetensors")
    with pytest.raises(ValueError, match="layout 'timm' does not fit a Adventurer"):
        convert.export(model, str(tmp_path / "x.pth"), layout="timm")


# ---------------------------------------------------------------------------------------------------------------
# overrides: new head, new resolution, new patch size
# ---------------------------------------------------------------------------------------------------------------

def _torch_posemb_resize(pe, new_grid, cls_first):
    """What DeiT/timm/Adventurer do: F.interpolate(bicubic, align_corners=False) on the grid rows."""
    pe = torch.from_numpy(np.asarray(pe, np.float64))
    cls, grid = (pe[:, :1], pe[:, 1:]) if cls_first else (pe[:, -1:], pe[:, :-1])
    g = int(round(grid.shape[1] ** 0.5))
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)
    return torch.cat([cls, grid] if cls_first else [grid, cls], 1).numpy()


def test_num_classes_and_image_size_overrides(adv_files, vit_files):
    for (ref, files), source, cls_first in ((adv_files, "adventurer", False), (vit_files, "timm", True)):
        sd = convert.read_checkpoint(files["pth"])
        spec, params, notes = convert.convert_state_dict(sd, source, num_classes=5, image_size=24)
        assert (spec["num_classes"], spec["image_size"]) == (5, 24)
        assert ("head", "kernel") not in params and ("head", "bias") not in params          # fresh head
        assert any(n.startswith("fresh head: head/") for n in notes)
        assert any(n.startswith("resized pos_embed 17->37 rows (4x4 -> 6x6 grid") for n in notes)
        np.testing.assert_allclose(params[("pos_embed",)], _torch_posemb_resize(sd["pos_embed"], 6, cls_first),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(params[("patch_embed", "kernel")],
                                      sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    model = convert.load_pretrained(adv_files[1]["pth"], num_classes=5, image_size=24, seed=1)
    assert model.head.kernel.shape == (64, 5) and model.pos_embed.shape == (1, 37, 64)


def test_patch_size_override_resizes_patch_embed(vit_files):
    sd = convert.read_checkpoint(vit_files[1]["pth"])
    spec, params, notes = convert.convert_state_dict(sd, "timm", patch_size=8)      # same 16 px: 2x2 grid
    assert (spec["patch_size"], spec["image_size"]) == (8, 16)
    assert params[("patch_embed", "kernel")].shape == (8, 8, 3, 64)
    assert params[("pos_embed",)].shape == (1, 5, 64)
    assert "resized patch_embed/kernel 4x4 -> 8x8 (FlexiViT pseudo-inverse)" in notes


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, naming the key
# ---------------------------------------------------------------------------------------------------------------

def _one_line_error(fn, *args, match, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_key_and_shape_errors(adv_files, vit_files):
    adv = convert.read_checkpoint(adv_files[1]["pth"])
    vit = convert.read_checkpoint(vit_files[1]["pth"])
    conv = convert.convert_state_dict
    missing = {k: v for k, v in adv.items() if k != "layers.3.mixer.D"}
    _one_line_error(conv, missing, "adventurer", match=r"lacks 'layers\.3\.mixer\.D'")
    _one_line_error(conv, {**adv, "layers.1.mixer.foo": np.ones(3)}, "adventurer",
                    match=r"unknown checkpoint key 'layers\.1\.mixer\.foo'")
    _one_line_error(conv, vit, "adventurer", match=r"look like source='timm'")
    _one_line_error(conv, {**vit, "dist_token": np.ones((1, 1, 64))}, "timm",
                    match=r"'dist_token': distilled DeiT .* not supported")
    _one_line_error(conv, {**vit, "head_dist.weight": np.ones((10, 64))}, "timm",
                    match=r"'head_dist\.weight': distilled DeiT")
    _one_line_error(conv, {**vit, "blocks.1.gamma_1": np.ones(64)}, "timm",
                    match=r"'blocks\.1\.gamma_1': LayerScale .* not supported")
    bad = dict(adv)
    bad["layers.1.mixer.in_proj.weight"] = bad["layers.1.mixer.in_proj.weight"][:-1]
    _one_line_error(conv, bad, "adventurer",
                    match=r"tensor 'layers\.1\.mixer\.in_proj\.weight' has shape \(289, 64\) but the inferred "
                          r"model needs \(290, 64\)")
    _one_line_error(conv, adv, "jax", match="source 'jax' is unknown")


def test_state_dict_containers(tmp_path, adv_files):
    sd = _float_sd(adv_files[0])
    torch.save({"model_ema": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1}, tmp_path / "ema.pth")
    out = convert.read_checkpoint(str(tmp_path / "ema.pth"))                        # only model_ema inside
    assert set(out) == set(sd)
    np.testing.assert_array_equal(out["pos_embed"], sd["pos_embed"].numpy())
    assert set(convert.read_checkpoint(adv_files[1]["pth"], ema=True)) == set(sd)
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    _one_line_error(convert.read_checkpoint, str(tmp_path / "empty.pth"), match="holds no state dict")
    _one_line_error(convert.read_checkpoint, str(tmp_path / "nope.pth"), match="does not exist")


class _WritesAFile:
    """Unpickling this runs exec(...), which writes a file: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def test_malicious_pickle_is_refused_without_trust(tmp_path, adv_files):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": _float_sd(adv_files[0]), "payload": _WritesAFile(str(target))}, path)
    msg = _one_line_error(convert.load_pretrained, str(path), match=r"needs the pickle global 'builtins\.exec'")
    assert "trust_checkpoint" in msg
    assert not target.exists()
    # The payload is real: trusting the file runs it.
    convert.read_checkpoint(str(path), trust_checkpoint=True)
    assert target.read_text() == "pwned"


# ---------------------------------------------------------------------------------------------------------------
# models/pretrained: plan + adapt
# ---------------------------------------------------------------------------------------------------------------

def _bilinear_matrix(n_in, n_out):
    """(n_out, n_in) 1-D bilinear interpolation, half-pixel centres, float64; upsampling (n_out >= n_in) clamps at
    the border, downsampling uses the triangle widened by n_in/n_out (antialiased, renormalised at the border)."""
    m = np.zeros((n_out, n_in))
    scale = n_out / n_in
    for i in range(n_out):
        c = (i + 0.5) / scale - 0.5
        if scale >= 1:
            c = min(max(c, 0.0), n_in - 1.0)
            j0 = int(np.floor(c))
            j1 = min(j0 + 1, n_in - 1)
            m[i, j0] += 1 - (c - j0)
            m[i, j1] += c - j0
        else:
            w = np.maximum(0.0, 1 - np.abs(np.arange(n_in) - c) * scale)
            m[i] = w / w.sum()
    return m


def _resize_patch_matrix(p_in, p_out):
    """B: (p_out², p_in²), the bilinear resize of a p_in x p_in patch (per channel)."""
    m = _bilinear_matrix(p_in, p_out)
    return np.kron(m, m)


def test_pi_resize_keeps_tokens_of_upsampled_patches():
    rng = np.random.default_rng(0)
    p, c, d = 4, 3, 6
    kernel = rng.normal(size=(p, p, c, d))
    patches = rng.normal(size=(10, p, p, c))
    for new in (4, 6, 8, 12):
        target = {pretrained.PATCH_KERNEL: jax.ShapeDtypeStruct((new, new, c, d), jnp.float32)}
        params, notes = pretrained.adapt_params({pretrained.PATCH_KERNEL: kernel.astype(np.float32)}, target,
                                                arch="vit")
        w_new = np.asarray(params[pretrained.PATCH_KERNEL], np.float64)
        b = _resize_patch_matrix(p, new)
        up = np.einsum("nk,bkc->bnc", b, patches.reshape(10, p * p, c)).reshape(10, new, new, c)
        # <x, w> == <Bx, w'>: the upsampled patch gives the original token.
        np.testing.assert_allclose(np.einsum("bhwc,hwcd->bd", up, w_new),
                                   np.einsum("bhwc,hwcd->bd", patches, kernel), rtol=1e-4, atol=1e-4)
        assert notes == ([] if new == p else [f"resized patch_embed/kernel 4x4 -> {new}x{new} (FlexiViT "
                                              f"pseudo-inverse)"])


def test_pi_resize_to_a_smaller_patch_is_least_squares():
    rng = np.random.default_rng(1)
    p, new, c, d = 8, 4, 2, 5
    kernel = rng.normal(size=(p, p, c, d))
    target = {pretrained.PATCH_KERNEL: jax.ShapeDtypeStruct((new, new, c, d), jnp.float32)}
    params, notes = pretrained.adapt_params({pretrained.PATCH_KERNEL: kernel.astype(np.float32)}, target,
                                            arch="adventurer")
    b = _resize_patch_matrix(p, new)                                          # (16, 64)
    want = np.linalg.lstsq(b.T, kernel.reshape(p * p, c * d), rcond=None)[0]  # min ||Bᵀ w' - w||
    np.testing.assert_allclose(np.asarray(params[pretrained.PATCH_KERNEL]).reshape(new * new, c * d), want,
                               rtol=1e-3, atol=1e-4)
    assert notes == ["resized patch_embed/kernel 8x8 -> 4x4 (FlexiViT pseudo-inverse, least squares)"]


def _sds(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_plan_adaptation_rules_and_errors():
    saved = {("pos_embed",): (1, 17, 8), ("blocks", 0, "w"): (8, 8), ("head", "kernel"): (8, 10),
             ("head", "bias"): (10,), ("patch_embed", "kernel"): (4, 4, 3, 8)}
    target = {("pos_embed",): _sds((1, 65, 8)), ("blocks", 0, "w"): _sds((8, 8)), ("head", "kernel"): _sds((8, 3)),
              ("head", "bias"): _sds((3,)), ("patch_embed", "kernel"): _sds((2, 2, 3, 8))}
    plan = pretrained.plan_adaptation(saved, target, arch="adventurer")
    assert {p: s.action for p, s in plan.steps.items()} == {
        ("pos_embed",): "resize_posemb", ("blocks", 0, "w"): "copy", ("head", "kernel"): "fresh",
        ("head", "bias"): "fresh", ("patch_embed", "kernel"): "resize_patch_embed"}
    assert plan.notes == ["resized pos_embed 17->65 rows (4x4 -> 8x8 grid, cls last, correct)",
                          "resized patch_embed/kernel 4x4 -> 2x2 (FlexiViT pseudo-inverse, least squares)",
                          "fresh head: head/kernel (8, 10) -> (8, 3), head/bias (10,) -> (3,)"]
    assert plan.load_shapes() == {("pos_embed",): (1, 17, 8), ("blocks", 0, "w"): (8, 8),
                                  ("patch_embed", "kernel"): (4, 4, 3, 8)}
    plan_fn = pretrained.plan_adaptation
    _one_line_error(plan_fn, {**saved, ("blocks", 0, "w"): (8, 9)}, target, arch="vit",
                    match=r"parameter blocks/0/w has shape \(8, 9\) in the saved parameters but \(8, 8\) in the model")
    _one_line_error(plan_fn, {k: v for k, v in saved.items() if k != ("blocks", 0, "w")}, target, arch="vit",
                    match=r"parameter blocks/0/w \(shape \(8, 8\)\) is missing")
    _one_line_error(plan_fn, {**saved, ("blocks", 1, "w"): (8, 8)}, target, arch="vit",
                    match=r"saved parameter blocks/1/w .* has no counterpart")
    _one_line_error(plan_fn, {**saved, ("patch_embed", "kernel"): (4, 4, 1, 8)}, target, arch="vit",
                    match=r"patch_embed/kernel has shape \(4, 4, 1, 8\).*channels and width must agree")
    _one_line_error(plan_fn, {**saved, ("pos_embed",): (1, 16, 8)}, target, arch="vit",
                    match=r"pos_embed has shape \(1, 16, 8\)")
    _one_line_error(plan_fn, saved, target, arch="vit", posemb_resize="nearest", match="posemb_resize 'nearest'")


def test_adapt_posemb_both_layouts_and_released_quirk():
    rng = np.random.default_rng(2)
    pe = rng.normal(size=(1, 17, 5)).astype(np.float32)
    target = {("pos_embed",): _sds((1, 37, 5))}
    for arch, cls_first in (("vit", True), ("adventurer", False)):
        out, _ = pretrained.adapt_params({("pos_embed",): pe}, target, arch=arch)
        np.testing.assert_allclose(out[("pos_embed",)], _torch_posemb_resize(pe, 6, cls_first), rtol=1e-5,
                                   atol=1e-6)
    # The released resize takes the FIRST row as the extra token whatever the layout (Adventurer's cls is last).
    out, notes = pretrained.adapt_params({("pos_embed",): pe}, target, arch="adventurer",
                                         posemb_resize="released_code")
    np.testing.assert_allclose(out[("pos_embed",)], _torch_posemb_resize(pe, 6, cls_first=True), rtol=1e-5,
                               atol=1e-6)
    assert notes == ["resized pos_embed 17->37 rows (4x4 -> 6x6 grid, cls last, released_code)"]


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------

def test_cli_bad_input_writes_nothing(tmp_path, capsys, adv_files):
    out = tmp_path / "out"
    assert convert.main(["--source=adventurer", f"--checkpoint={tmp_path / 'missing.pth'}",
                         f"--workdir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixeltok: error: checkpoint") and "does not exist" in err[0]
    assert not out.exists()
    assert convert.main(["--source=timm", f"--checkpoint={adv_files[1]['pth']}", f"--workdir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "look like source='adventurer'" in err[0]
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "convert" in p]
    with pytest.raises(SystemExit) as info:
        convert.main(["--source=keras", "--checkpoint=x", f"--workdir={out}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("pixeltok: error: argument --source")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert convert.main(["--source=adventurer", f"--checkpoint={adv_files[1]['pth']}", f"--workdir={out}"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]


def _run(args, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_workdir_evaluates_and_fine_tunes(tmp_path):
    """Official-layout checkpoint -> `pixeltok.convert` workdir -> `pixeltok.evaluate` gives the PyTorch
    reference's loss on the same Fashion-MNIST images -> `init_from` trains from it."""
    torch.manual_seed(0)
    # 1 channel, 28x28 images zero-padded to 32 (the quickstart data), p = 8; quickstart's d_state / head_dim.
    ref = perturb_(TorchAdventurer(img_size=32, patch_size=8, depth=2, embed_dim=64, channels=1, num_classes=10,
                                   d_state=64), seed=3, scale=0.2).double().eval()
    ckpt = tmp_path / "official.pth"
    torch.save({"model": _float_sd(ref), "args": argparse.Namespace(model="adventurer_tiny")}, ckpt)
    out = tmp_path / "converted"
    proc = _run(["-m", "pixeltok.convert", "--source=adventurer", f"--checkpoint={ckpt}", f"--workdir={out}"])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["overrides"]["flip_rule"] == "released_code" and summary["num_channels"] == 1
    config = json.loads((out / "config.json").read_text())
    assert (config["model_name"], config["patch_size"], config["image_size"]) == ("adventurer_tiny", 8, 32)
    assert config["model"]["width"] == 64 and config["model"]["depth"] == 2

    n = 64
    proc = _run(["-m", "pixeltok.evaluate", f"--workdir={out}", "--config.dataset=fashion_mnist",
                 f"--config.eval_batch_size={n}", "--config.eval_max_batches=1"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_examples"] == n
    # The reference on the same images: the first n test images, zero-padded 28 -> 32 (black pixels), then the
    # Fashion-MNIST mean/std.
    import gzip

    from pixeltok.data import sources
    with gzip.open(os.path.join("/usr/share/datasets/fashion-mnist", "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(os.path.join("/usr/share/datasets/fashion-mnist", "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    x = np.zeros((n, 32, 32, 1), np.float32)
    x[:, 2:30, 2:30, 0] = images / 255.0
    x = (x - sources.FASHION_MNIST_MEAN[0]) / sources.FASHION_MNIST_STD[0]
    logits = torch.from_numpy(_torch_logits(ref, x))
    want_loss = float(F.cross_entropy(logits, torch.from_numpy(labels)))
    want_acc = float((logits.argmax(-1).numpy() == labels).mean())
    np.testing.assert_allclose(result["loss"], want_loss, rtol=1e-4)
    assert result["accuracy"] == pytest.approx(want_acc)

    run = tmp_path / "finetune"
    _run(["-m", "pixeltok.main", "--config=configs/quickstart.py", f"--workdir={run}", f"--config.init_from={out}",
          "--config.model.width=64", "--config.model.depth=2", "--config.model.flip_rule=released_code",
          "--config.total_steps=2", "--config.warmup_steps=1", "--config.batch_size=16", "--config.lr=1e-6",
          "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2", f"--config.eval_batch_size={n}",
          "--config.eval_max_batches=1", "--config.log_every_steps=1"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2]
    # Two steps at lr 1e-6 barely move the weights: the run starts from the converted model, not a fresh init.
    np.testing.assert_allclose(evals[0]["loss"], result["loss"], rtol=1e-3)
