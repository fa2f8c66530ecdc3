"""Config helpers: the `p4,res=64` argument grammar and the one base config every config file extends.

Config files live in `configs/` and expose `get_config(arg)`; `--config=configs/x.py:p4,res=64` passes `"p4,res=64"`.
Grammar (comma list): a bare `pN` sets the patch size, `key=value` is typed by the default, a bare name is boolean
True (`p1,runlocal`). Unknown keys raise, so a typo never becomes a silently ignored option.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

# The keys users set from the command line (docs/architecture.md) plus what the trainer, data pipeline and
# sharding read. Every key exists in the base config so that a locked config rejects typos and
# `--config.KEY=VALUE` works for all of them.


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config argument string into a typed ConfigDict.

    Args:
      arg: the text after `:` in `--config=file.py:arg`, e.g. `"p4,res=64,runlocal"`; None or "" for defaults.
      **defaults: allowed keys and their default values; a value's type types the parsed string. `patch` receives
        a bare `pN` token.

    Returns:
      A ConfigDict with every default key, overridden by the argument.

    Raises:
      ValueError: unknown key or a value that cannot be parsed as its default's type.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for token in (t.strip() for t in arg.split(",")):
        if not token:
            continue
        if "=" in token:
            key, value = (s.strip() for s in token.split("=", 1))
        elif token[0] == "p" and token[1:].isdigit() and "patch" in defaults:
            key, value = "patch", token[1:]
        else:
            key, value = token, "True"
        if key not in defaults:
            valid = ", ".join(sorted(defaults))
            raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid: pN, {valid}")
        out[key] = typed_value(key, value, defaults[key])
    return out


def typed_value(key: str, value: str, default):
    """Converts `value` to the type of `default` (bool accepts true/false/1/0)."""
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError
            return low in ("true", "1")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(
            f"config argument {key}={value!r} is not a valid {type(default).__name__}") from None
    return value


def sibling_config(this_file: str, name: str):
    """The config module `name` (e.g. "adventurer_base") next to `this_file`, loaded by path: how one config file
    builds on another (config files are loaded by path, not imported as a package)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"pixeltok_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_config() -> ml_collections.ConfigDict:
    """The defaults shared by every config file (the paper's Adventurer stage-1 recipe where it has one)."""
    c = ml_collections.ConfigDict()
    # --- task (pixeltok/tasks/): what is learned and how it is scored
    c.task = "classification"

    # --- model (docs/models.md). `model` holds architecture overrides passed to create_model(**overrides).
    c.model_name = "adventurer_tiny"
    c.patch_size = 16
    c.image_size = 224
    c.model = ml_collections.ConfigDict({
        "drop_path": 0.0,
        "flip_rule": "alternate",           # "alternate" | "released_code" (docs/models.md)
        "drop_path_schedule": "released_code",
        "chunk_size": 128,
    })
    c.dtype = "float32"                      # compute dtype; params and residual stream stay float32
    c.remat = ""                             # "" (none) or a jax.checkpoint_policies name, e.g. "nothing_saveable"

    # --- data
    c.dataset = "fashion_mnist"              # fashion_mnist | imagenet2012 | imagefolder:<root>
    c.data_dir = "data/tfds"                 # prepared TFDS/ArrayRecord data lives here
    c.fashion_mnist_dir = "/usr/share/datasets/fashion-mnist"
    c.num_classes = -1                       # -1: take it from the data set
    c.num_channels = -1                      # -1: take it from the data set
    c.train_split = "train"
    c.eval_split = "test"
    c.max_train_examples = -1                # -1: all; else a fixed prefix of the train split (sweeps on subsets)
    c.rrc_scale_min = 0.08                   # RandomResizedCrop scale range (min, 1.0)
    c.hflip = True
    c.three_augment = False                  # DeiT-III 3-Augment (paper stages 1-2)
    c.color_jitter = 0.3
    c.crop_ratio = 0.875                     # eval: resize to int(s / crop_ratio), center-crop s
    c.mixup_alpha = 0.0                      # paper: 0.8 (on for ImageNet configs)
    c.cutmix_alpha = 0.0                     # paper: 1.0
    c.mix_switch_prob = 0.5
    c.label_smoothing = 0.0
    c.num_workers = 0                        # grain worker processes (0: in-process threads)
    c.prefetch = 2
    c.train_augment = "rrc"                  # rrc (paper) | pad_crop (small-image recipe) | none (= eval transform)
    c.small_image_mode = "pad"               # native <= image_size: "pad" zero-pads (28 -> 32: 2 px/side) | "resize"
    c.mix_prob = 1.0                         # probability that a batch is mixed when mixup/cutmix are on (timm prob)
    c.data_threads = 2                       # grain reader threads when num_workers == 0
    c.data_cache = "auto"                    # auto: keep fixed-shape splits <= 2 GiB decoded in memory | off
    c.jpeg_draft = True                      # let the JPEG decoder downscale (DCT 1/2..1/8) when the crop allows it

    # --- optimisation (the paper's recipe, docs/paper_targets.md)
    c.batch_size = 128                       # global
    c.eval_batch_size = 256
    c.total_steps = -1                       # overrides num_epochs when > 0
    c.num_epochs = 300.0
    c.warmup_steps = -1                      # overrides warmup_epochs when >= 0
    c.warmup_epochs = 5.0
    c.lr = 5e-4                              # base lr, scaled by batch_size / lr_scale_batch
    c.lr_scale_batch = 512                   # <= 0 disables scaling ("unscale-lr")
    c.warmup_init_lr = 1e-6
    c.end_lr = 1e-5
    c.wd = 0.05
    c.b1 = 0.9
    c.b2 = 0.999
    c.grad_clip_norm = 0.0                   # 0: off (the paper's recipe has no clipping)
    c.accum_steps = 1
    c.ema_decay = 0.0                        # 0: off; paper keeps an EMA (0.99996) but reports the raw model
    c.seed = 0

    # --- schedule (WSD)
    c.schedule = "cosine"                    # cosine | wsd (warmup-stable-decay; pixeltok.optim.make_schedule)
    c.wsd_decay_fraction = 0.2               # wsd: cooldown = round(fraction * total_steps) last steps
    c.wsd_decay_shape = "linear"             # wsd cooldown shape: linear | sqrt (1 - sqrt t) | cosine

    # --- loop, checkpoints, logging
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.init_from = ""                         # another run's workdir or checkpoint dir (multi-stage recipes)
    c.posemb_resize = "correct"              # init_from at another resolution: correct | released_code (docs/models.md)
    c.eval_schedule = ""                     # "": every eval_every_steps | "log:N[+cooldown:K]" (config_utils.eval_steps)
    c.checkpoint_steps = ""                  # comma list of extra steps to checkpoint and keep (cooldown branch points)
    c.cooldown_from = ""                     # "<workdir>:<step>": continue that run's state with this run's schedule
    c.stop_at_step = -1                      # >0: checkpoint and stop after this step, schedule unchanged (resume later)
    c.eval_max_batches = -1                  # >=0: evaluate only the first N eval batches (quick tests); -1: all

    # --- segmentation (task="segmentation"; pixeltok/tasks/segmentation.py, pixeltok/data/segmentation.py)
    c.seg_head = "linear"                    # linear: Linear(d, K) per token + bilinear upsampling | pixel_shuffle
    c.ignore_label = 255                     # label of unlabelled / padded pixels (excluded from loss and metrics)
    c.seg_reduce_zero_label = True           # segfolder: raw 0 ignored, raw k -> class k-1 (ADE20k); False: k -> k
    c.seg_scale_min = 1.0                    # train scale jitter r ~ U[min, max] on a short side of image_size
    c.seg_scale_max = 1.0
    c.seg_cat_max_ratio = 1.0                # random crop retries (<= 10) while one class covers >= this share
    c.seg_eval_canvas = 0                    # eval canvas side; 0: image_size (whole image), > image_size: sliding
    c.seg_eval_stride = 0                    # sliding-window stride; 0: 2/3 of image_size

    # --- devices (issue: scale-out). -1 = all remaining devices.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "seq": 1})   # seq: docs/sharding.md
    c.sharding_rules = ""                    # "" = default rules; see pixeltok.sharding
    return c


