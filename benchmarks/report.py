"""Markdown tables and PNG plots from a benchmark result (the dict `benchmarks/run.py` writes as JSON).

    .venv/bin/python -m benchmarks.report benchmarks/results/<machine>.json     # re-render from a saved run
"""

from __future__ import annotations

import json
import os
import sys


def _f(x, fmt="{:.3g}"):
    return "—" if x is None else fmt.format(x)


def _pct(x):
    return "—" if x is None else f"{100 * x:.0f} %"


def _div(x, scale):
    return None if x is None else x / scale


def _mib(x):
    return "—" if x is None else f"{x / 2**20:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def markdown(res: dict) -> str:
    m, lim = res["machine"], res["limits"]
    gpu = m.get("backend") == "gpu"
    lines = [f"# pixeltok benchmarks: {res['machine_name']}", ""]
    if gpu:
        lines += [f"{res['date']}, {res['mode']} grid. GPU **{m['accelerator']}** ({m['accelerator_memory_gib']} GiB "
                  f"usable by XLA), host {m['cpu_model']} with {m['cores']} cores; JAX {m['jax_version']} (gpu), "
                  f"flax {m.get('flax_version')}; pixeltok compute dtype {res['pixeltok_dtype']} (float32 params, "
                  f"decays and scan states). Sections came from {len(res.get('runs', []))} run(s) on this machine "
                  f"type: " + "; ".join(f"{r['date']} ({', '.join(r['sections'])})" for r in res.get("runs", []))
                  + ". The f32 matmul limit is XLA's default precision (TF32 on tensor cores); efficiencies on a "
                  "GPU are model FLOP utilisation against the bf16 matmul.", ""]
    else:
        lines += [
             f"{res['date']}, {res['mode']} grid, {res.get('runtime_s', 0) / 60:.1f} min. CPU **{m['cpu_model']}**, "
             f"{m['cores']} cores ({', '.join(f for f in m['cpu_flags'] if 'bf16' in f or 'amx' in f) or 'no BF16'}), "
             f"{m['mem_total_gib']} GiB; JAX {m['jax_version']} ({m['backend']}), flax {m.get('flax_version')}; "
             f"pixeltok compute dtype {res['pixeltok_dtype']}. Load average at start {m['load_average_at_start']}, "
             f"at end {m.get('load_average_at_end')} (a load above the core count means other jobs shared the CPU: "
             f"read ratios, not absolute times).", ""]
    eff_key, eff_name = ("efficiency_bf16", "MFU (bf16)") if gpu else ("efficiency_f32", "eff (f32)")
    if res.get("patch_note"):
        lines += [f"Note: {res['patch_note']}.", ""]
    lines += ["## Limits (measured in this process; best of start and end rounds)", ""]
    rows = []
    for i, r in enumerate(res["limit_rounds"]):
        rows.append([f"round {i + 1}", _f(r["f32_matmul"]["flop_per_s"] / 1e9, "{:.0f}"),
                     _f(r["bf16_f32_matmul"]["flop_per_s"] / 1e9, "{:.0f}"),
                     _f(r["copy_donated"]["bytes_per_s"] / 1e9, "{:.1f}"),
                     _f(r["copy_fresh_output"]["bytes_per_s"] / 1e9, "{:.1f}")])
    rows.append(["**used**", f"**{lim['f32_matmul_flop_per_s'] / 1e9:.0f}**",
                 f"**{lim['bf16_f32_matmul_flop_per_s'] / 1e9:.0f}**", f"**{lim['copy_bytes_per_s'] / 1e9:.1f}**",
                 f"{lim['fresh_output_bytes_per_s'] / 1e9:.1f}"])
    lines += _table(["", "f32 matmul GFLOP/s", "bf16×bf16→f32 GFLOP/s", "donated copy GB/s",
                     "fresh-output copy GB/s"], rows) + [""]

    lines += ["## Targets (reported, not asserted)", ""]
    lines += _table(["target", "measured", "threshold", "result"],
                    [[t["target"], _f(t["measured"], "{:.3f}") if isinstance(t["measured"], float) else t["measured"],
                      t["threshold"], "PASS" if t["pass"] else "**FAIL**"] for t in res.get("targets", [])]) + [""]

    if res.get("torch_comparison"):
        ref = ("eager PyTorch, bf16 autocast, timm ViT" if gpu else "eager float32")
        lines += [f"## pixeltok vs PyTorch ({ref}, same machine, same run)", "",
                  "Ratio < 1: pixeltok faster. fwd+bwd = loss and all gradients; train step adds AdamW.", ""]
        lines += _table(["model", "p", "image", "batch", "pixeltok dtype/remat", "PyTorch fwd+bwd s",
                         "pixeltok fwd+bwd s", "ratio fwd+bwd", "PyTorch step s", "pixeltok step s", "ratio step"],
                        [[r["model"], r["patch"], r["image"], r["batch"],
                          f"{r.get('pixeltok_dtype', '—')}/{r.get('pixeltok_remat') or 'none'}",
                          _f(r["torch_fwd_bwd_s"]), _f(r.get("pixeltok_fwd_bwd_s")),
                          _f(r.get("ratio_fwd_bwd"), "{:.2f}"), _f(r["torch_train_step_s"]),
                          _f(r.get("pixeltok_train_step_s")), _f(r.get("ratio_train_step"), "{:.2f}")]
                         for r in res["torch_comparison"]]) + [""]
    skipped_torch = [t for t in res.get("torch", []) if "skipped" in t]
    for t in skipped_torch:
        lines.append(f"- PyTorch {t['model']} p{t['patch']} {t['image']}²: skipped ({t['skipped']})")

    if res.get("adventurer_vs_vit"):
        lines += ["", "## Adventurer-T vs ViT-T by patch count (train step, same batch)", ""]
        lines += _table(["image", "p", "patches", "batch", "ViT-T s", "Adventurer-T s", "Adv / ViT", "remat ViT/Adv"],
                        [[r["image"], r["patch"], r["patches"], r["batch"], _f(r["vit_s"]), _f(r["adventurer_s"]),
                          _f(r["ratio_adv_over_vit"], "{:.2f}"),
                          f"{r.get('vit_remat') or 'none'}/{r.get('adventurer_remat') or 'none'}"]
                         for r in res["adventurer_vs_vit"]])
        cross = res.get("crossover_patches")
        lines += ["", f"Crossover (Adventurer-T faster than ViT-T from): "
                      f"{'≈ %d patches' % cross if cross else 'not reached in the measured range'}.", ""]

    if res.get("long"):
        lines += ["## Long-sequence train steps (fresh process each: allocator peak is this step's)", ""]
        rows = []
        for r in res["long"]:
            if "skipped" in r:
                rows.append([r["model"], r["patch"], r["image"], r["batch"], "—", f"skipped: {r['skipped']}",
                             "", "", "", "", ""])
                continue
            rows.append([r["model"], r["patch"], r["image"], r["batch"], f"{r['tokens']:,}",
                         f"{r['remat']}" + (f", Q={r['chunk_size']}" if r.get("chunk_size") else ""),
                         _f(r["step_s"]), _f(r["flops_per_step"] / 1e12), _pct(r["mfu_bf16"]),
                         _f((r.get("peak_bytes_in_use") or 0) / 2**30, "{:.2f}"),
                         _f(r.get("total_bytes", 0) / 2**30, "{:.2f}")])
        lines += _table(["model", "p", "image", "batch", "tokens", "remat, SSD chunk", "s/step", "TFLOP/step",
                         "MFU (bf16 matmul)", "peak GiB", "compiled GiB"], rows) + [""]

    if res.get("train"):
        lines += ["## Train steps (pixeltok)", "",
                  "Efficiency = analytic train FLOPs (`pixeltok.flops`, blocks only, 3× forward) / time / measured "
                  "f32 matmul FLOP/s; eff (probe) uses a 1 s f32 matmul probe taken just before the configuration "
                  "(how much CPU it got while other jobs ran). Memory = XLA compiled memory (arguments + outputs + "
                  "temporaries − aliased).", ""]
        rows = []
        for r in res["train"]:
            common = [r["model"], r["patch"], r["image"], r["batch"], r.get("tokens", "—"), r.get("what", "—"),
                      f"{r.get('dtype', '—')}/{r.get('remat') or 'none'}"]
            if "skipped" in r:
                rows.append(common + [f"skipped: {r['skipped']}", "", "", "", "", "", "",
                                  _mib(r.get("total_bytes_per_image")), _f(r.get("compile_s"), "{:.0f}")])
                continue
            rows.append(common + [_f(r["step_s"]), _f(r["images_per_s"]), f"{r['tokens_per_s']:,.0f}",
                                  _f(r["flops_per_step"] / 1e12), _pct(r.get(eff_key)),
                                  _f(_div(r.get("probe_f32_flop_per_s"), 1e9), "{:.0f}"), _pct(r.get("efficiency_probe")),
                                  _mib(r.get("total_bytes_per_image")), _f(r.get("compile_s"), "{:.0f}")])
        lines += _table(["model", "p", "image", "batch", "tokens", "what", "dtype/remat", "s/step", "img/s", "tok/s",
                         "TFLOP/step", eff_name, "probe GFLOP/s", "eff (probe)", "MiB/image", "compile s"],
                        rows) + [""]
        for r in res.get("skipped_by_design", []):
            lines.append(f"- not run: {r['model']} p{r['patch']} {r['image']}² ({r['tokens']} tokens): {r['skipped']}")
        lines.append("")

    if res.get("scan"):
        batch = res["scan"][0].get("batch", 1)
        lines += [f"## SSD scan (Adventurer-T mixer shapes: 8 heads × 64, state 64, batch {batch}, float32)", "",
                  "FLOPs are each algorithm's nominal count (chunked: GEMM work in docs/ssd.md, FLOPs; recurrent "
                  "5·N·D/token; assoc 7·N·D/token; ×3 for fwd+bwd). Bytes = XLA cost-analysis bytes accessed "
                  "(a while-loop body counts once, so the recurrent figure is a floor).", ""]
        rows = []
        for r in res["scan"]:
            common = [r["length"], r["impl"], r["chunk"] or "—", r["pass"]]
            if "skipped" in r:
                rows.append(common + [f"skipped: {r['skipped']}", _mib(r.get("total_bytes")), "", "", "", ""])
                continue
            rows.append(common + [_f(r["time_s"] * 1e3, "{:.1f}"), _mib(r.get("total_bytes")),
                                  _f(r["flop_per_s"] / 1e9, "{:.1f}"), _pct(r.get("flop_frac_f32_matmul")),
                                  _f(_div(r.get("bytes_per_s"), 1e9), "{:.1f}"), _pct(r.get("bytes_frac_copy"))])
        if res.get("scan_note"):
            lines += [f"Note: {res['scan_note']}.", ""]
        lines += _table(["length", "impl", "Q", "pass", "ms", "MiB", "GFLOP/s", "% f32 matmul", "GB/s",
                         "% copy bw"], rows) + [""]
    return "\n".join(lines) + "\n"


