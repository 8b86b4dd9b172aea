"""The lab model's card (``MODEL_DIR/README.md``): what it was trained on, how, and how much it memorizes.

The card renders whatever ``lab_training.json`` and ``memorization.json`` hold: a section or figure the
measurement could not produce (no duplicated pairs, no unique prompts, no held-out images, an older or
partial file) is shown as ``-`` or as a line saying why, never as an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["memorization_table", "render_model_card"]


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def memorization_table(mem: dict[str, Any]) -> str:
    """Markdown table of the per-duplication-count figures of ``memorization.json``."""
    thr = float(mem.get("threshold", 0.5))
    key_thr = f"pct_gt_{thr:g}"
    by_copies = mem.get("by_copies") or {}
    if not by_copies:
        return "No generation was measured (the summary has no per-duplication-count figures)."
    has_train = any("sscd_train" in b for b in by_copies.values())
    head = (
        f"| copies | prompts | gens | SSCD own mean | Top5% | Top1 | % > {thr:g} | % > 0.5 |"
        + (f" nearest-train % > {thr:g} |" if has_train else "")
        + " nL2 mean | nL2 min | % nL2 < 1.6 |"
    )
    sep = "|" + "---|" * (head.count("|") - 1)
    rows = [head, sep]
    buckets = sorted(by_copies.items(), key=lambda kv: _order(kv[0]))
    for name, b in buckets:
        own, nl2 = b.get("sscd_own", {}), b.get("nl2", {})
        row = (
            f"| {name} | {b.get('prompts', '-')} | {b.get('generations', '-')} | {_f(own.get('mean'))} | "
            f"{_f(own.get('top5pct'))} | {_f(own.get('top1'))} | {_f(own.get(key_thr), 1)} | "
            f"{_f(own.get('pct_gt_0.5'), 1)} |"
        )
        if has_train:
            row += f" {_f(b.get('sscd_train', {}).get(key_thr), 1)} |"
        row += f" {_f(nl2.get('mean'), 2)} | {_f(nl2.get('min'), 2)} | {_f(nl2.get('pct_lt_1.6'), 1)} |"
        rows.append(row)
    return "\n".join(rows)


def _order(name: str) -> int:
    """Copy counts ascending, ``unique`` (and any other name) last."""
    return int(name) if str(name).isdigit() else 1 << 30


def _calibration(cal: dict[str, Any]) -> str:
    labels = {
        "vae_roundtrip": "VAE round trip of a training image (a copy)",
        "jpeg_q75": "JPEG q=75 re-encode (a copy)",
        "jpeg_q50": "JPEG q=50 re-encode (a copy)",
        "distinct_nearest": "nearest *other* training image",
        "distinct_pairs": "random pairs of distinct training images",
    }
    if not any(key in cal for key in labels):
        return f"Not measured: {cal.get('reason', 'no calibration in the summary')}."
    rows = [
        f"| pair | mean | 5th pct | median | 95th pct | % > {float(cal.get('threshold', 0.5)):g} |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in labels.items():
        if key in cal:
            d = cal[key]
            rows.append(
                f"| {label} | {_f(d.get('mean'))} | {_f(d.get('p5'))} | {_f(d.get('p50'))} | "
                f"{_f(d.get('p95'))} | {_f(d.get('pct_gt_threshold'), 1)} |"
            )
    return "\n".join(rows)


def render_model_card(
    preset: str, training: dict[str, Any], mem: dict[str, Any] | None, data_pattern: str | list[str]
) -> str:
    """The Markdown card: data, settings, timings, machine, memorization figures."""
    lines = [
        f"# copyguard lab model (`{preset}` preset)",
        "",
        "A small Stable Diffusion (diffusers `StableDiffusionPipeline` layout: CLIP tokenizer, `CLIPTextModel`,",
        "`AutoencoderKL`, `UNet2DConditionModel`, DDIM scheduler config; no safety checker) trained **from",
        "scratch** by `copyguard lab-model` on WebDataset shards (a copyguard sample data set or your own)",
        "whose duplicated image-caption pairs it is meant to memorize. A research artefact for testing",
        "memorization detection and mitigation, not an image generator.",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        'pipe = StableDiffusionPipeline.from_pretrained("MODEL_DIR")',
        "```",
        "",
        "## Training",
        "",
    ]
    data = training.get("data", {})
    timings = training.get("timings", {})
    params = training.get("params", {})
    settings = training.get("settings", {})
    machine = training.get("machine", {}).get("start", {})
    lines += [
        f"- data: `{data_pattern}`: {data.get('train_samples', '-')} training samples, "
        f"{data.get('heldout_samples', 0)} held out for FID, rejected records skipped: {data.get('rejected', {})}",
        f"- kinds: {data.get('kinds', {})}; duplicated pairs ({data.get('ground_truth', '-')}): training samples "
        f"per copy count {data.get('duplicated_samples_by_copies', '-')}",
        f"- resolution {settings.get('resolution', '-')} px; parameters: "
        + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in params.items()),
        f"- VAE: {settings.get('vae', {})}",
        f"- text encoder: {settings.get('text_encoder', {})}",
        f"- UNet: {settings.get('unet', {})}",
        f"- scheduler: {settings.get('scheduler', {})}; latent scaling_factor {_f(training.get('scaling_factor'), 4)}",
        f"- seed {training.get('seed', '-')}; final losses {training.get('final_losses', {})}",
        "- time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        f"- machine: {machine.get('cpu', '-')}, {machine.get('cpu_count', '-')} cores, "
        f"{machine.get('memory_gib', '-')} GiB, torch {machine.get('torch', '-')} on {machine.get('device', '-')} "
        f"({machine.get('torch_threads', '-')} threads); load average at start {machine.get('load_average', '-')}, "
        f"at end {training.get('machine', {}).get('end_load_average', '-')}",
        "",
    ]
    if mem is None:
        lines += ["Memorization not measured (run `copyguard lab-model --eval-only`).", ""]
        return "\n".join(lines)
    ev = mem.get("eval") or {}
    mag = mem.get("magnitude") or {}
    fid = mem.get("fid") or {}
    thr = float(mem.get("threshold", 0.5))
    lines += [
        "## Memorization (measured by `copyguard lab-model --eval-only`)",
        "",
        f"Each prompt sampled with {ev.get('seeds', '-')} seeds, DDIM {ev.get('steps', '-')} steps, guidance "
        f"{ev.get('guidance_scale', '-')}, at {mem.get('resolution', '-')} px. *SSCD own*: cosine of the SSCD",
        "descriptor (sscd_disc_mixup) between a generation and its prompt's training image(s); *nearest-train*:",
        "the highest cosine over the whole training set; *nL2*: pixel distance to the nearest training image",
        "over the mean distance to its 50 nearest (Chen et al. 2024; lower = closer to a copy). `copies` = how",
        "many times the image-caption pair is in the training data (samples sharing both its image group and",
        f"its caption group). Memorized = SSCD > {thr:g} (calibrated below).",
        "",
        memorization_table(mem),
        "",
        *_duplicated_lines(mem),
        f"- first-step text-conditional magnitude (Wen et al. 2024), duplicated (>= 25 copies) vs unique "
        f"prompts: {_auc(mag)}",
        f"- FID against held-out real images: {_fid(fid)}",
        "",
        "### Threshold calibration (SSCD at the model's resolution)",
        "",
        _calibration(mem.get("calibration") or {}),
        "",
        f"Measured in {_f((mem.get('timings') or {}).get('total_s'), 0)} s.",
        "",
    ]
    if mem.get("by_copies"):
        lines += [f"![share of generations over the threshold, per duplication count]({CHART})", ""]
    if mem.get("generations"):
        lines += [
            "Per row a training image, then its prompt's generations (duplicated prompts first, then unique ones):",
            "",
            "![training images and generations](memorization.png)",
            "",
        ]
    return "\n".join(lines)


def _auc(mag: dict[str, Any]) -> str:
    if mag.get("auc") is None:
        return f"not measured ({mag.get('reason', 'no magnitude figures in the summary')})"
    return f"ROC AUC {_f(mag['auc'])} ({mag.get('positives', '-')} vs {mag.get('negatives', '-')} prompts)"


def _fid(fid: dict[str, Any]) -> str:
    if fid.get("fid") is None:
        return f"not measured ({fid.get('reason', 'no FID in the summary')})"
    return (
        f"{_f(fid['fid'], 1)} ({fid.get('images', '-')} images; high at this size and count: compare runs, "
        "not absolute values)"
    )


def _duplicated_lines(mem: dict[str, Any]) -> list[str]:
    """The headline: duplicated pairs against unique prompts, or why that comparison is missing."""
    dup = mem.get("duplicated") or {}
    if dup.get("measured") is False:
        return [f"- {dup.get('reason', 'no duplicated pairs found')}"]
    line = _summary(mem)
    if line:
        return [line]
    by_copies = mem.get("by_copies") or {}
    if not any(_order(k) < 1 << 30 for k in by_copies):
        return ["- no duplicated pairs found: memorization of duplicated pairs not measured"]
    unique = (by_copies.get("unique") or {}).get("sscd_own")
    if unique is None:
        return ["- no unique prompts measured: duplicated pairs cannot be compared with unique prompts"]
    return ["- no pair with >= 25 copies: see the table for the counts the data has"]


CHART = "memorization_by_copies.png"


def _summary(mem: dict[str, Any]) -> str:
    """One line: the share over the threshold for heavily duplicated pairs against unique prompts ("" if
    the summary holds no such comparison)."""
    key = next((k for k in mem if k.startswith("dup_ge")), None)
    unique = ((mem.get("by_copies") or {}).get("unique") or {}).get("sscd_own")
    dup = (mem.get(key) or {}).get("sscd_own") if key else None
    if dup is None or unique is None:
        return ""
    over = _over(mem)
    return (
        f"- duplicated pairs with >= {key[len('dup_ge') :]} copies: **{_f(dup.get(over), 1)} %** of "
        f"generations over {float(mem.get('threshold', 0.5)):g} (mean SSCD {_f(dup.get('mean'))}, Top5% "
        f"{_f(dup.get('top5pct'))}); unique prompts: **{_f(unique.get(over), 1)} %**"
    )


def _over(mem: dict[str, Any]) -> str:
    """The key of the share over the calibrated threshold in a metrics bucket."""
    return f"pct_gt_{float(mem.get('threshold', 0.5)):g}"


def write_memorization_chart(mem: dict[str, Any], path: Path) -> None:
    """Bar chart of the share of generations over the threshold and the mean SSCD, per duplication count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_copies = {n: b for n, b in (mem.get("by_copies") or {}).items() if (b or {}).get("sscd_own")}
    if not by_copies:  # nothing measured: no chart (the card says why)
        path.unlink(missing_ok=True)
        return
    names = sorted(by_copies, key=_order)
    share = [by_copies[n]["sscd_own"].get(_over(mem), 0.0) for n in names]
    mean = [by_copies[n]["sscd_own"].get("mean", 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    ax.bar(names, share, color="#c0504d")
    ax.set_xlabel("copies in the training data")
    ax.set_ylabel(f"% SSCD > {float(mem.get('threshold', 0.5)):g}")
    ax.set_ylim(0, 100)
    twin = ax.twinx()
    twin.plot(names, mean, "ko-", label="mean SSCD")
    twin.set_ylim(0, 1)
    twin.set_ylabel("mean SSCD (own image)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
