"""`make bench`: machine limits, SSD scan, model train steps and the PyTorch reference, measured in one run.

    .venv/bin/python -m benchmarks.run                   # full grid (~30–40 min on the 2-core development CPU)
    BENCH_QUICK=1 .venv/bin/python -m benchmarks.run     # development grid (a few minutes)

Writes `benchmarks/results/<machine>.json` (everything, including the machine description), `<machine>.md` (tables,
targets) and `<machine>_*.png` (plots). Environment knobs: BENCH_QUICK, BENCH_MACHINE (file-name slug),
BENCH_MEM_GIB (compiled-memory budget per configuration, default 10; 2 in quick mode), BENCH_TORCH_PYTHON
(interpreter of the PyTorch environment, default .venv-torch/bin/python; "" skips the reference),
BENCH_SECTIONS (comma list of scan, train, torch; default all), BENCH_DTYPE (pixeltok compute dtype of the
train grid, default bfloat16).

Every headline number is a ratio of two measurements from this run; the limits are measured at the start and the
end and the best of the two is the denominator. PyTorch runs in a subprocess right after the pixeltok measurement
of the same configuration, so both see the same machine state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax

from benchmarks import report
from benchmarks.common import QUICK, load_average, log, machine_info, machine_name, write_json
from benchmarks.limits import combine_limits, measure_limits
from benchmarks.scan import run_scan_bench
from benchmarks.train_step import reference_shape, run_train_bench

RESULTS_DIR = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   "results")
GPU = jax.default_backend() == "gpu"
# On a GPU machine the system python3 holds torch + timm; on CPU the reference has its own venv (make bench).
TORCH_PYTHON = os.environ.get("BENCH_TORCH_PYTHON", sys.executable if GPU else ".venv-torch/bin/python")
MEM_BUDGET = int(float(os.environ.get("BENCH_MEM_GIB", "40" if GPU else "2" if QUICK else "10")) * 2**30)
SECTIONS = set(os.environ.get("BENCH_SECTIONS", "scan,train,torch" + (",long" if GPU else "")).split(","))
DTYPE = os.environ.get("BENCH_DTYPE", "bfloat16")
# BENCH_MERGE=1: keep the rows of an existing <machine>.json that this run does not re-measure (a GPU lease runs
# the grid in separate calls of a few minutes each); a re-measured configuration replaces its old row.
MERGE = os.environ.get("BENCH_MERGE", "0") not in ("", "0")
# BENCH_TRAIN_PART (GPU grid): "tiny" (the token sweep) or "large" (Small/Base); default both.
TRAIN_PART = os.environ.get("BENCH_TRAIN_PART", "tiny,large")
ROW_KEYS = {"scan": ("impl", "length", "chunk", "pass", "batch"),
            "train": ("model", "patch", "image", "batch", "what"),
            "torch": ("model", "patch", "image", "batch"),
            "long": ("model", "patch", "image", "batch", "remat", "chunk_size")}


def merge_rows(section: str, old: list[dict], new: list[dict]) -> list[dict]:
    """Old rows whose configuration was not re-measured, then the new rows (new replaces old on equal keys)."""
    key = lambda r: tuple(str(r.get(k)) for k in ROW_KEYS[section])  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + list(new)


# ---------------------------------------------------------------------------------------------------------- grids
def _cfg(model, patch, image, batch, *, dtype=DTYPE, torch=False, fwd_bwd=False, run=True, **overrides):
    classes = 1000 if image >= 224 else 10
    return dict(model=model, patch=patch, image=image, batch=batch, classes=classes, torch=torch,
                fwd_bwd=fwd_bwd, run=run, overrides={"dtype": dtype, **overrides})


def train_grid(quick: bool) -> list[dict]:
    """Model configurations. `torch=True` adds the PyTorch reference and a pixeltok fwd+bwd-only measurement."""
    if quick:
        return [_cfg(m, p, s, b, torch=(p == 1)) for s, p, b in ((32, 4, 4), (32, 2, 4), (32, 1, 1))
                for m in ("vit_tiny", "adventurer_tiny")]
    grid = []
    # Token sweep of the tiny models: Adventurer vs ViT against tokens (the crossover). Batch 4 up to ~1k tokens,
    # batch 1 from ~3k, where a step takes seconds on 2 cores (and where, before chunked attention, ViT-T at
    # 4,097 × 4 compiled to 33 GiB of saved (B, h, L, L) probabilities; Adventurer-T × 4 compiles to ~9 GiB).
    for image, patch in ((32, 4), (32, 2), (224, 16), (224, 8), (32, 1), (224, 4), (64, 1)):
        batch = 1 if (image // patch) ** 2 >= 3000 else 4
        for m in ("vit_tiny", "adventurer_tiny"):
            grid.append(_cfg(m, patch, image, batch, torch=(image, patch) in ((32, 1), (64, 1))))
    # 16k tokens: Adventurer only (ViT-T would need ~8 TFLOP per image, minutes per step here). The 64², batch-1
    # row above is the 4k end of the 4k -> 16k memory growth.
    grid.append(_cfg("adventurer_tiny", 1, 128, 1, run=False))
    # Larger models at 224², p16, batch 8: the efficiency targets (ViT-B/16, Adventurer-B/16).
    for m in ("vit_small", "adventurer_small"):
        grid.append(_cfg(m, 16, 224, 8))
    for m in ("vit_base", "adventurer_base"):
        grid.append(_cfg(m, 16, 224, 8, torch=True))
    return grid


def gpu_batch(tokens: int, target: int = 65536, cap: int = 256) -> int:
    """Power-of-two batch near `target` tokens per step: enough work to fill a GPU at every patch size."""
    return int(max(1, min(cap, 2 ** round(math.log2(max(1.0, target / tokens))))))


def train_grid_gpu(quick: bool) -> list[dict]:
    """The GPU grid: the same token sweep with batches of ~64k tokens, Small/Base at p16 and p8, bf16 compute.

    Layers run as a `lax.scan` (`scan_layers=True`): one compiled block instead of twelve, which is what keeps
    compile time to seconds on a GPU; the step time is the same within noise (measured in the report).
    """
    sweep = ((32, 4), (32, 1), (64, 1)) if quick else \
        ((224, 16), (224, 8), (32, 1), (224, 4), (64, 1), (224, 2), (128, 1))
    torch_at = {(64, 1), (128, 1)}
    grid = []
    models = os.environ.get("BENCH_TINY_MODELS", "vit_tiny,adventurer_tiny").split(",")
    if os.environ.get("BENCH_SWEEP"):  # e.g. "64:1,128:1" (image:patch): a subset of the sweep
        sweep = tuple(tuple(int(v) for v in x.split(":")) for x in os.environ["BENCH_SWEEP"].split(","))
    for image, patch in sweep if "tiny" in TRAIN_PART else ():
        batch = gpu_batch((image // patch) ** 2)
        for m in models:
            # Adventurer at ~64k tokens per step needs per-layer remat on an 80 GB GPU (47 GiB compiled without)
            extra = {"remat": "nothing_saveable"} if m.startswith("adventurer") else {}
            grid.append(_cfg(m, patch, image, batch, torch=(image, patch) in torch_at, scan_layers=True, **extra))
    if quick:
        return grid
    if "tiny" in TRAIN_PART:  # compile-only memory rows for the 4k -> 16k growth target (batch 1, as on CPU)
        for image in (64, 128):
            grid.append(_cfg("adventurer_tiny", 1, image, 1, run=False, scan_layers=True))
    if "large" not in TRAIN_PART:
        return grid
    for m in ("vit_small", "adventurer_small", "vit_base", "adventurer_base"):
        grid.append(_cfg(m, 16, 224, 64, torch=m.endswith("base"), scan_layers=True))
    for m in ("vit_base", "adventurer_base"):
        grid.append(_cfg(m, 8, 224, 16, scan_layers=True))
    return grid


# The long-sequence steps the issue asks for on a GPU (each in a fresh process for a clean peak-memory reading).
LONG_STEPS_GPU = [dict(model="adventurer_base", patch=1, image=224, batch=1, remat="nothing_saveable"),
                  dict(model="adventurer_base", patch=1, image=224, batch=1, remat="nothing_saveable",
                       chunk_size=64),
                  dict(model="adventurer_base", patch=1, image=224, batch=1,
                       remat="dots_with_no_batch_dims_saveable"),
                  dict(model="vit_base", patch=1, image=224, batch=1, remat="nothing_saveable")]


SKIPPED_BY_DESIGN = [
    {"model": "vit_tiny", "patch": 1, "image": 128, "batch": 1, "tokens": 16385,
     "skipped": "time budget: ~8 TFLOP per training image (attention 4·L·d per token), minutes per step here"},
    {"model": "vit_base", "patch": 1, "image": 224, "batch": 1, "tokens": 50177,
     "skipped": "memory/time: ≈ 15 GB activations per image without remat and ~900 TFLOP per step"},
    {"model": "adventurer_base", "patch": 1, "image": 224, "batch": 1, "tokens": 50178,
     "skipped": "time budget: ~94 TFLOP per training image (hours per step on this CPU)"},
]


# ---------------------------------------------------------------------------------------------------------- torch
def run_torch(configs: list[dict], max_time_s: float) -> list[dict]:
    """Runs benchmarks/torch_ref.py in the PyTorch environment on `configs`; returns its rows (or skip rows)."""
    if not TORCH_PYTHON:
        return [{**c, "skipped": "PyTorch reference disabled"} for c in configs]
    if not (os.path.exists(TORCH_PYTHON) or shutil.which(TORCH_PYTHON)):
        return [{**c, "skipped": f"{TORCH_PYTHON} missing (make bench creates .venv-torch)"} for c in configs]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = os.path.join(tmp, "cfg.json"), os.path.join(tmp, "out.json")
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(configs, f)
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        timeout = 120 + 6 * max_time_s * len(configs)
        try:
            subprocess.run([TORCH_PYTHON, "-m", "benchmarks.torch_ref", "--configs", cfg_path, "--out", out_path,
                            "--max-time-s", str(max_time_s)], env=env, check=True, timeout=timeout)
            with open(out_path, encoding="utf-8") as f:
                out = json.load(f)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            return [{**c, "skipped": f"torch subprocess failed: {type(e).__name__}: {str(e)[:200]}"}
                    for c in configs]
    return [{**r, "torch_version": out["torch_version"], "threads": out["threads"]} for r in out["results"]]


def run_long_steps(configs: list[dict], max_time_s: float, save=None) -> list[dict]:
    """benchmarks/long_step.py in a fresh subprocess per configuration (peak memory is per process)."""
    rows = []
    for cfg in configs:
        if save:
            save(rows)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "row.json")
            cmd = [sys.executable, "-m", "benchmarks.long_step", "--model", cfg["model"], "--patch",
                   str(cfg["patch"]), "--image", str(cfg["image"]), "--batch", str(cfg["batch"]), "--remat",
                   cfg["remat"], "--dtype", DTYPE, "--max-time-s", str(max_time_s), "--out", out]
            if "chunk_size" in cfg:
                cmd += ["--chunk-size", str(cfg["chunk_size"])]
            try:
                # Alone on the device (the parent holds little): let XLA take 90 % instead of the default 75 %.
                env = {**os.environ, "PYTHONPATH": os.getcwd(), "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}
                subprocess.run(cmd, check=True, timeout=900, env=env)
                with open(out, encoding="utf-8") as f:
                    rows.append(json.load(f))
            except (subprocess.SubprocessError, OSError, ValueError) as e:
                rows.append({**cfg, "skipped": f"subprocess failed: {type(e).__name__}: {str(e)[:200]}"})
    if save:
        save(rows)
    return rows


# -------------------------------------------------------------------------------------------------------- analysis
def attach_fractions(result: dict) -> None:
    """Recomputes every efficiency against the combined limits (best of the start and end measurements)."""
    lim = result["limits"]
    for row in result["scan"]:
        if "flop_per_s" in row:
            row["flop_frac_f32_matmul"] = row["flop_per_s"] / lim["f32_matmul_flop_per_s"]
            row["flop_frac_bf16_matmul"] = row["flop_per_s"] / lim["bf16_f32_matmul_flop_per_s"]
        if "bytes_per_s" in row:
            row["bytes_frac_copy"] = row["bytes_per_s"] / lim["copy_bytes_per_s"]
    for row in result["train"]:
        if "flop_per_s" in row:
            row["efficiency_f32"] = row["flop_per_s"] / lim["f32_matmul_flop_per_s"]
            row["efficiency_bf16"] = row["flop_per_s"] / lim["bf16_f32_matmul_flop_per_s"]
            if row.get("probe_f32_flop_per_s"):
                row["efficiency_probe"] = row["flop_per_s"] / row["probe_f32_flop_per_s"]


def _find(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and "skipped" not in r:
            return r
    return None


def _time_of(rows, model, patch, image, batch, prefer="fwd+bwd"):
    """Step time of a configuration, fwd+bwd-only when measured, else the train step."""
    for what in (prefer, "train_step"):
        r = _find(rows, model=model, patch=patch, image=image, batch=batch, what=what)
        if r:
            return r["step_s"], what
    return None, None


def adventurer_vs_vit(train: list[dict]) -> list[dict]:
    """Per patch grid (same image, patch, batch): Adventurer-T and ViT-T step times and their ratio."""
    out = []
    keys = sorted({(r["image"], r["patch"], r["batch"]) for r in train if r.get("model") == "adventurer_tiny"})
    for image, patch, batch in keys:
        ta, wa = _time_of(train, "adventurer_tiny", patch, image, batch, prefer="train_step")
        tv, wv = _time_of(train, "vit_tiny", patch, image, batch, prefer="train_step")
        if ta and tv:
            ra = _find(train, model="adventurer_tiny", patch=patch, image=image, batch=batch, what=wa)
            rv = _find(train, model="vit_tiny", patch=patch, image=image, batch=batch, what=wv)
            out.append({"image": image, "patch": patch, "batch": batch, "patches": (image // patch) ** 2,
                        "adventurer_s": ta, "vit_s": tv, "ratio_adv_over_vit": ta / tv, "what": wa,
                        "adventurer_remat": ra.get("remat", ""), "vit_remat": rv.get("remat", "")})
    return sorted(out, key=lambda r: r["patches"])


def crossover_tokens(rows: list[dict]) -> float | None:
    """Patch count where Adventurer's step time drops below ViT's (log-linear interpolation of the ratio)."""
    for a, b in zip(rows, rows[1:]):
        if a["ratio_adv_over_vit"] >= 1.0 > b["ratio_adv_over_vit"]:
            la, lb = math.log(a["patches"]), math.log(b["patches"])
            ra, rb = math.log(a["ratio_adv_over_vit"]), math.log(b["ratio_adv_over_vit"])
            return round(math.exp(la + (0.0 - ra) * (lb - la) / (rb - ra)))
    if rows and rows[0]["ratio_adv_over_vit"] < 1.0:
        return float(rows[0]["patches"])  # already faster at the smallest measured count
    return None


def torch_comparison(train: list[dict], torch_rows: list[dict]) -> list[dict]:
    """pixeltok / PyTorch time ratios for every configuration both measured (< 1: pixeltok faster)."""
    out = []
    for t in torch_rows:
        if "skipped" in t:
            continue
        key = dict(model=t["model"], patch=t["patch"], image=t["image"], batch=t["batch"])
        fb = _find(train, what="fwd+bwd", **key)
        ts = _find(train, what="train_step", **key)
        row = {**key, "torch_fwd_bwd_s": t["fwd_bwd"]["median_s"], "torch_train_step_s": t["train_step_s"]}
        if fb:
            row.update(pixeltok_fwd_bwd_s=fb["step_s"], ratio_fwd_bwd=fb["step_s"] / t["fwd_bwd"]["median_s"],
                       pixeltok_dtype=fb["dtype"])
        if ts:
            row.update(pixeltok_train_step_s=ts["step_s"], ratio_train_step=ts["step_s"] / t["train_step_s"],
                       pixeltok_dtype=ts["dtype"], pixeltok_remat=ts["remat"])
        out.append(row)
    return out


def targets(result: dict) -> list[dict]:
    """The issue's performance targets: reported with the measured value, never asserted."""
    out = []
    train, avv = result["train"], result["adventurer_vs_vit"]
    at4k = [r for r in avv if r["patches"] == 4096]
    if not at4k:
        out.append({"target": "Adventurer-T step ≤ 1.0× ViT-T at 4,096 tokens (64², p1)",
                    "measured": "not measured (see skipped rows)", "threshold": "≤ 1.0", "pass": False})
    if at4k:
        r = at4k[0]
        out.append({"target": f"Adventurer-T step ≤ 1.0× ViT-T at 4,096 tokens (64², p1, ×{r['batch']})",
                    "measured": r["ratio_adv_over_vit"], "threshold": "≤ 1.0",
                    "pass": r["ratio_adv_over_vit"] <= 1.0})
    big = [r for r in avv if r["patches"] >= 784]
    if len(big) >= 2:
        ratios = [r["ratio_adv_over_vit"] for r in big]
        widening = all(b <= a * 1.05 for a, b in zip(ratios, ratios[1:])) and ratios[-1] < ratios[0]
        out.append({"target": "gap widens with tokens (Adventurer/ViT ratio falls from 784 to 4,096 patches)",
                    "measured": " → ".join(f"{r['patches']}: {r['ratio_adv_over_vit']:.2f}" for r in big),
                    "threshold": "decreasing", "pass": widening})
    gpu = result["machine"].get("backend") == "gpu"
    key, ref = ("efficiency_bf16", "bf16 matmul (MFU)") if gpu else ("efficiency_f32", "f32 matmul")
    for model in ("vit_base", "adventurer_base"):
        r = _find(train, model=model, patch=16, image=224, what="train_step")
        if r and r["batch"] >= 8:
            out.append({"target": f"{model}/16 train-step efficiency ≥ 35 % of {ref} FLOP/s (224², ×{r['batch']})",
                        "measured": r[key], "threshold": "≥ 0.35", "pass": r[key] >= 0.35})
    m4 = _mem(train, 64)
    m16 = _mem(train, 128)
    if m4 and m16:
        g = m16 / m4
        out.append({"target": "Adventurer-T compiled memory 4k → 16k tokens grows ≤ 4.5× (batch 1, train step)",
                    "measured": g, "threshold": "≤ 4.5", "pass": g <= 4.5})
    for arch in ("vit", "adventurer"):
        rows = [r for r in result["torch_comparison"] if r["model"].startswith(arch) and "ratio_fwd_bwd" in r]
        if rows:
            worst = max(r["ratio_fwd_bwd"] for r in rows)
            out.append({"target": f"pixeltok {arch} fwd+bwd at least as fast as PyTorch (pixeltok/PyTorch ≤ 1)",
                        "measured": " ".join(f"{r['model']}/p{r['patch']}/{r['image']}²: {r['ratio_fwd_bwd']:.2f}"
                                             for r in rows),
                        "threshold": "≤ 1.0 (all)", "pass": worst <= 1.0})
    adv = _find(result.get("long", []), model="adventurer_base", remat="nothing_saveable", chunk_size=128)
    vit = _find(result.get("long", []), model="vit_base", remat="nothing_saveable")
    if adv and vit:
        out.append({"target": f"Adventurer-B step ≤ ViT-B at {adv['tokens']:,} tokens (p1, 224², batch 1, both remat)",
                    "measured": adv["step_s"] / vit["step_s"], "threshold": "≤ 1.0",
                    "pass": adv["step_s"] <= vit["step_s"]})
    for r in result.get("long", []):
        head = f"{r['model']} p{r['patch']} {r['image']}² train step, batch {r['batch']}"
        if "skipped" in r:
            out.append({"target": head, "measured": r["skipped"], "threshold": "runs", "pass": False})
            continue
        chunk = f", SSD chunk {r['chunk_size']}" if r.get("chunk_size") else ""
        out.append({"target": f"{head} ({r['tokens']:,} tokens, remat {r['remat']}{chunk})",
                    "measured": f"{r['step_s']:.3f} s/step, MFU {r['mfu_bf16']:.1%} of bf16 matmul, peak "
                                f"{(r.get('peak_bytes_in_use') or 0) / 2**30:.2f} GiB "
                                f"(compiled {r['total_bytes'] / 2**30:.2f} GiB)",
                    "threshold": "runs", "pass": True})
    return out


