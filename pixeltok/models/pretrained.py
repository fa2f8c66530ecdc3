"""Pretrained initialisation: saved parameters adapted to a model of another resolution, patch size or head.

One rule set serves every way weights enter a model: `init_from` between pixeltok runs (multi-stage recipes,
fine-tuning at another resolution or patch size) and converted PyTorch checkpoints (`pixeltok.convert`). Both work
on flat dicts keyed by the nnx pure-dict paths, e.g. `("blocks", 0, "mixer", "in_proj", "kernel")`:

    plan = plan_adaptation(saved_shapes, target, arch="adventurer")   # shapes only: check before writing anything
    params, notes = adapt_params(saved_arrays, target, arch="adventurer")

For every parameter of the target model:

| case | action |
|---|---|
| same shape | copied (cast to the target dtype) |
| `pos_embed` with another number of grid rows | bicubic resize of the grid (PyTorch's kernel), cls row kept on its layout's side (ViT first, Adventurer last); `posemb_resize="released_code"` reproduces the released resize's one-slot quirk |
| `patch_embed/kernel` at another patch size | FlexiViT pseudo-inverse resize: a patch upsampled bilinearly to the new size gives the same token |
| `head/*` of another shape or missing (class count, head type) | left out: keeps the target's fresh initialisation |
| anything else that differs, or is missing | `ValueError` naming the path and both shapes |

A saved parameter that the target does not have (outside `head/`) is also a `ValueError`: silently dropping weights
hides a wrong architecture. See docs/pretrained.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from pixeltok.ops.resize import POSEMB_RESIZE_METHODS, resize_patch_embed, resize_posemb

Path = tuple
ARCHS = ("vit", "adventurer")
ACTIONS = ("copy", "resize_posemb", "resize_patch_embed", "fresh")

POS_EMBED = ("pos_embed",)
PATCH_KERNEL = ("patch_embed", "kernel")


def path_str(path: Path) -> str:
    """('blocks', 0, 'mixer', 'D') -> 'blocks/0/mixer/D'."""
    return "/".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class Step:
    """What happens to one target parameter: `action` in ACTIONS, the saved and target shapes."""
    action: str
    saved_shape: tuple | None
    target_shape: tuple


@dataclasses.dataclass
class AdaptationPlan:
    """The outcome of `plan_adaptation`.

    Attributes:
      steps: target path -> Step, for every target parameter.
      notes: human-readable lines, e.g. "resized pos_embed 197->65 rows (14x14 -> 8x8 grid, cls last)".
    """
    steps: dict
    notes: list

    def load_shapes(self) -> dict:
        """Saved path -> saved shape for every parameter that must be read (all but the fresh ones): what a
        restore target needs (resized parameters are read at their saved shape)."""
        return {p: s.saved_shape for p, s in self.steps.items() if s.action != "fresh"}

    def fresh(self) -> list:
        """Target paths that keep their fresh initialisation."""
        return [p for p, s in self.steps.items() if s.action == "fresh"]


def _shape(x: Any) -> tuple:
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else x))


def _grid_side(rows: int) -> int | None:
    """g for a (1, g*g + 1, d) position embedding, else None."""
    g = math.isqrt(max(rows - 1, 0))
    return g if g >= 1 and g * g == rows - 1 else None


def plan_adaptation(saved_shapes: Mapping[Path, Any], target: Mapping[Path, Any], *, arch: str,
                    posemb_resize: str = "correct") -> AdaptationPlan:
    """Plans how saved parameters initialise a target model, from shapes only (no array is read).

    Args:
      saved_shapes: saved path -> shape (a tuple, or anything with `.shape`: arrays, ShapeDtypeStructs, Orbax
        metadata).
      target: target path -> anything with `.shape` (e.g. `jax.ShapeDtypeStruct`s of `nnx.eval_shape(...)`).
      arch: "vit" (cls row first in `pos_embed`) or "adventurer" (cls row last).
      posemb_resize: "correct" or "released_code" (see `pixeltok.ops.resize.resize_posemb`).

    Returns:
      The plan (per-path steps and notes).

    Raises:
      ValueError: one line naming the first parameter that is missing, unexpected or of an unusable shape.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is unknown; valid: {', '.join(ARCHS)}")
    if posemb_resize not in POSEMB_RESIZE_METHODS:
        raise ValueError(f"posemb_resize {posemb_resize!r} is unknown; valid: {', '.join(POSEMB_RESIZE_METHODS)}")
    saved = {tuple(p): _shape(s) for p, s in saved_shapes.items()}
    steps, fresh = {}, []
    for path, leaf in target.items():
        path, want = tuple(path), _shape(leaf)
        have = saved.get(path)
        if path[:1] == ("head",):
            if have == want:
                steps[path] = Step("copy", have, want)
            else:
                steps[path] = Step("fresh", have, want)
                fresh.append(f"{path_str(path)} {have if have is not None else 'absent'} -> {want}")
            continue
        if have is None:
            raise ValueError(f"parameter {path_str(path)} (shape {want}) is missing in the saved parameters")
        if have == want:
            steps[path] = Step("copy", have, want)
        elif path == POS_EMBED:
            steps[path] = Step("resize_posemb", have, want)
            _check_posemb(have, want)
        elif path == PATCH_KERNEL:
            steps[path] = Step("resize_patch_embed", have, want)
            _check_patch_kernel(have, want)
        else:
            raise ValueError(f"parameter {path_str(path)} has shape {have} in the saved parameters but {want} in "
                             f"the model")
    for path in saved:
        if path not in steps and path[:1] != ("head",):
            raise ValueError(f"saved parameter {path_str(path)} (shape {saved[path]}) has no counterpart in the "
                             f"model (another architecture or size?)")
    notes = []
    for path, step in steps.items():
        if step.action == "resize_posemb":
            g0, g1 = _grid_side(step.saved_shape[1]), _grid_side(step.target_shape[1])
            cls = "first" if arch == "vit" else "last"
            notes.append(f"resized pos_embed {step.saved_shape[1]}->{step.target_shape[1]} rows ({g0}x{g0} -> "
                         f"{g1}x{g1} grid, cls {cls}, {posemb_resize})")
        elif step.action == "resize_patch_embed":
            p0, p1 = step.saved_shape[0], step.target_shape[0]
            notes.append(f"resized patch_embed/kernel {p0}x{p0} -> {p1}x{p1} (FlexiViT pseudo-inverse"
                         f"{'' if p1 >= p0 else ', least squares'})")
    if fresh:
        notes.append("fresh head: " + ", ".join(fresh))
    return AdaptationPlan(steps=steps, notes=notes)


