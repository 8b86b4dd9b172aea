"""The lab model's card (``MODEL_DIR/README.md``): what it was trained on, how, and how much it memorizes."""

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
    thr = mem["threshold"]
    key_thr = f"pct_gt_{thr:g}"
    has_train = any("sscd_train" in b for b in mem["by_copies"].values())
    head = (
        f"| copies | prompts | gens | SSCD own mean | Top5% | Top1 | % > {thr:g} | % > 0.5 |"
        + (f" nearest-train % > {thr:g} |" if has_train else "")
        + " nL2 mean | nL2 min | % nL2 < 1.6 |"
    )
    sep = "|" + "---|" * (head.count("|") - 1)
    rows = [head, sep]
    buckets = [(k, v) for k, v in mem["by_copies"].items() if k != "unique"]
    buckets.sort(key=lambda kv: int(kv[0]))
    if "unique" in mem["by_copies"]:
        buckets.append(("unique", mem["by_copies"]["unique"]))
    for name, b in buckets:
        own, nl2 = b.get("sscd_own", {}), b.get("nl2", {})
        row = (
            f"| {name} | {b.get('prompts', '-')} | {b['generations']} | {_f(own.get('mean'))} | "
            f"{_f(own.get('top5pct'))} | {_f(own.get('top1'))} | {_f(own.get(key_thr), 1)} | "
            f"{_f(own.get('pct_gt_0.5'), 1)} |"
        )
        if has_train:
            row += f" {_f(b.get('sscd_train', {}).get(key_thr), 1)} |"
        row += f" {_f(nl2.get('mean'), 2)} | {_f(nl2.get('min'), 2)} | {_f(nl2.get('pct_lt_1.6'), 1)} |"
        rows.append(row)
    return "\n".join(rows)


def _calibration(cal: dict[str, Any]) -> str:
    labels = {
        "vae_roundtrip": "VAE round trip of a training image (a copy)",
        "jpeg_q75": "JPEG q=75 re-encode (a copy)",
        "jpeg_q50": "JPEG q=50 re-encode (a copy)",
        "distinct_nearest": "nearest *other* training image",
        "distinct_pairs": "random pairs of distinct training images",
    }
    rows = [
        f"| pair | mean | 5th pct | median | 95th pct | % > {cal['threshold']:g} |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in labels.items():
        if key in cal:
            d = cal[key]
            rows.append(
                f"| {label} | {_f(d['mean'])} | {_f(d['p5'])} | {_f(d['p50'])} | {_f(d['p95'])} | "
                f"{_f(d['pct_gt_threshold'], 1)} |"
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
        "scratch** by `copyguard lab-model` on a copyguard sample data set whose planted duplicated",
        "image-caption pairs it is meant to memorize. A research artefact for testing memorization",
        "detection and mitigation, not an image generator.",
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
        f"- kinds: {data.get('kinds', {})}",
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
    ev = mem["eval"]
    mag = mem.get("magnitude", {})
    fid = mem.get("fid", {})
    lines += [
        "## Memorization (measured by `copyguard lab-model --eval-only`)",
        "",
        f"Each prompt sampled with {ev['seeds']} seeds, DDIM {ev['steps']} steps, guidance {ev['guidance_scale']}, at "
        f"{mem['resolution']} px. *SSCD own*: cosine of the SSCD descriptor (sscd_disc_mixup) between a",
        "generation and its prompt's training image(s); *nearest-train*: the highest cosine over the whole",
        "training set; *nL2*: pixel distance to the nearest training image over the mean distance to its",
        "50 nearest (algorithms.md §6.1; lower = closer to a copy). `copies` = how many times the pair is in",
        f"the training data. Memorized = SSCD > {mem['threshold']:g} (calibrated below).",
        "",
        memorization_table(mem),
        "",
        _summary(mem),
        f"- first-step text-conditional magnitude (algorithms.md §2), duplicated (>= 25 copies) vs unique prompts: "
        f"ROC AUC {_f(mag.get('auc'))} ({mag.get('positives', '-')} vs {mag.get('negatives', '-')} prompts)",
        f"- FID against held-out real images: {_f(fid.get('fid'), 1)} ({fid.get('images', 0)} images; "
        "high at this size and count: compare runs, not absolute values)",
        "",
        "### Threshold calibration (SSCD at the model's resolution)",
        "",
        _calibration(mem["calibration"]),
        "",
        f"Measured in {mem.get('timings', {}).get('total_s', 0):.0f} s.",
        "",
        f"![share of generations over the threshold, per duplication count]({CHART})",
        "",
        "Per row a training image, then its prompt's generations (duplicated prompts first, then unique ones):",
        "",
        "![training images and generations](memorization.png)",
        "",
    ]
    return "\n".join(lines)


CHART = "memorization_by_copies.png"


def _summary(mem: dict[str, Any]) -> str:
    """One line: the share over the threshold for heavily duplicated pairs against unique prompts."""
    key = next((k for k in mem if k.startswith("dup_ge")), None)
    unique = mem["by_copies"].get("unique", {})
    if key is None or not unique:
        return ""
    dup, over = mem[key]["sscd_own"], _over(mem)
    return (
        f"- duplicated pairs with >= {key[len('dup_ge') :]} copies: **{_f(dup[over], 1)} %** of "
        f"generations over {mem['threshold']:g} (mean SSCD {_f(dup['mean'])}, Top5% {_f(dup['top5pct'])}); "
        f"unique prompts: **{_f(unique['sscd_own'][over], 1)} %**"
    )


def _over(mem: dict[str, Any]) -> str:
    """The key of the share over the calibrated threshold in a metrics bucket."""
    return f"pct_gt_{mem['threshold']:g}"


def write_memorization_chart(mem: dict[str, Any], path: Path) -> None:
    """Bar chart of the share of generations over the threshold and the mean SSCD, per duplication count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(mem["by_copies"], key=lambda n: int(n) if n.isdigit() else 1 << 30)
    share = [mem["by_copies"][n]["sscd_own"][_over(mem)] for n in names]
    mean = [mem["by_copies"][n]["sscd_own"]["mean"] for n in names]
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    ax.bar(names, share, color="#c0504d")
    ax.set_xlabel("copies in the training data")
    ax.set_ylabel(f"% SSCD > {mem['threshold']:g}")
    ax.set_ylim(0, 100)
    twin = ax.twinx()
    twin.plot(names, mean, "ko-", label="mean SSCD")
    twin.set_ylim(0, 1)
    twin.set_ylabel("mean SSCD (own image)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