# ----------------------------------------------------------------------------------------------- derived values
# Keys that `config.json` adds to the config (run facts); stripped again when a config is read back.
RUN_FACTS = ("num_devices", "num_processes", "mesh_requested", "num_params", "num_params_non_embedding",
             "tokens_per_image", "train_flops_per_image", "steps_per_epoch", "num_train_examples", "jax_version")


def check_loop_keys(config) -> None:
    """Batch, accumulation, logging and dtype settings (ValueError naming the key and what is valid)."""
    if config.batch_size <= 0:
        raise ValueError(f"batch_size={config.batch_size} must be positive")
    if config.accum_steps < 1 or config.batch_size % config.accum_steps:
        raise ValueError(f"accum_steps={config.accum_steps} must be >= 1 and divide batch_size={config.batch_size}")
    if config.log_every_steps <= 0:
        raise ValueError(f"log_every_steps={config.log_every_steps} must be positive")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype={config.dtype!r} is not supported; valid: float32, bfloat16")
    from pixeltok.models import MODELS
    if config.model_name not in MODELS:
        raise ValueError(f"unknown model_name {config.model_name!r}; valid: {', '.join(MODELS)}")
    int_list(config.checkpoint_steps)
    eval_steps(config, 1)


def resolve_steps(config, steps_per_epoch: float) -> tuple[int, int]:
    """(total_steps, warmup_steps): step counts win over epoch counts."""
    total = config.total_steps if config.total_steps > 0 else int(math.ceil(config.num_epochs * steps_per_epoch))
    warmup = config.warmup_steps if config.warmup_steps >= 0 else int(round(config.warmup_epochs * steps_per_epoch))
    if total <= 0:
        raise ValueError(f"total_steps resolves to {total} (total_steps={config.total_steps}, num_epochs="
                         f"{config.num_epochs}); set a positive --config.total_steps or num_epochs")
    return total, warmup


