"""``docs/mitigation.md``: detection and mitigation evidence on the lab model, and their costs.

Built from ``lab_mitigation.json`` (:func:`render_evidence`) and ``mitigation.json`` (:func:`render_costs`)
of one machine; prose from ``docs/_partials/mitigation.md``, the paper's rows from :mod:`.paper`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.render.base import CPU, DOCS, load_average_span, partial, write_page
from benchmarks.render.paper import SSCD_COLUMNS, paper_cell
from copyguard.common.fmt import cell, markdown_table, pct

__all__ = ["render_costs", "render_evidence", "render_mitigation", "write_mitigation"]


def render_evidence(r: dict[str, Any]) -> list[str]:
    """The evidence sections of docs/mitigation.md from one ``lab_mitigation.json`` result."""
    m, d, mit = r["machine"], r["detection"], r["mitigation"]
    cal = d["calibration"]
    lines = [
        "## Evidence on the `small` lab model",
        "",
        f"Model `{r['model']['path']}` ({r['model']['resolution']} px, preset {r['model']['preset']}), "
        f"trained on `{r['data']['shards']}` ({r['data']['train_samples']} training samples, "
        f"{r['data']['heldout']} unique samples held out). Training-set index: `copyguard curate` on the same "
        f"shards with the `{r['data']['index_embedder']}` embedder ({r['data']['index_images']} kept images). "
        f"DDIM {r['spec']['steps']} steps, guidance {r['spec']['guidance_scale']}. Commit `{r.get('commit')}`; "
        f"machine `{m['tag']}` ({m.get('cpu_model')}, {m.get('usable_cpus')} cores, torch threads "
        f"{m.get('threads')}, load {load_average_span(m, None)}); run took {r.get('wall_s')} s. Reproduce: "
        f"`{r['command']}`.",
        "",
        "### Detection (text-conditional noise magnitude; Wen et al., ICLR 2024)",
        "",
        f"Text-conditional magnitude of the duplicated-group captions against all "
        f"{d['settings']['first_step_n1']['memorized']['negatives']} unique training captions (each trained on "
        "once). *Memorized*: the pairs with >= 25 copies (the ones the model reproduces); *all duplicated*: "
        "2 to 50 copies. TPR@1%FPR is the highest TPR at a reachable threshold with FPR <= 1%.",
        "",
    ]
    rows = []
    for name, s in d["settings"].items():
        mem, dup = s["memorized"], s["all_duplicated"]
        rows.append(
            [
                name.replace("_n", ", n = ").replace("_", " "),
                f"{mem['auc']:.4f}",
                f"{mem['tpr_at_1pct_fpr']:.3f}",
                f"{dup['auc']:.4f}",
                f"{dup['tpr_at_1pct_fpr']:.3f}",
                f"{mem['mean_pos']:.3f} / {dup['mean_pos']:.3f} / {mem['mean_neg']:.3f}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "setting",
                f"AUC memorized ({d['settings']['first_step_n1']['memorized']['positives']})",
                "TPR@1%FPR memorized",
                f"AUC all duplicated ({d['settings']['first_step_n1']['all_duplicated']['positives']})",
                "TPR@1%FPR all duplicated",
                "mean score memorized / duplicated / unique",
            ],
            rows,
        )
    )
    lines += [
        "",
        partial("mitigation", "detection_reference"),
        "",
        f"First-step magnitude (n = 1) by duplication count; the gate threshold **{cal['threshold']:.4f}** "
        f"is calibrated at {100 * cal['target_fpr']:.0f}% FPR on {cal['reference_prompts']} "
        f"{cal['reference']}. It flags {pct(cal['flagged_memorized_pct'])}% of the memorized prompts, "
        f"{pct(cal['flagged_duplicated_pct'])}% of all duplicated ones, "
        f"{pct(cal['flagged_unique_train_pct'])}% of the unique training captions and "
        f"{pct(cal['flagged_heldout_pct'])}% of the held-out captions.",
        "",
    ]
    rows = [
        [
            k,
            v["prompts"],
            f"{v['first_step_mean']:.3f}",
            pct(v.get("flagged_pct")),
            cell(v.get("auc_vs_unique")),
        ]
        for k, v in d["by_copies_first_step_n1"].items()
    ]
    lines.append(
        markdown_table(["copies", "prompts", "mean first-step magnitude", "% flagged", "AUC vs unique"], rows)
    )
    lines += [
        "",
        "### Mitigation (shaped like the SD v1.4 table of Chen et al., CVPR 2024; SSCD of each memorized-prompt "
        "generation against its own training image)",
        "",
        f"{len(mit['memorized_prompts'])} memorized prompts (>= 25 copies) x {len(mit['seeds'])} seeds "
        f"= {len(mit['memorized_prompts']) * len(mit['seeds'])} generations per method, generated through "
        "`copyguard.mitigation.generate.generate_images` (the code path of `copyguard generate`). SSCD: the "
        "shipped ONNX `sscd_disc_mixup`, 32 px images upsampled to 320. At 32 px a true copy scores "
        "~0.5-0.75 and distinct images rarely exceed 0.4 (docs/lab_model.md), so **%>0.4** is this "
        f"model's memorization share; %>0.5 is the paper's. FID: {mit['fid_images']} held-out captions "
        f"({mit.get('fid_seeds', 'one seed each')}) against the held-out real images (TF-Inception; absolute values at 32 px and 200 "
        f"images are high, compare the change). AMG runs detection-gated (gate {mit['gate_threshold']:.4f}); "
        f"prompt-opt's l_target = {cell(mit['prompt_opt_l_target'], 4)} (median first-step magnitude of the "
        "held-out captions).",
        "",
    ]
    rows = []
    for name, row in mit["methods"].items():
        mem = row.get("memorized")
        if not mem:
            continue
        fid = row.get("fid") or {}
        rows.append(
            [
                row["label"],
                f"{mem['top5pct']:.3f}",
                f"{mem['top1']:.3f}",
                f"{mem['pct_gt_0.5']:.1f}",
                f"{mem['pct_gt_0.4']:.1f}",
                f"{mem['mean']:.3f}",
                cell(fid.get("fid"), 4),
                "-" if "change_pct" not in fid else f"{fid['change_pct']:+.1f}%",
                paper_cell(name),
            ]
        )
    lines.append(
        markdown_table(
            [
                "method",
                *SSCD_COLUMNS,
                "mean SSCD",
                "FID",
                "FID change",
                "paper, SD v1.4 (different model): Top5% / Top1 / %>0.5 / %>0.4 / FID",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Unique prompts: the same (prompt, seed) generated with and without each mitigation "
        f"({mit['unique_prompts']} unique training captions x {len(mit['unique_seeds'])} seed(s); FID set: "
        f"{mit['fid_images']} held-out captions). *SSCD to unmitigated*: cosine between the two images; "
        "*own %>0.4*: share of the unique prompts' generations above 0.4 against their own training image.",
        "",
    ]
    rows = []
    for row in mit["methods"].values():
        u = row.get("unique")
        if not u:
            continue
        ch = u.get("change") or {}
        amg = u.get("amg") or {}
        fid = row.get("fid") or {}
        rows.append(
            [
                row["label"],
                cell(ch.get("identical_pct"), 4),
                cell(ch.get("sscd_to_unmitigated_mean")),
                cell(ch.get("pixel_mean_abs_change")),
                f"{u['pct_gt_0.4']:.1f}",
                f"{u['mean']:.3f}",
                cell(amg.get("flagged_pct")) if amg else "-",
                cell(fid.get("identical_to_unmitigated_pct"), 4),
            ]
        )
    lines.append(
        markdown_table(
            [
                "method",
                "% bit-identical",
                "SSCD to unmitigated (mean)",
                "mean abs pixel change (0-255)",
                "own %>0.4",
                "own mean SSCD",
                "AMG % flagged",
                "FID set % bit-identical",
            ],
            rows,
        )
    )
    amg_rows = []
    for row in mit["methods"].values():
        a = (row.get("memorized") or {}).get("amg")
        if a:
            amg_rows.append(
                [
                    row["label"],
                    cell(a["flagged_pct"]),
                    cell(a["guided_pct"]),
                    cell(a["mean_max_sigma"]),
                    cell(a["mean_steps_checked"]),
                    cell(a["mean_steps_g_spe"]),
                    cell(a["mean_steps_g_dup"]),
                    cell(a["mean_steps_g_sim"]),
                    cell(a["with_y_n_pct"]),
                    cell(row["memorized"]["seconds"]),
                ]
            )
    if amg_rows:
        lines += [
            "",
            "AMG on the memorized prompts, from the per-image traces (steps out of "
            f"{r['spec']['steps']}; sigma = SSCD cosine of the VAE-decoded x0_hat to its nearest training image "
            "in the index, computed with the differentiable torch SSCD):",
            "",
        ]
        lines.append(
            markdown_table(
                [
                    "method",
                    "% flagged",
                    "% guided",
                    "mean max sigma",
                    "steps checked",
                    "steps G_spe",
                    "steps G_dup",
                    "steps G_sim",
                    "% with y_N",
                    "seconds",
                ],
                amg_rows,
            )
        )
    if r.get("merged_runs"):
        lines += [
            "",
            "The methods were measured in parallel processes (same model, data, seeds and gate; each run's "
            "unmitigated images were checked equal before merging with `python -m benchmarks.lab_mitigation "
            "merge`):",
            "",
        ]
        for run in r["merged_runs"]:
            load = run["machine"].get("load_average_at_start") or ["?"]
            lines.append(
                f"- {', '.join(run['methods'])}: `{run['command']}` ({run.get('wall_s')} s, load {load[0]})"
            )
    lines += [
        "",
        "Goals: " + ", ".join(f"{k} **{'pass' if v else 'FAIL'}**" for k, v in r["goals"].items()),
        "",
    ]
    return lines


def render_costs(r: dict[str, Any]) -> list[str]:
    """The cost section of docs/mitigation.md from ``mitigation.json`` (``benchmarks/bench_mitigation.py``)."""
    m = r["machine"]
    lines = [
        "## Costs (`benchmarks/bench_mitigation.py`)",
        "",
        partial("mitigation", "costs_intro"),
        "",
    ]
    rows = []
    for name, res in r["models"].items():
        q = res["ratios"]
        rows.append(
            [
                f"{name} ({res['size']} px, {res['steps']} steps)",
                f"{q['detect_1prompt_vs_unet_cfg']:.2f}x / {q['detect_batch8_per_prompt_vs_unet_cfg']:.2f}x",
                f"{q['detect_1prompt_vs_50step_generation']:.4f} ({res['generation_50_steps_how']})",
                f"{q['amg_gated_unflagged_vs_plain']:.3f}x"
                + (
                    f" (re-measured: {res['gated_recheck']['ratio_median']:.3f}x, median of "
                    f"{res['gated_recheck']['rounds']} alternations at {res['gated_recheck']['steps']} steps)"
                    if res.get("gated_recheck")
                    else ""
                ),
                f"{q['amg_memorized_vs_plain']:.1f}x",
                f"{q['amg_ungated_unique_vs_plain']:.1f}x",
                f"{q.get('amg_worst_vs_plain', q['amg_memorized_vs_plain']):.1f}x",
                (
                    "-"
                    if "prompt_opt_calibrated_vs_plain" not in q
                    else f"{q['prompt_opt_calibrated_vs_plain']:.2f}x"
                )
                + f" / {q['prompt_opt_iteration_vs_unet_cfg']:.1f}x / {q['prompt_opt_worst_10iter_vs_50step_generation']:.2f}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "model",
                "first-step detection vs 1 CFG UNet eval (1 prompt / per prompt in a batch of 8)",
                "detection vs a 50-step generation",
                "AMG gated, unflagged prompt (goal <= 1.15x)",
                "AMG, memorized prompt (goal <= 3x)",
                "AMG ungated, unique prompt",
                "AMG worst case",
                "prompt-opt: calibrated, with generation, vs plain / one AdamW iteration vs 1 CFG UNet eval / "
                "10 iterations vs a 50-step generation",
            ],
            rows,
        )
    )
    notes = []
    for name, res in r["models"].items():
        d = (res.get("details") or {}).get("amg_gated_unique") or {}
        if d.get("flagged"):
            notes.append(
                f"On {name} the gate passed the 'unique' prompt of the main loop (magnitude "
                f"{d.get('magnitude', 0):.3g} > threshold {res['gate_threshold']:.3g}: random weights, so which "
                "prompts pass is arbitrary): that column measured a *flagged* prompt; the re-measurement sets the "
                "threshold just above the prompt's magnitude and alternates plain and gated runs."
            )
        w = (res.get("details") or {}).get("amg_worst_memorized") or (res.get("details") or {}).get(
            "amg_memorized"
        )
        if w and not (w.get("amg_stats") or {}).get("dup_unet_images"):
            notes.append(
                f"On {name} G_dup never fired in the AMG runs (the nearest training images had no y_N), so its "
                "extra UNet call on e_yN (half a CFG evaluation per step where it fires) is not in these ratios."
            )
    lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", partial("mitigation", "costs_where")]
    lines += ["", "Seconds (median):", ""]
    rows = []
    for name, res in r["models"].items():
        s = res["seconds_median"]
        rows.append(
            [
                name,
                f"{s['unet_cfg_eval']:.3f}",
                f"{s['detect_first_step_1prompt']:.3f}",
                f"{s['plain_unique']:.2f}",
                f"{s['amg_gated_unique']:.2f}",
                f"{s['amg_ungated_unique']:.2f}",
                f"{s['plain_memorized']:.2f}",
                f"{s['amg_memorized']:.2f}",
                f"{s.get('prompt_opt_calibrated', float('nan')):.2f} / {s['prompt_opt_worst_only']:.2f} "
                f"({res['prompt_opt_iterations_measured']} it.)",
                ", ".join(f"{k} {v:,}" for k, v in res["params"].items()),
            ]
        )
    lines.append(
        markdown_table(
            [
                "model",
                "CFG UNet eval",
                "detection, 1 prompt",
                "plain, unique",
                "AMG gated, unique",
                "AMG ungated, unique",
                "plain, memorized",
                "AMG, memorized",
                "prompt-opt calibrated + generation / optimization only, l_target 0",
                "parameters",
            ],
            rows,
        )
    )
    lines += [
        "",
        f"*Machine `{m['tag']}`: {m.get('cpu_model')}, {m.get('usable_cpus')} of {m.get('cpu_count')} cores, "
        f"torch threads {m.get('threads')}; 1-min load {load_average_span(m, None)} (shared with other jobs); "
        f"commit `{r.get('commit')}`; "
        f"run took {r.get('wall_s')} s. Reproduce: `{r['command']}`.*",
        "",
    ]
    return lines


def render_mitigation(evidence: dict[str, Any] | None, costs: dict[str, Any] | None) -> str:
    """The whole page from the two results (either may be None: its sections are left out)."""
    lines = [
        "# Detection and mitigation: evidence and costs",
        "",
        "<!-- Generated by `python -m benchmarks.render` from benchmarks/results/<machine>/"
        "{lab_mitigation,mitigation}.json and docs/_partials/mitigation.md; do not edit by hand. -->",
        "",
        partial("mitigation", "intro"),
        "",
    ]
    if evidence is not None:
        lines += [*render_evidence(evidence), "", partial("mitigation", "findings"), ""]
    if costs is not None:
        lines += ["", *render_costs(costs)]
    return "\n".join(lines)


def write_mitigation(
    results_root: str | Path, machine: str = CPU, docs: str | Path = DOCS / "mitigation.md"
) -> Path:
    """Render ``docs/mitigation.md`` from ``<results_root>/<machine>/{lab_mitigation,mitigation}.json``."""

    def load(name: str) -> dict[str, Any] | None:
        path = Path(results_root) / machine / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    return write_page(docs, render_mitigation(load("lab_mitigation"), load("mitigation")))