def plots(res: dict, outdir: str) -> list[str]:
    """Scan time/memory vs length and train-step time vs patches; returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    name = res["machine_name"]
    if res.get("scan"):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, pas in zip(axes[:2], ("fwd", "fwd+bwd")):
            for key in sorted({(r["impl"], r["chunk"] or 0) for r in res["scan"]}):
                pts = [(r["length"], r["time_s"]) for r in res["scan"]
                       if (r["impl"], r["chunk"] or 0) == key and r["pass"] == pas and "time_s" in r]
                if pts:
                    label = key[0] + (f" Q={key[1]}" if key[1] else "")
                    ax.plot(*zip(*pts), "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel="length (tokens)", ylabel="seconds", title=f"ssd {pas}")
            ax.legend(fontsize=7)
        ax = axes[2]
        for key in sorted({(r["impl"], r["chunk"] or 0) for r in res["scan"]}):
            pts = [(r["length"], r["total_bytes"] / 2**20) for r in res["scan"]
                   if (r["impl"], r["chunk"] or 0) == key and r["pass"] == "fwd+bwd" and "total_bytes" in r]
            if pts:
                ax.plot(*zip(*pts), "o-", label=key[0] + (f" Q={key[1]}" if key[1] else ""))
        ax.set(xscale="log", yscale="log", xlabel="length (tokens)", ylabel="MiB", title="compiled memory, fwd+bwd")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(outdir, f"{name}_scan.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    avv = res.get("adventurer_vs_vit")
    if avv:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        x = [r["patches"] for r in avv]
        axes[0].plot(x, [r["vit_s"] / r["batch"] for r in avv], "o-", label="ViT-T")
        axes[0].plot(x, [r["adventurer_s"] / r["batch"] for r in avv], "s-", label="Adventurer-T")
        axes[0].set(xscale="log", yscale="log", xlabel="patches per image", ylabel="train-step seconds per image",
                    title="pixeltok train step")
        axes[0].legend()
        axes[1].plot(x, [r["ratio_adv_over_vit"] for r in avv], "o-")
        axes[1].axhline(1.0, color="grey", lw=0.8)
        axes[1].set(xscale="log", xlabel="patches per image", ylabel="Adventurer-T / ViT-T time",
                    title="ratio (< 1: Adventurer faster)")
        fig.tight_layout()
        path = os.path.join(outdir, f"{name}_train.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_all(res: dict, outdir: str) -> list[str]:
    """Writes <machine>.md and the PNG plots next to the JSON."""
    path = os.path.join(outdir, f"{res['machine_name']}.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(res))
    return [path] + plots(res, outdir)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        result = json.load(fh)
    print("\n".join(write_all(result, os.path.dirname(os.path.abspath(sys.argv[1])))))
