"""Costs of detection, AMG and prompt optimization against plain sampling (issue 5; Wen et al., ICLR 2024; Chen et al., CVPR 2024).

    python -m benchmarks.bench_mitigation [--quick] [--machine TAG] [--out DIR] [--model models/lab-small]
        [--index out/index] [--memorized-prompt TEXT] [--sd-size 128] [--sd-steps 10] [--rounds 2]

Measured side by side in one run, on each model, with torch at ``--threads`` threads (1 by default):

- **lab**: the ``small`` lab model (32 px) at 50 DDIM steps, with a prompt it memorizes (or the
  ``--memorized-prompt`` given) and a unique prompt.
- **sd15-arch**: Stable Diffusion 1.5's UNet and VAE architecture (``UNet2DConditionModel`` and
  ``AutoencoderKL`` from SD 1.5's published config values, written below), random weights, a 1-layer
  ``CLIPTextModel`` with hidden 768, at ``--sd-size`` px (default 128) and ``--sd-steps`` DDIM steps.
  Random weights memorize nothing, so its "memorized" case forces the worst case: the gate passes and
  lambda is lowered below any sigma, so G_spe, G_dup (where y_N exists) and G_sim fire at every step.

Figures (each the median over ``--rounds`` rounds; within a round every variant runs once, in a fixed order):

- first-step detection (§2, n = 1, text encoding included; one prompt and batched) vs one CFG UNet
  evaluation (the UNet call on the 2-sample uncond/cond batch) and vs a full 50-step generation (measured
  on lab; on sd15-arch extrapolated from runs at 2 and ``--sd-steps`` steps: fixed cost + 50 x per step);
- AMG (§6) vs plain sampling of the same prompt and seed: gated mode with an unflagged prompt (goal
  <= 1.15x), a memorized prompt (goal <= 3x), the same prompts ungated, and the worst case;
- prompt-embedding optimization (§4) vs plain sampling: the calibrated target and the worst case
  (``l_target = 0``: all 10 AdamW iterations).

Writes ``benchmarks/results/<machine>/mitigation.json`` and re-renders ``docs/mitigation.md``.
No GPU is used (none was lent to this task); ``--device cuda`` runs the same code on one.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import add_common_args, begin, setup_logging, write_result

__all__ = ["SD15_UNET", "SD15_VAE", "build_sd15_arch", "measure_model", "run"]

log = logging.getLogger("benchmarks.bench_mitigation")
ROOT = Path(__file__).resolve().parent.parent
GOAL_GATED = 1.15
LAB_SMALL_MEMORIZED = "George R.R. Martin Donates $10,000 to Wolf Sanctuary for a 13-Year-Old Fan"
GOAL_MEMORIZED = 3.0

# Stable Diffusion 1.5's published unet/config.json and vae/config.json values (diffusers names).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def build_sd15_arch(tokenizer_dir: str | Path, device: str = "cpu", seed: int = 0) -> Any:
    """A ``StableDiffusionAMGPipeline`` with SD 1.5's UNet/VAE architecture, random (seeded) weights and a
    1-layer hidden-768 CLIP text encoder; the tokenizer comes from ``tokenizer_dir`` (SD's CLIP ids)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=1,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    pipe = StableDiffusionAMGPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure_model(
    pipe: Any,
    index: Any,
    *,
    memorized: str,
    unique: str,
    steps: int,
    size: int,
    rounds: int,
    gate: float,
    l_target: float,
    forced_memorized: bool,
    short_steps: int | None = None,
    measure_50: bool = False,
    popt_iters: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """All timings of one model; see the module docstring. ``forced_memorized``: the worst-case AMG config
    for the memorized case (random weights memorize nothing)."""
    from copyguard.mitigation.config import AMGConfig, DetectConfig, PromptOptConfig
    from copyguard.mitigation.detect import Detector
    from copyguard.mitigation.magnitude import initial_latents, latent_shape
    from copyguard.mitigation.prompt_opt import optimize_prompts
    from copyguard.mitigation.prompts import encode_prompts

    kw = {"height": size, "width": size, "guidance_scale": 7.5, "output_type": "np"}

    def gen(prompt: str | None, n_steps: int = steps, **extra: Any) -> Any:
        g = torch.Generator("cpu").manual_seed(seed)
        return pipe(prompt, num_inference_steps=n_steps, generator=g, **kw, **extra)

    paper_gated = AMGConfig.preset("paper", gated=True, gate_threshold=gate)
    paper = AMGConfig.preset("paper")
    worst = AMGConfig.preset("paper", lambda_base=-10.0, lambda_amp=0.0, c3_offset=-10.0)
    mem_cfg = worst if forced_memorized else paper_gated
    amg_extra = {"index": index}

    shape = latent_shape(pipe, size, size)
    with torch.no_grad():
        e = encode_prompts(pipe, [unique, ""], pipe.unet.device)
        x = initial_latents(seed, shape, init_noise_sigma=float(pipe.scheduler.init_noise_sigma))
        x = x.to(pipe.unet.device, pipe.unet.dtype)
        t = torch.tensor(999, device=pipe.unet.device)

    def unet_cfg() -> Any:
        with torch.no_grad():
            return pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([e[1:], e[:1]])).sample

    det1 = Detector(pipe, DetectConfig(num_inference_steps=50, height=size, width=size), progress=False)
    det8 = Detector(
        pipe, DetectConfig(num_inference_steps=50, height=size, width=size, batch_size=8), progress=False
    )
    batch8 = [f"{unique} {i}" for i in range(8)]

    def popt(target: float, iters: int, then_generate: bool) -> Callable[[], Any]:
        def fn() -> Any:
            r = optimize_prompts(
                pipe, [memorized], seed, l_target=target, config=PromptOptConfig(max_iters=iters),
                num_inference_steps=steps, height=size, width=size,
            )  # fmt: skip
            if then_generate:
                gen(None, prompt_embeds=r.prompt_embeds)
            return r.records[0]

        return fn

    variants: dict[str, Callable[[], Any]] = {
        "unet_cfg_eval": unet_cfg,
        "detect_first_step_1prompt": lambda: det1.score([unique]),
        "detect_first_step_batch8": lambda: det8.score(batch8),
        "plain_unique": lambda: gen(unique),
        "amg_gated_unique": lambda: gen(unique, amg=paper_gated, **amg_extra),
        "amg_ungated_unique": lambda: gen(unique, amg=paper, **amg_extra),
        "plain_memorized": lambda: gen(memorized),
        "amg_memorized": lambda: gen(memorized, amg=mem_cfg, **amg_extra),
        "prompt_opt_worst_only": popt(0.0, popt_iters, False),
    }
    if not forced_memorized:
        variants["prompt_opt_calibrated"] = popt(l_target, 10, True)
    if not forced_memorized:
        variants["amg_worst_memorized"] = lambda: gen(memorized, amg=worst, **amg_extra)
    if short_steps:
        variants["plain_unique_short"] = lambda: gen(unique, short_steps)
    if measure_50:
        variants["plain_unique_50"] = lambda: gen(unique, 50)
    gen(unique, 2, amg=paper_gated, **amg_extra)  # warm-up: loads the torch SSCD, first-call allocations
    unet_cfg()
    times: dict[str, list[float]] = {k: [] for k in variants}
    extras: dict[str, Any] = {}
    for r in range(rounds):
        for name, fn in variants.items():
            sec, out = _timed(fn)
            times[name].append(sec)
            if r == 0:
                extras[name] = _extra(out)
            log.info("round %d %s: %.2f s", r, name, sec)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))  # noqa: E731
    if measure_50:
        gen50, gen50_how = med["plain_unique_50"], "measured"
    elif short_steps:
        per_step = (med["plain_unique"] - med["plain_unique_short"]) / (steps - short_steps)
        fixed = med["plain_unique"] - steps * per_step
        gen50, gen50_how = fixed + 50 * per_step, f"extrapolated from {short_steps} and {steps} steps"
    else:
        gen50, gen50_how = med["plain_unique"] * 50 / steps, f"measured at {steps} steps"
    ratios = {
        "detect_1prompt_vs_unet_cfg": per_round("detect_first_step_1prompt", "unet_cfg_eval"),
        "detect_batch8_per_prompt_vs_unet_cfg": per_round("detect_first_step_batch8", "unet_cfg_eval") / 8,
        "detect_1prompt_vs_50step_generation": med["detect_first_step_1prompt"] / gen50,
        "amg_gated_unflagged_vs_plain": per_round("amg_gated_unique", "plain_unique"),
        "amg_memorized_vs_plain": per_round("amg_memorized", "plain_memorized"),
        "amg_ungated_unique_vs_plain": per_round("amg_ungated_unique", "plain_unique"),
        # one AdamW iteration = forward + backward of the CFG pair; popt_iters iterations + 1 final forward
        "prompt_opt_iteration_vs_unet_cfg": med["prompt_opt_worst_only"]
        / (popt_iters + 1)
        / med["unet_cfg_eval"],
        "prompt_opt_worst_10iter_vs_50step_generation": med["prompt_opt_worst_only"]
        * 11
        / (popt_iters + 1)
        / gen50,
    }
    if "prompt_opt_calibrated" in times:
        ratios["prompt_opt_calibrated_vs_plain"] = per_round("prompt_opt_calibrated", "plain_memorized")
    if "amg_worst_memorized" in times:
        ratios["amg_worst_vs_plain"] = per_round("amg_worst_memorized", "plain_memorized")
    return {
        "steps": steps,
        "size": size,
        "rounds": rounds,
        "gate_threshold": gate,
        "l_target": l_target,
        "prompt_opt_iterations_measured": popt_iters,
        "memorized_case": "forced worst case (every term every step)"
        if forced_memorized
        else "real memorized prompt",
        "seconds_median": med,
        "seconds_all": times,
        "generation_50_steps_s": gen50,
        "generation_50_steps_how": gen50_how,
        "ratios": ratios,
        "details": extras,
        "goals": {
            "amg_gated_unflagged_le_1.15": ratios["amg_gated_unflagged_vs_plain"] <= GOAL_GATED,
            "amg_memorized_le_3": ratios["amg_memorized_vs_plain"] <= GOAL_MEMORIZED,
        },
    }


