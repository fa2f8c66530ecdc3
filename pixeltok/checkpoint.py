"""The one place that knows how pixeltok lays out checkpoints (Orbax `CheckpointManager` underneath).

Layout under the workdir:
  checkpoints/<step>/{state,data_iter,meta}   latest `keep` steps (plus any `keep_steps`): the train state as a pure
                                              dict {"model", "opt"[, "ema"]}, the grain iterator position, and JSON
                                              meta (step, best metric, last eval, train time)
  checkpoints_best/<step>/{state,meta}        the single best-by-the-task's-metric model ({"model"[, "ema"]})

The saved tree is a pure nested dict (`to_saved`), restorable without nnx and readable by other tools; `from_saved`
puts it back into the trainer's nnx state. A params-only checkpoint (`save_params`: `{"model": ...}` at step 0) is
what `pixeltok.convert` writes; `pixeltok.evaluate` and `init_from` read it like a run's.

Saves are asynchronous and atomic: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it on commit, so a
save killed halfway leaves a temporary directory that `latest_step()` ignores (and that is cleaned up on the next
start), never a half checkpoint that a resume would pick.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx, traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint import checkpoint_managers

CKPT_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
# A checkpoint that cannot be read is renamed `<step>` -> `<step>.unreadable` (kept for inspection, ignored by
# Orbax, which only lists all-digit step directories).
UNREADABLE_SUFFIX = ".unreadable"


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir can be read (one line naming the directory and what was tried)."""


def _options(keep: int, async_save: bool, keep_steps: Sequence[int] = ()) -> ocp.CheckpointManagerOptions:
    policy = checkpoint_managers.LatestN(keep)
    if keep_steps:   # e.g. the stable-phase steps that WSD cooldown branches start from
        policy = checkpoint_managers.AnyPreservationPolicy(
            [policy, checkpoint_managers.CustomSteps(sorted({int(s) for s in keep_steps}))])
    return ocp.CheckpointManagerOptions(preservation_policy=policy, create=True, cleanup_tmp_directories=True,
                                        enable_async_checkpointing=async_save)


# ------------------------------------------------------------------------------------------------ saved layout
def to_saved(state: Mapping[str, Any]) -> dict:
    """Train state {"model_opt": (model state, optimizer state)[, "ema"]} -> the saved pure dict
    {"model", "opt"[, "ema"]}."""
    out = {"model": nnx.to_pure_dict(state["model_opt"][0]), "opt": nnx.to_pure_dict(state["model_opt"][1])}
    if "ema" in state:
        out["ema"] = nnx.to_pure_dict(state["ema"])
    return out


def from_saved(saved: Mapping[str, Any], template: Mapping[str, Any]) -> dict:
    """Inverse of `to_saved` onto the structure of `template` (an abstract train state)."""
    model_opt = jax.tree.map(lambda x: x, template["model_opt"])       # fresh Variables, same structure
    nnx.replace_by_pure_dict(model_opt[0], saved["model"])
    nnx.replace_by_pure_dict(model_opt[1], saved["opt"])
    out = {"model_opt": model_opt}
    if "ema" in template:
        ema = jax.tree.map(lambda x: x, template["ema"])
        nnx.replace_by_pure_dict(ema, saved["ema"])
        out["ema"] = ema
    return out