def _mem(train, image):
    for r in train:
        if r.get("model") == "adventurer_tiny" and r.get("patch") == 1 and r.get("image") == image \
                and r.get("batch") == 1 and r.get("what") == "train_step" and "total_bytes" in r:
            return r["total_bytes"]
    return None


# ------------------------------------------------------------------------------------------------------------ main
def run_train_section(grid: list[dict], limits: dict, max_time_s: float, torch_time_s: float, save=None):
    """pixeltok rows for every grid entry; for `torch` entries also fwd+bwd-only and, right after, PyTorch.

    `save(train, torch_rows)` is called after every entry, so a killed run keeps what it measured.
    """
    train, torch_rows = [], []
    for cfg in grid:
        if save:
            save(train, torch_rows)
        train += run_train_bench([cfg], limits, MEM_BUDGET, max_time_s)
        if cfg["torch"] and "torch" in SECTIONS:  # (no rows at all otherwise: a merge must not clobber old ones)
            train += run_train_bench([{**cfg, "fwd_bwd_only": True}], limits, MEM_BUDGET, max_time_s)
            tcfg = {k: cfg[k] for k in ("model", "patch", "image", "batch", "classes")}
            tcfg.update(channels=3, chunk_size=cfg["overrides"].get("chunk_size", 128),
                        shape=reference_shape(cfg["model"], cfg["overrides"]))
            torch_rows += run_torch([tcfg], torch_time_s)
    return train, torch_rows