def _extra(out: Any) -> Any:
    """What a variant did (AMG work counters and trace summary, prompt-opt iterations)."""
    if hasattr(out, "amg_stats") and out.amg_stats is not None:
        tr = out.traces[0]
        return {
            "amg_stats": out.amg_stats,
            "flagged": tr.flagged,
            "magnitude": tr.magnitude,
            **{f"steps_{term}": sum(getattr(tr, term)) for term in ("g_spe", "g_dup", "g_sim")},
        }
    if hasattr(out, "iterations"):
        return dict(out.__dict__)
    return None


def run(
    machine: str,
    model: str | None,
    index_dir: str,
    *,
    memorized: str | None,
    sd_size: int,
    sd_steps: int,
    lab_steps: int,
    rounds: int,
    sd_rounds: int = 1,
    sd_popt_iters: int = 2,
    tokenizer: str | None = None,
    argv: list[str] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Both models (``model=None``: sd15-arch only, tokenizer required); returns the result JSON body."""
    from copyguard.curation.index import TrainingIndex
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.mitigation.sd_loader import load_sd_pipeline

    report = begin("mitigation", "benchmarks.bench_mitigation", argv, machine, quick, torch.get_num_threads())
    git = report["git"]
    report["commit"] = (git["commit"] or "unknown")[:7] + ("+dirty" if git["dirty"] else "")
    index = TrainingIndex.load(index_dir)
    unique = "a photo of a small red house by the river"
    report["models"] = {}
    refs = [f"a photo of a {w} {n}" for w in ("red", "blue", "old", "small") for n in ("cat", "dog", "tree", "car")]  # fmt: skip
    if model is not None:
        pipe = load_sd_pipeline(model, "cpu", pipeline_cls=StableDiffusionAMGPipeline)
        size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        if not memorized:
            raise SystemExit("give --memorized-prompt: a caption the lab model memorizes (a 50-copy pair's)")
        mem = memorized
        cal = calibrate_on_prompts(pipe, refs, DetectConfig(num_inference_steps=lab_steps), target_fpr=0.01)
        gate, l_target = cal.threshold, cal.l_target()
        res = measure_model(
            pipe, index, memorized=mem, unique=unique, steps=lab_steps, size=size, rounds=rounds, gate=gate,
            l_target=l_target, forced_memorized=False, measure_50=True,
        )  # fmt: skip
        res.update(name="lab", model=str(model), memorized_prompt=mem, params=_params(pipe))
        report["models"]["lab"] = res
        tokenizer = tokenizer or str(Path(model) / "tokenizer")
        del pipe
    if tokenizer is None:
        raise SystemExit("sd15-arch needs --tokenizer (or --model, whose tokenizer is used)")
    pipe = build_sd15_arch(tokenizer)
    dcfg = DetectConfig(num_inference_steps=sd_steps, height=sd_size, width=sd_size)
    gate = calibrate_on_prompts(pipe, refs, dcfg, target_fpr=0.01).threshold
    res = measure_model(
        pipe, index, memorized="a photo of a cat", unique=unique, steps=sd_steps, size=sd_size, rounds=sd_rounds,
        gate=gate, l_target=0.5 * gate, forced_memorized=True, short_steps=2, popt_iters=sd_popt_iters,
    )  # fmt: skip
    res.update(name="sd15-arch", model="SD 1.5 UNet + VAE configs, random weights", params=_params(pipe))
    report["models"]["sd15-arch"] = res
    report["gpu"] = "No GPU was lent to this task: every figure is CPU"
    return report


def gated_recheck(
    pipe: Any, index: Any, *, unique: str, steps: int, size: int, rounds: int, gate: float
) -> dict:
    """Plain vs gated AMG on an unflagged prompt only, alternating ``rounds`` times (a tighter estimate of
    the gated overhead than the main loop's, whose rounds are minutes apart on a shared machine)."""
    from copyguard.mitigation.config import AMGConfig, DetectConfig
    from copyguard.mitigation.detect import Detector

    # random weights: which prompts pass the gate is arbitrary; what is measured is an unflagged prompt's cost
    dcfg = DetectConfig(num_inference_steps=steps, height=size, width=size)
    magnitude = Detector(pipe, dcfg, progress=False).score([unique])[0]
    gate = max(gate, 1.01 * magnitude)
    amg = AMGConfig.preset("paper", gated=True, gate_threshold=gate)
    kw = {"height": size, "width": size, "num_inference_steps": steps, "output_type": "np"}

    def gen(**extra: Any) -> Any:
        return pipe(unique, generator=torch.Generator("cpu").manual_seed(0), **kw, **extra)

    gen(amg=amg, index=index)  # warm-up
    plain, gated = [], []
    for _ in range(rounds):
        plain.append(_timed(gen)[0])
        sec, out = _timed(lambda: gen(amg=amg, index=index))
        gated.append(sec)
        assert not out.traces[0].flagged
    ratios = [g / p for g, p in zip(gated, plain, strict=True)]
    return {"steps": steps, "rounds": rounds, "plain_s": plain, "gated_s": gated,
            "ratio_median": statistics.median(ratios)}  # fmt: skip


def _params(pipe: Any) -> dict[str, int]:
    return {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "vae", "text_encoder")}


def _recheck_main(args: argparse.Namespace) -> int:
    import json

    from benchmarks.common import load_average, result_path
    from copyguard.common.fileops import atomic_write
    from copyguard.curation.index import TrainingIndex

    path = result_path(args.out, args.machine, "mitigation")
    result = json.loads(path.read_text())
    sd = result["models"]["sd15-arch"]
    pipe = build_sd15_arch(args.tokenizer or str(Path(args.model) / "tokenizer"))
    load = load_average()
    sd["gated_recheck"] = gated_recheck(
        pipe, TrainingIndex.load(args.index), unique="a photo of a small red house by the river", steps=sd["steps"],
        size=sd["size"], rounds=args.gated_recheck, gate=sd["gate_threshold"],
    )  # fmt: skip
    sd["gated_recheck"]["load_average"] = [load, load_average()]
    atomic_write(str(path), json.dumps(result, indent=2) + "\n")
    from benchmarks.render.mitigation import write_mitigation

    write_mitigation(args.out, args.machine, args.docs)
    print(sd["gated_recheck"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="lab model folder (default: the cached small one)")
    parser.add_argument("--index", default=None, help="training-set index (default: the cached curate index)")
    parser.add_argument(
        "--memorized-prompt",
        default=LAB_SMALL_MEMORIZED,
        help="a caption the lab model memorizes (default: a 50-copy pair of `sample-data --preset small`, "
        "seed 0, which `lab-model --preset small` reproduces)",
    )
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder for sd15-arch")
    parser.add_argument("--sd-size", type=int, default=128)
    parser.add_argument("--sd-steps", type=int, default=10)
    parser.add_argument("--lab-steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2, help="rounds on the lab model")
    parser.add_argument("--sd-rounds", type=int, default=1, help="rounds on sd15-arch")
    parser.add_argument("--sd-popt-iters", type=int, default=2, help="AdamW iterations timed on sd15-arch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-lab", action="store_true", help="sd15-arch only")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "mitigation.md"))
    parser.add_argument("--gated-recheck", type=int, default=0, metavar="ROUNDS",
                        help="only: add a plain-vs-gated re-measurement on sd15-arch (ROUNDS alternations) to "
                        "the existing mitigation.json")  # fmt: skip
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    quick = args.quick
    if (args.model is None or args.index is None) and not quick:
        from copyguard.pipelines.lab.cache import lab_setup

        model, _, index = lab_setup("small")
        args.model, args.index = args.model or str(model), args.index or str(index)
    if args.gated_recheck:
        return _recheck_main(args)
    missing = [p for p in (args.model, args.index) if p is None or not Path(p).exists()]
    if missing and not args.no_lab and quick:  # `run_all --quick` on a checkout without the artefacts
        log.warning(
            "skipped: %s not found (build the lab model and the curate index first)",
            ", ".join(str(m) for m in missing),
        )
        return 0
    if missing and not args.no_lab:
        print(
            f"error: {', '.join(str(m) for m in missing)} not found: build the lab model (`copyguard lab-model`) and the "
            "training-set index (`copyguard curate` on its data), or pass --model/--index",
            file=sys.stderr,
        )
        return 2
    sizes = dict(sd_size=64, sd_steps=3, lab_steps=5, rounds=1, sd_rounds=1, sd_popt_iters=1)  # --quick
    if not quick:
        sizes = {k: getattr(args, k) for k in sizes}
    result = run(
        args.machine, None if args.no_lab else args.model, args.index, memorized=args.memorized_prompt,
        tokenizer=args.tokenizer, argv=argv, quick=quick, **sizes,
    )  # fmt: skip
    write_result(result, args.out, args.machine, "mitigation")
    if not quick:
        from benchmarks.render.mitigation import write_mitigation

        write_mitigation(args.out, args.machine, args.docs)
    for name, res in result["models"].items():
        print(name, {k: round(v, 4) for k, v in res["ratios"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