def donatable_copy(state: Any, shardings: Any) -> Any:
    """One jitted copy of restored arrays: buffers Orbax hands back cannot always be donated to the train step
    (they may alias host memory), so the first donated step would fail or copy anyway."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(state)


def has_checkpoint(workdir: str) -> bool:
    """True when `workdir/checkpoints` holds at least one committed step (read-only check, creates nothing)."""
    return latest_step(os.path.join(workdir, CKPT_DIR)) is not None


# Config keys whose change makes an existing checkpoint unusable (shapes differ); checked before resuming.
SHAPE_KEYS = ("model_name", "patch_size", "image_size", "num_classes", "num_channels", "model")


def check_same_shapes(config, workdir: str) -> None:
    """ValueError unless a workdir with checkpoints holds a run of the same shapes (or resuming would fail
    half-way); a workdir without checkpoints is always fine."""
    from pixeltok import metrics as metrics_lib
    if not has_checkpoint(workdir) or not os.path.exists(os.path.join(workdir, metrics_lib.CONFIG_FILE)):
        return
    old, new = metrics_lib.read_config_json(workdir), config.to_dict()
    for key in SHAPE_KEYS:
        if old.get(key) != new.get(key) and not (key in ("num_classes", "num_channels") and old.get(key) is None):
            raise ValueError(f"workdir {workdir!r} holds a run with {key}={old.get(key)!r} but this config has "
                             f"{key}={new.get(key)!r}; use another --workdir")


def latest_step(ckpt_dir: str) -> int | None:
    """The newest committed step in an Orbax checkpoint directory, or None; never creates the directory.

    Reads the directory listing instead of opening a CheckpointManager: a manager runs cross-process barriers, and
    this check runs before the processes agree on anything (process 0 may already have created the directory when
    process 1 looks), so a manager here made the two processes' barrier sequences differ ("sync_global_devices name
    mismatch"). Orbax names a step directory by its number only once the step is committed (in-flight saves carry
    an `.orbax-checkpoint-tmp` suffix).
    """
    path = epath.Path(ckpt_dir)
    if not path.is_dir():
        return None
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None


def abstract_of(tree) -> Any:
    """ShapeDtypeStructs (with shardings) for a pytree of arrays or ShapeDtypeStructs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Saves and restores the train state, data-iterator position and meta of one run.

    Args:
      workdir: run directory; `checkpoints/` and `checkpoints_best/` are created inside it.
      keep: how many of the latest step checkpoints to keep (older ones are deleted after a newer one commits).
      async_save: write in a background thread (Orbax default); the trainer calls `wait()` before exiting.
    """

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, keep_steps: Sequence[int] = ()):
        # Orbax's async commit threads reject relative paths ("Checkpoint path should be absolute"), and a relative
        # workdir is what users type (`make run` uses runs/quickstart): resolve it once here.
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
        self._options = _options(max(keep, 1), async_save, keep_steps)
        self._mngr = self._open()
        self._best = ocp.CheckpointManager(os.path.join(workdir, BEST_DIR), item_names=("state", "meta"),
                                           options=_options(1, async_save))

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(os.path.join(self.workdir, CKPT_DIR), item_names=("state", "data_iter", "meta"),
                                     options=self._options)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: Mapping[str, Any], data_iter, meta: Mapping[str, Any]) -> None:
        """Saves (asynchronously) the pure-dict train state, the grain iterator and JSON meta at `step`."""
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta))}
        # The two managers' async saves are serialised: run concurrently at the same step on several processes,
        # their commit barriers could interleave differently per process and hang (seen in the 2-process test).
        self._best.wait_until_finished()
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self._mngr.save(step, args=ocp.args.Composite(**args), force=True)

    def save_best(self, step: int, state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Replaces the best checkpoint with `state` (params [+ EMA]) at `step`."""
        self._mngr.wait_until_finished()          # see save(): never two managers committing at once
        self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(dict(meta))), force=True)

    def restore(self, step: int, abstract_state, data_iter=None) -> tuple[Any, dict]:
        """Restores the state into the shapes/shardings of `abstract_state` (and `data_iter` in place)."""
        return _restore_train_state(self._mngr, step, abstract_state, data_iter)

    def restore_newest_readable(self, abstract_state, data_iter=None,
                                log: Callable[[str], None] = print) -> tuple[int, Any, dict] | None:
        """Restores the newest checkpoint that reads back; None when there is none at all.

        A damaged checkpoint (a truncated data file after a full disk or a bad copy) is reported in one line and the
        next older one is tried, so a restart resumes from the last good state instead of ending in a storage-library
        traceback. Only once an older one has been read are the newer unreadable ones renamed `<step>.unreadable`
        (so the run can save those steps again); when none reads, nothing is renamed.

        Raises:
          CheckpointError: checkpoints exist but none is readable.
        """
        steps = sorted(self._mngr.all_steps(), reverse=True)
        unreadable = []
        for step in steps:
            try:
                saved, meta = self.restore(step, abstract_state, data_iter)
            except Exception as e:  # noqa: BLE001 - any read failure of this step means "try an older one"
                reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
                log(f"checkpoint {os.path.join(self.workdir, CKPT_DIR, str(step))} is unreadable "
                    f"({type(e).__name__}: {reason[:200]})")
                unreadable.append((step, f"{type(e).__name__}: {reason[:200]}"))
                continue
            for bad, _ in unreadable:
                log(f"moved unreadable checkpoint {bad} aside to {bad}{UNREADABLE_SUFFIX}; resuming from step {step}")
                self._set_aside(bad)
            return step, saved, meta
        if steps:
            raise CheckpointError(f"no readable checkpoint in {os.path.join(self.workdir, CKPT_DIR)} (tried steps "
                                  f"{', '.join(map(str, steps))}; newest: {unreadable[0][1]})")
        return None

    def _set_aside(self, step: int) -> None:
        """Renames a damaged step so that Orbax no longer lists it (and a later save of that step can commit)."""
        self._mngr.close()
        if jax.process_index() == 0:
            src = os.path.join(self.workdir, CKPT_DIR, str(step))
            os.replace(src, src + UNREADABLE_SUFFIX)
        self._mngr = self._open()

    def wait(self) -> None:
        """Blocks until pending async saves are committed; raises if one failed."""
        self._mngr.wait_until_finished()
        self._best.wait_until_finished()
        self._mngr.check_for_errors()
        self._best.check_for_errors()

    def close(self) -> None:
        self._mngr.close()
        self._best.close()