def _machine() -> tuple[str, dict]:
    """File-name slug and description of this machine (the accelerator's model on a GPU)."""
    dev = jax.devices()[0]
    name = machine_name(dev.device_kind if GPU else None)
    info = machine_info()
    info.update(jax_version=jax.__version__, jaxlib_version=getattr(jax.lib, "__version__", jax.__version__),
                backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])
    if GPU:
        stats = dev.memory_stats() or {}
        info.update(accelerator=dev.device_kind, accelerator_count=jax.device_count(),
                    accelerator_memory_gib=round(stats.get("bytes_limit", 0) / 2**30, 1))
    import flax
    info["flax_version"] = flax.__version__
    return name, info


def _start_result(name: str, info: dict, json_path: str) -> dict:
    """A fresh result dict, or (BENCH_MERGE=1) the saved one of this machine with this run's metadata added."""
    fresh = {"machine_name": name, "machine": info, "mode": "quick" if QUICK else "full",
             "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "pixeltok_dtype": DTYPE,
             "mem_budget_bytes": MEM_BUDGET, "limit_rounds": [], "scan": [], "train": [], "torch": [], "long": [],
             "skipped_by_design": [] if QUICK or GPU else SKIPPED_BY_DESIGN, "runs": []}
    if MERGE and os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            old = json.load(f)
        for key, value in fresh.items():
            old.setdefault(key, value)
        old["machine"], old["date"] = info, fresh["date"]
        return old
    return fresh