def every(step: int, interval: int) -> bool:
    """True on multiples of a positive interval (0 or less: never)."""
    return interval > 0 and step % interval == 0


def int_list(text: str) -> list[int]:
    """`"100,200"` -> [100, 200] ("" -> []); ValueError naming the bad token."""
    out = []
    for token in (t.strip() for t in str(text or "").split(",")):
        if token:
            if not token.isdigit() or int(token) <= 0:
                raise ValueError(f"{token!r} in {text!r} is not a positive step number; use e.g. 1000,2000")
            out.append(int(token))
    return out


def eval_steps(config, total: int) -> frozenset[int]:
    """The steps that evaluate (always including the last step).

    `eval_schedule` is "" (every `eval_every_steps`) or "+"-joined terms:
      - `log:N`: N steps spaced geometrically from min(100, total) to total (learning curves on a log-compute axis);
      - `cooldown:K` (schedule="wsd" only): K steps evenly spaced over the WSD cooldown, its last step included. The
        loss falls fastest there, and a cooldown branch of a short budget has only those steps of its own.
    """
    schedule = str(config.get("eval_schedule", "") or "")
    if not schedule:
        every_n = config.eval_every_steps
        return frozenset([s for s in range(every_n, total + 1, every_n)] if every_n > 0 else []) | {total}
    points = {total}
    for term in schedule.split("+"):
        kind, _, count = term.strip().partition(":")
        if kind not in ("log", "cooldown") or not count.isdigit() or int(count) < (2 if kind == "log" else 1):
            raise ValueError(f"eval_schedule={schedule!r} is not valid; use '' (every eval_every_steps) or "
                             f"'+'-joined terms log:N (N >= 2) and cooldown:K (K >= 1), e.g. log:10+cooldown:8")
        n = int(count)
        if kind == "log":
            first = min(100, total)
            points |= {int(round(first * (total / first) ** (i / (n - 1)))) for i in range(n)}
        else:
            if config.get("schedule", "cosine") != "wsd":
                raise ValueError(f"eval_schedule={schedule!r}: cooldown:K needs schedule='wsd', "
                                 f"not {config.get('schedule', 'cosine')!r}")
            from pixeltok import optim        # optim imports jax; config_utils stays importable without it
            start = optim.wsd_decay_start(total, config.get("wsd_decay_fraction", 0.2))
            points |= {start + max(1, int(round(i * (total - start) / n))) for i in range(1, n + 1)}
    return frozenset(points)


def set_dotted(config, key: str, value) -> None:
    """`config["a.b.c"] = value` through nested ConfigDicts."""
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def config_from_json(record: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A run's config back from its `config.json` (run facts dropped), on top of today's base config so that keys
    added since the run was made get their defaults."""
    saved = {k: v for k, v in record.items() if k not in RUN_FACTS}
    config = base_config()
    try:
        with config.unlocked():
            for key, value in saved.items():
                config[key] = ml_collections.ConfigDict(value) if isinstance(value, Mapping) else value
    except TypeError:                     # a key whose type changed since: trust the file as it is
        config = ml_collections.ConfigDict(saved)
    return config
