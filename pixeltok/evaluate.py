"""Evaluate a run's checkpoint (or a converted model's workdir) on an eval split.

    python -m pixeltok.evaluate --workdir=runs/quickstart [--step=N|best|latest] [--config.KEY=VALUE ...]

The run's `config.json` gives the model, data set and task; `--config.KEY=VALUE` overrides any key, e.g.
`--config.dataset=imagefolder:/data/pets`, `--config.eval_split=train`, or `--config.image_size=64` (the position
embedding is resized from the trained grid). The task's metrics are printed, the last stdout line being one JSON
object such as `{"step": 500, "split": "test", "loss": 0.35, "accuracy": 0.875, ...}`, and written to
`<workdir>/eval/evaluate_<step>_<split>.json`. Bad input prints one `pixeltok: error:` line and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence

import jax
import ml_collections
from flax import nnx, traverse_util

from pixeltok import checkpoint as ckpt_lib
from pixeltok import config_utils
from pixeltok import metrics as metrics_lib
from pixeltok import tasks, train, warm_start
from pixeltok.models import pretrained


def evaluate_checkpoint(workdir: str, step: int | str | None = None,
                        config_overrides: Mapping[str, Any] | None = None) -> dict:
    """Restores a workdir's checkpoint (latest, a step number, or "best") and evaluates it.

    Args:
      workdir: a run directory written by `pixeltok.main` or `pixeltok.convert`.
      step: None or "latest", an int, or "best" (the best checkpoint by the task's metric).
      config_overrides: {dotted key: value} applied to the run's config, e.g. {"eval_split": "train"}. The mesh
        defaults to all local devices on the data axis.

    Returns:
      The task's metrics plus "step", "split", "num_examples" [and "ema_<metric>" when the run kept an EMA].

    Raises:
      train.ConfigError: bad overrides, data, or no such checkpoint.
    """
    config = config_utils.config_from_json(metrics_lib.read_config_json(workdir))
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.init_from = config.cooldown_from = ""
    for key, value in (config_overrides or {}).items():
        config_utils.set_dotted(config, key, value)
    plan = train.plan_run(config, train=False)
    try:
        ckpt_dir, ckpt_step = ckpt_lib.resolve_checkpoint(workdir, None if step == "latest" else step)
        saved = ckpt_lib.state_metadata(ckpt_dir, ckpt_step)
        saved_shapes = {name: traverse_util.flatten_dict(saved[name]) for name in ("model", "ema") if name in saved}
        pretrained.plan_adaptation(saved_shapes["model"], warm_start.model_params(plan.abstract_state),
                                   **warm_start.adaptation_args(plan))
    except (ValueError, KeyError) as e:
        raise train.ConfigError(f"workdir {workdir!r}: {str(e).splitlines()[0]}") from e
    with jax.set_mesh(plan.mesh):
        eval_fn = train.make_eval_step(plan)
        model_state = jax.tree.map(lambda x: x, plan.abstract_state["model_opt"][0])
        nnx.replace_by_pure_dict(model_state, traverse_util.unflatten_dict(
            warm_start.read_params(plan, ckpt_dir, ckpt_step, saved_shapes["model"])))
        scores, details = train.evaluate(plan, eval_fn, model_state)
        result = {"step": ckpt_step, "split": plan.config.eval_split, **scores}
        if "ema" in saved_shapes and "ema" in plan.abstract_state:
            ema = jax.tree.map(lambda x: x, plan.abstract_state["ema"])
            nnx.replace_by_pure_dict(ema, traverse_util.unflatten_dict(
                warm_start.read_params(plan, ckpt_dir, ckpt_step, saved_shapes["ema"], subtree="ema")))
            ema_scores, _ = train.evaluate(plan, eval_fn, model_state, ema)
            result.update({f"ema_{k}": ema_scores[k] for k in plan.task.metric_names})
    if details is not None:
        result["details"] = details
    return result


def parse_overrides(args: Sequence[str], config: ml_collections.ConfigDict) -> dict:
    """`--config.a.b=v` tokens typed by the current value of `a.b` in `config` (ValueError for unknown keys)."""
    overrides = {}
    for arg in args:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ValueError(f"unexpected argument {arg!r}; valid: --workdir=W, --step=N|best|latest, "
                             "--config.KEY=VALUE")
        key, value = arg[len("--config."):].split("=", 1)
        node = config
        try:
            for part in key.split("."):
                node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ValueError(f"unknown config key {key!r} (--config.{key}); see pixeltok/config_utils.py") from None
        overrides[key] = config_utils.typed_value(key, value, node)
    return overrides


def main(argv: Sequence[str]) -> int:
    """CLI; returns the exit code (2 for bad input, printed as one line)."""
    from absl import logging
    logging.set_verbosity(logging.ERROR)     # Orbax's read-only-manager notices are not for the user
    workdir, step, rest = None, None, []
    for arg in argv:
        if arg.startswith("--workdir="):
            workdir = arg.split("=", 1)[1]
        elif arg.startswith("--step="):
            step = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    try:
        if not workdir:
            raise ValueError("--workdir is required, e.g. --workdir=runs/quickstart")
        try:
            base = config_utils.config_from_json(metrics_lib.read_config_json(workdir))
        except FileNotFoundError:
            raise ValueError(f"workdir {workdir!r} has no config.json (not a pixeltok run or converted model)")
        if step is not None and step not in ("best", "latest") and not step.isdigit():
            raise ValueError(f"--step={step!r} is not valid; use a step number, best or latest")
        result = evaluate_checkpoint(workdir, int(step) if step and step.isdigit() else step,
                                     parse_overrides(rest, base))
    except (ValueError, train.ConfigError) as e:
        sys.stderr.write(f"pixeltok: error: {str(e).splitlines()[0]}\n")
        return 2
    details = result.pop("details", None)
    split = str(result["split"]).replace("/", "_")
    if jax.process_index() == 0:
        metrics_lib.write_eval_details(workdir, result["step"], {**result, **({"details": details} if details else {})},
                                       name=f"evaluate_{result['step']}_{split}")
        task = tasks.get_task(base.task)
        print(f"step {result['step']} on {result['split']}: {task.describe(result)} "
              f"({result['num_examples']} examples)")
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
