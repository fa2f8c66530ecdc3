"""Command line entry point (docs/architecture.md).

    python -m pixeltok.main --config=configs/adventurer_base.py:p1 --workdir=runs/advb_p1 [--config.KEY=VALUE ...]

Re-running the same command on the same workdir resumes it. Bad input (unknown config file, key or argument token,
patch size not dividing the image size, missing data, class/channel mismatch, a batch that does not split over the
devices, unknown model) prints ONE line `pixeltok: error: ...` on stderr and exits with code 2, leaving an existing
workdir untouched. A diverged run (non-finite loss) exits with code 1 after the same one-line report.
SIGTERM/SIGINT: the run saves a checkpoint after the current step and exits with 128 + signal (143 / 130).
"""

from __future__ import annotations

import faulthandler
import glob
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/quickstart.py", "Config file and argument, e.g. configs/adventurer_base.py:p4,res=64.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; re-running resumes it).")

USAGE_ERROR = 2
RUN_ERROR = 1


def _die(msg: str, code: int = USAGE_ERROR) -> None:
    """Prints `pixeltok: error: <one line>` to stderr and exits; never a traceback."""
    sys.stderr.write(f"pixeltok: error: {_one_line(msg)}\n")
    sys.stderr.flush()
    sys.exit(code)


def _one_line(msg: str) -> str:
    """The most specific line of a (possibly traceback-carrying) message, without the exception class prefix."""
    lines = [ln.strip() for ln in str(msg).strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    line = lines[-1] if len(lines) > 1 and re.match(r"^\w+(\.\w+)*(Error|Exception):", lines[-1]) else lines[0]
    return re.sub(r"^(\w+\.)*\w*(Error|Exception): ", "", line)


def _config_arg(argv: list[str]) -> str | None:
    """The value of --config in argv (last one wins, as in absl), or None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _available_configs(path: str) -> str:
    folder = os.path.dirname(path) or "configs"
    names = sorted(glob.glob(os.path.join(folder, "*.py")))
    names = [n for n in names if not os.path.basename(n).startswith("_")]
    return ", ".join(names) if names else f"(no .py files in {folder!r})"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with every failure turned into one `pixeltok: error:` line and exit code 2."""
    spec = _config_arg(argv[1:])
    if spec is not None:
        path = spec.split(":", 1)[0]
        if not os.path.isfile(path):
            _die(f"config file {path!r} not found; available: {_available_configs(path)}")
    try:
        rest = flags.FLAGS(argv)
        config = _CONFIG.value
        config.get("model_name")      # config_flags defers load errors until first access
    except flags.UnrecognizedFlagError as e:
        name = getattr(e, "flagname", None) or str(e)
        if str(name).startswith("config."):
            key = name[len("config."):]
            _die(f"unknown config key {key!r} (--config.{key}); see the config file and pixeltok/config_utils.py "
                 "for valid keys")
        _die(f"unknown flag --{name}; valid: --config, --workdir, --config.KEY=VALUE")
    except (KeyError, AttributeError) as e:   # config_flags: `--config.a.b=v`, `b` not a key of the locked config
        key = str(e).strip("'\"")
        given = [a.split("=", 1)[0][2:] for a in argv[1:] if a.startswith("--config.")]
        match = [g for g in given if g.split(".")[-1] == key] or [f"config.{key}"]
        _die(f"unknown config key {match[0][len('config.'):]!r} (--{match[0]}=...); see the config file and "
             "pixeltok/config_utils.py for valid keys")
    except Exception as e:  # noqa: BLE001 - every parse failure becomes one line
        _die(str(e))
    if not _WORKDIR.value:
        _die("--workdir is required, e.g. --workdir=runs/quickstart")
    if len(rest) > 1:
        _die(f"unexpected positional arguments {rest[1:]}; use --config.KEY=VALUE for overrides")
    return rest


def main(argv: list[str]) -> None:
    del argv
    # `kill -USR1 <pid>` prints every thread's Python stack: the first tool for a run that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)    # keep Orbax/TFDS INFO chatter off the console
    from pixeltok import distributed, train   # after flag parsing: keeps `--help` and bad flags fast
    distributed.maybe_initialize()
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.ConfigError as e:
        _die(str(e), USAGE_ERROR)
    except (train.TrainingDivergedError, train.ckpt_lib.CheckpointError) as e:
        _die(str(e), RUN_ERROR)
    if result.get("preempted"):
        sys.exit(128 + int(result.get("signal", 15)))


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