def resolve_checkpoint(path: str, step: int | str | None = None) -> tuple[str, int]:
    """Finds an Orbax checkpoint directory and step from a run workdir, a `checkpoints/` dir or a step dir.

    Args:
      path: `<workdir>`, `<workdir>/checkpoints`, `<workdir>/checkpoints_best` or `<workdir>/checkpoints/<step>`.
      step: a step number, "best", or None for the latest.

    Returns:
      (manager directory, step).

    Raises:
      ValueError: nothing committed there.
    """
    path = os.path.abspath(path)
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and step is None:
        return os.path.dirname(path), int(base)
    if os.path.isdir(os.path.join(path, CKPT_DIR)):
        path = os.path.join(path, BEST_DIR if step == "best" else CKPT_DIR)
    if step == "best":
        step = None
    steps = []
    if os.path.isdir(path):
        mngr = ocp.CheckpointManager(os.path.abspath(path), options=ocp.CheckpointManagerOptions(read_only=True))
        steps = list(mngr.all_steps())
        mngr.close()
    if not steps:
        raise ValueError(f"no committed checkpoint in {path!r}")
    if step is None:
        return path, max(steps)
    if int(step) not in steps:
        raise ValueError(f"checkpoint step {step} not in {path!r}; available: {sorted(steps)}")
    return path, int(step)


def state_metadata(ckpt_dir: str, step: int) -> Any:
    """The saved `state` tree's metadata (shapes and dtypes per leaf) without reading any array."""
    mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=ocp.CheckpointManagerOptions(read_only=True),
                                 item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
        tree = mngr.item_metadata(step)["state"]
        tree = tree.tree if hasattr(tree, "tree") else tree
        return nnx.restore_int_paths(tree)  # Orbax stores int keys (list indices) as strings
    finally:
        mngr.close()


def restore_subtree(ckpt_dir: str, step: int, target: Mapping[str, Any]) -> Any:
    """Restores only the parts of the saved `state` named by `target` (a pure-dict subtree of ShapeDtypeStructs
    with shardings), e.g. `{"model": ...}` to take a run's parameters without its optimizer state."""
    mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))
        return out["state"]
    finally:
        mngr.close()


def restore_state(ckpt_dir: str, step: int, abstract_state, data_iter=None) -> tuple[Any, dict]:
    """Reads another run's full train state (and data-iterator position, into `data_iter`) without opening its
    directory for writing: how a WSD cooldown branch starts from a stable-phase checkpoint of its parent run."""
    mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data_iter", "meta"),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        return _restore_train_state(mngr, step, abstract_state, data_iter)
    finally:
        mngr.close()


def _restore_train_state(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iter) -> tuple[Any, dict]:
    """(state, meta) of `step`, the grain iterator (if given) set to the saved position in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
        args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**args))
    return out["state"], dict(out["meta"])


def saved_param_shapes(path: str, subtree: str = "model") -> tuple[str, int, dict]:
    """(checkpoint dir, step, flat {param path: saved shape/dtype}) of a run or converted model's latest checkpoint,
    read from metadata only (no array is loaded). ValueError when there is none or it holds no `subtree`."""
    ckpt_dir, step = resolve_checkpoint(path)
    saved = state_metadata(ckpt_dir, step)
    if subtree not in saved:
        raise ValueError(f"{path!r} holds no {subtree} parameters")
    return ckpt_dir, step, traverse_util.flatten_dict(saved[subtree])


def read_params(ckpt_dir: str, step: int, saved_shapes: Mapping[tuple, Any], target: Mapping[tuple, Any],
                adapt: Callable, *, mesh, subtree: str = "model") -> tuple[dict, list[str]]:
    """Reads saved parameters and adapts them to `target` ({path: ShapeDtypeStruct with sharding}).

    Leaves already of the target's shape are read straight into their shards; the others (to be resized by `adapt`,
    e.g. `models.pretrained.adapt_params`) are read whole. Returns ({path: array on its shards}, adapt's notes).
    """
    replicated = NamedSharding(mesh, P())
    read_as = {path: target[path] if path in target and tuple(target[path].shape) == tuple(meta.shape)
               else jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=replicated)
               for path, meta in saved_shapes.items()}
    saved = restore_subtree(ckpt_dir, step, {subtree: traverse_util.unflatten_dict(read_as)})[subtree]
    params, notes = adapt(traverse_util.flatten_dict(saved), target)
    return {path: jax.device_put(jnp.asarray(v, target[path].dtype), target[path].sharding)
            for path, v in params.items()}, notes


def save_params(workdir: str, params: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                step: int = 0) -> None:
    """Writes a params-only checkpoint `checkpoints/<step>/{state: {"model": params}, meta}` (synchronously).

    `params` is the model's pure dict of parameters (`nnx.to_pure_dict(nnx.state(model, nnx.Param))`). The result is
    what `init_from` and `pixeltok.evaluate` read; it holds no optimizer state, so it cannot be resumed as a run.
    """
    mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CKPT_DIR), item_names=("state", "meta"),
                                 options=_options(1, async_save=False))
    try:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"model": dict(params)}),
                                                meta=ocp.args.JsonSave(dict(meta or {"step": step}))), force=True)
        mngr.wait_until_finished()
    finally:
        mngr.close()


def read_meta(ckpt_dir: str, step: int) -> dict:
    """The JSON meta saved with `step`."""
    mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("meta",),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    finally:
        mngr.close()