def main() -> int:
    start = time.time()
    os.makedirs(RESULTS_DIR, exist_ok=True)
    name, info = _machine()
    where = info.get("accelerator") or f"{info['cpu_model']}, {info['cores']} cores"
    log(f"machine {name}: {where}, jax {jax.__version__} ({info['backend']}), {'QUICK' if QUICK else 'full'} grid, "
        f"sections {','.join(sorted(SECTIONS))}, load {info['load_average_at_start']}")
    json_path = os.path.join(RESULTS_DIR, f"{name}.json")
    result = _start_result(name, info, json_path)
    result["runs"].append({"date": result["date"], "sections": sorted(SECTIONS), "git_commit": info["git_commit"]})

    log("limits (round 1)")
    result["limit_rounds"].append(measure_limits(QUICK, GPU))
    result["limits"] = combine_limits(result["limit_rounds"])
    old = {k: result.get(k, []) for k in ROW_KEYS}

    def save(section: str, rows: list[dict]) -> None:
        result[section] = merge_rows(section, old[section], rows)
        write_json(json_path, result)

    if "long" in SECTIONS:
        only = os.environ.get("BENCH_LONG_ONLY")  # e.g. "1,3": indices into LONG_STEPS_GPU (re-run a subset)
        long_cfgs = [c for i, c in enumerate(LONG_STEPS_GPU if GPU else [])
                     if not only or str(i) in only.split(",")]
        run_long_steps(long_cfgs, max_time_s=10.0, save=lambda rows: save("long", rows))
    if "scan" in SECTIONS:
        run_scan_bench(QUICK, MEM_BUDGET, GPU, save=lambda rows: save("scan", rows))
    if "train" in SECTIONS:
        def save_train(train, torch_rows):
            save("train", train)
            save("torch", torch_rows)
        budget = 3.0 if GPU else 10.0 if QUICK else 40.0
        save_train(*run_train_section(train_grid_gpu(QUICK) if GPU else train_grid(QUICK), result["limits"],
                                      max_time_s=budget, torch_time_s=budget, save=save_train))
    log("limits (round 2)")
    result["limit_rounds"].append(measure_limits(QUICK, GPU))
    result["machine"]["load_average_at_end"] = load_average()
    result["runtime_s"] = time.time() - start
    finalize(result, json_path)
    return 0


def finalize(result: dict, json_path: str) -> None:
    """Limits, fractions, comparisons and targets from the measured rows; writes the JSON, Markdown and plots.

    Also the entry point for a saved (possibly cut-short) run: `python -m benchmarks.run --finalize <json>`.
    """
    result["limits"] = combine_limits(result["limit_rounds"])
    attach_fractions(result)
    result["adventurer_vs_vit"] = adventurer_vs_vit(result["train"])
    result["crossover_patches"] = crossover_tokens(result["adventurer_vs_vit"])
    result["torch_comparison"] = torch_comparison(result["train"], result["torch"])
    result["targets"] = targets(result)
    write_json(json_path, result)
    report.write_all(result, os.path.dirname(os.path.abspath(json_path)))
    log(f"done in {result.get('runtime_s', 0) / 60:.1f} min: {json_path}")
    for t in result["targets"]:
        log(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {t['measured']}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--finalize":
        with open(sys.argv[2], encoding="utf-8") as fh:
            finalize(json.load(fh), sys.argv[2])
        sys.exit(0)
    sys.exit(main())