def _check_posemb(have: tuple, want: tuple) -> None:
    ok = (len(have) == len(want) == 3 and have[0] == want[0] == 1 and have[2] == want[2]
          and _grid_side(have[1]) and _grid_side(want[1]))
    if not ok:
        raise ValueError(f"parameter pos_embed has shape {have} in the saved parameters but {want} in the model; "
                         f"only the grid rows (1, g*g + 1, d) can be resized")


def _check_patch_kernel(have: tuple, want: tuple) -> None:
    ok = (len(have) == len(want) == 4 and have[0] == have[1] and want[0] == want[1] and have[2:] == want[2:])
    if not ok:
        raise ValueError(f"parameter patch_embed/kernel has shape {have} in the saved parameters but {want} in the "
                         f"model; only the patch size (p, p, C, d) can be resized (channels and width must agree)")


def adapt_params(saved: Mapping[Path, Any], target: Mapping[Path, Any], *, arch: str,
                 posemb_resize: str = "correct") -> tuple[dict, list[str]]:
    """Adapts saved parameter arrays to a target model (see the module docstring for the rules).

    Args:
      saved: saved path -> array (numpy or jax).
      target: target path -> anything with `.shape` and `.dtype` (ShapeDtypeStructs or arrays).
      arch, posemb_resize: as in `plan_adaptation`.

    Returns:
      (params, notes): params maps every target path that is initialised from `saved` to its array (copies keep
      the saved array object, cast to the target dtype if it differs; resized parameters are new jax arrays);
      paths planned "fresh" (a head of another shape) are absent, the caller keeps their initialisation.

    Raises:
      ValueError: as `plan_adaptation`.
    """
    plan = plan_adaptation({p: _shape(v) for p, v in saved.items()}, target, arch=arch,
                           posemb_resize=posemb_resize)
    layout = "vit" if arch == "vit" else "adventurer"
    out = {}
    for path, step in plan.steps.items():
        if step.action == "fresh":
            continue
        value, dtype = saved[path], target[path].dtype
        if step.action == "resize_posemb":
            grid = _grid_side(step.target_shape[1])
            value = resize_posemb(jnp.asarray(value, jnp.float32), grid, layout=layout, method=posemb_resize)
        elif step.action == "resize_patch_embed":
            value = resize_patch_embed(jnp.asarray(value, jnp.float32), step.target_shape[0])
        if np.dtype(value.dtype) != np.dtype(dtype):
            value = value.astype(dtype)
        out[path] = value
    return out, plan.notes
