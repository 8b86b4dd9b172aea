"""What detection, Anti-Memorization Guidance and prompt optimization cost on a pipeline, against plain sampling.

The variants alternate within each round on the same pipeline, seed and size; a cost is the median over
rounds of the per-round time ratio to its plain counterpart. Detection: the first-step text-conditional
noise magnitude (Wen et al., ICLR 2024) for 1 and 8 prompts, against one classifier-free-guidance
UNet call and a 50-step generation. AMG (Chen et al., CVPR 2024, Eq. 10-17): gated by the detection
threshold on a prompt below it, ungated, and on a memorized prompt. Prompt-embedding optimization (Wen et
al., ICLR 2024): per AdamW iteration, 10 iterations, and followed by its generation. On any diffusers Stable
Diffusion pipeline and a curation index, with ``cal`` from ``calibrate_on_prompts`` (:mod:`.calibrate`)::

    report = measure_model(pipe, index, memorized="a memorized caption", steps=25, size=512, rounds=2,
                           gate=cal.threshold, l_target=cal.l_target(), forced_memorized=False)

:func:`measure_random_weights` times an architecture with random weights (AMG's worst case forced).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from copyguard.common.timing import median_ratio, time_rounds

__all__ = [
    "DETECTION_VARIANTS",
    "GOAL_GATED",
    "GOAL_MEMORIZED",
    "REFERENCE_PROMPTS",
    "UNIQUE_PROMPT",
    "cost_variants",
    "describe_output",
    "detection_costs",
    "detection_variants",
    "goals",
    "measure_model",
    "measure_random_weights",
    "parameter_counts",
]

# The acceptable slow-down of gated AMG on unflagged prompts, and of AMG on memorized ones.
GOAL_GATED, GOAL_MEMORIZED = 1.15, 3.0
UNIQUE_PROMPT = "a photo of a small red house by the river"
REFERENCE_PROMPTS = [
    f"a photo of a {w} {n}" for w in ("red", "blue", "old", "small") for n in ("cat", "dog", "tree", "car")
]
DETECTION_VARIANTS = ("unet_cfg_eval", "detect_first_step_1prompt", "detect_first_step_batch8")
# AMG with every term at every step: lambda_t below any sigma (G_spe, G_dup fire) and c3 > 0 (G_sim fires).
WORST_CASE_AMG = {"lambda_base": -10.0, "lambda_amp": 0.0, "c3_offset": -10.0}


def goals(ratios: dict[str, float]) -> dict[str, bool]:
    """Whether AMG's slow-downs are within :data:`GOAL_GATED` and :data:`GOAL_MEMORIZED`."""
    return {
        "amg_gated_unflagged_le_1.15": ratios["amg_gated_unflagged_vs_plain"] <= GOAL_GATED,
        "amg_memorized_le_3": ratios["amg_memorized_vs_plain"] <= GOAL_MEMORIZED,
    }


def parameter_counts(pipe: Any) -> dict[str, int]:
    """Parameters of the pipeline's UNet, VAE and text encoder."""
    return {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "vae", "text_encoder")}


def _amg_pipeline(pipe: Any) -> Any:
    """``pipe`` as a ``StableDiffusionAMGPipeline`` (the same components), so that it takes ``amg=``."""
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline

    if isinstance(pipe, StableDiffusionAMGPipeline):
        return pipe
    amg = StableDiffusionAMGPipeline(**pipe.components, requires_safety_checker=False)
    amg.set_progress_bar_config(disable=True)
    return amg


def detection_variants(
    pipe: Any, size: int, prompt: str = UNIQUE_PROMPT, seed: int = 0
) -> dict[str, Callable]:
    """:data:`DETECTION_VARIANTS`: one CFG UNet call (uncond, cond) at the first step of ``size`` px latents,
    and first-step detection of a 50-step schedule for ``prompt`` and for 8 variants of it in one batch."""
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect import Detector
    from copyguard.mitigation.magnitude import initial_latents, latent_shape
    from copyguard.mitigation.prompts import encode_prompts

    dev = pipe.unet.device
    with torch.no_grad():
        e = encode_prompts(pipe, [prompt, ""], dev)
        sigma = float(pipe.scheduler.init_noise_sigma)
        x = initial_latents(seed, latent_shape(pipe, size, size), init_noise_sigma=sigma).to(
            dev, pipe.unet.dtype
        )
        t, pair = torch.tensor(999, device=dev), torch.cat([e[1:], e[:1]])

    def unet_cfg() -> Any:
        with torch.no_grad():
            return pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=pair).sample

    cfg = {b: DetectConfig(num_inference_steps=50, height=size, width=size, batch_size=b) for b in (1, 8)}
    det = {b: Detector(pipe, c, progress=False) for b, c in cfg.items()}
    return {
        "unet_cfg_eval": unet_cfg,
        "detect_first_step_1prompt": lambda: det[1].score([prompt]),
        "detect_first_step_batch8": lambda: det[8].score([f"{prompt} {i}" for i in range(8)]),
    }


def detection_costs(
    pipe: Any, size: int, rounds: int, device: str | None = None, stop: Callable[[], bool] | None = None
) -> dict[str, float]:
    """Milliseconds per prompt of first-step detection at batch 1 and 8 (``batch1``, ``batch8``), also as a
    multiple of one CFG UNet call (``unet_cfg_call_ms``), and the rounds timed, after one warm-up each."""
    variants = detection_variants(pipe, size)
    for fn in variants.values():
        fn()
    times, _ = time_rounds(variants, rounds, str(pipe.unet.device) if device is None else device, stop=stop)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    row = {"unet_cfg_call_ms": ms["unet_cfg_eval"]}
    for b, key in ((1, "detect_first_step_1prompt"), (8, "detect_first_step_batch8")):
        row[f"batch{b}"] = ms[key] / b
        row[f"batch{b}_vs_unet_cfg_call"] = ms[key] / b / ms["unet_cfg_eval"]
        row[f"batch{b}_runs"] = len(times[key])
    return row


def cost_variants(
    pipe: Any,
    index: Any,
    *,
    memorized: str,
    steps: int,
    size: int,
    gate: float,
    l_target: float,
    forced_memorized: bool,
    short_steps: int | None = None,
    measure_50: bool = False,
    popt_iters: int = 10,
    seed: int = 0,
    embedder: Any = None,
) -> tuple[dict[str, Callable[[], Any]], Callable[[], Any]]:
    """The timed calls of one pipeline by name, and a warm-up call (it also loads AMG's torch SSCD).

    ``gate``: the detection threshold gated AMG uses; ``l_target``: prompt optimization's target loss;
    ``forced_memorized``: the memorized case runs AMG's worst case (every term at every step, for weights
    that memorize nothing), and the calibrated prompt-optimization and worst-case AMG variants are left out;
    ``short_steps``/``measure_50``: also time plain sampling at that many / 50 steps (see
    :func:`measure_model`); ``embedder``: AMG's differentiable SSCD (default: the one for the index).
    """
    from copyguard.mitigation.config import AMGConfig, PromptOptConfig
    from copyguard.mitigation.prompt_opt import optimize_prompts

    pipe = _amg_pipeline(pipe)
    hw = {"height": size, "width": size}
    kw = {**hw, "guidance_scale": 7.5, "output_type": "np"}

    def gen(prompt: str | None, n_steps: int = steps, **extra: Any) -> Any:
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipe(prompt, num_inference_steps=n_steps, generator=generator, **kw, **extra)

    amg = {"index": index, "embedder": embedder}
    gated = {"amg": AMGConfig.preset("paper", gated=True, gate_threshold=gate), **amg}
    ungated = {"amg": AMGConfig.preset("paper"), **amg}
    worst = {"amg": AMGConfig.preset("paper", **WORST_CASE_AMG), **amg}

    def popt(target: float, iters: int, then_generate: bool) -> Callable[[], Any]:
        def fn() -> Any:
            cfg = PromptOptConfig(max_iters=iters)
            r = optimize_prompts(
                pipe, [memorized], seed, l_target=target, config=cfg, num_inference_steps=steps, **hw
            )
            if then_generate:
                gen(None, prompt_embeds=r.prompt_embeds)
            return r.records[0]

        return fn

    detection = detection_variants(pipe, size, UNIQUE_PROMPT, seed)
    variants: dict[str, Callable[[], Any]] = {
        **detection,
        "plain_unique": lambda: gen(UNIQUE_PROMPT),
        "amg_gated_unique": lambda: gen(UNIQUE_PROMPT, **gated),
        "amg_ungated_unique": lambda: gen(UNIQUE_PROMPT, **ungated),
        "plain_memorized": lambda: gen(memorized),
        "amg_memorized": lambda: gen(memorized, **(worst if forced_memorized else gated)),
        "prompt_opt_worst_only": popt(0.0, popt_iters, False),
    }
    if not forced_memorized:
        variants["prompt_opt_calibrated"] = popt(l_target, 10, True)
        variants["amg_worst_memorized"] = lambda: gen(memorized, **worst)
    if short_steps:
        variants["plain_unique_short"] = lambda: gen(UNIQUE_PROMPT, short_steps)
    if measure_50:
        variants["plain_unique_50"] = lambda: gen(UNIQUE_PROMPT, 50)
    return variants, lambda: (gen(UNIQUE_PROMPT, 2, **gated), detection["unet_cfg_eval"]())


def describe_output(out: Any) -> Any:
    """What a timed call did: AMG's work counters and first trace summary, prompt optimization's record."""
    if getattr(out, "amg_stats", None) is not None:
        tr = out.traces[0]
        fired = {f"steps_{term}": sum(getattr(tr, term)) for term in ("g_spe", "g_dup", "g_sim")}
        return {"amg_stats": out.amg_stats, "flagged": tr.flagged, "magnitude": tr.magnitude, **fired}
    return dict(out.__dict__) if hasattr(out, "iterations") else None


def measure_model(
    pipe: Any, index: Any, *, rounds: int, device: str | None = None, **kw: Any
) -> dict[str, Any]:
    """Every timing and cost ratio of one pipeline (``kw``: :func:`cost_variants`'s) after one warm-up.

    A 50-step generation is measured (``measure_50``), extrapolated linearly from ``short_steps`` and
    ``steps``, or scaled from ``steps``; one prompt-optimization iteration (forward and backward of the CFG
    pair) is the worst-case run's time over ``popt_iters + 1``.
    """
    device = str(pipe.unet.device) if device is None else device
    variants, warm_up = cost_variants(pipe, index, **kw)
    warm_up()
    times, details = time_rounds(variants, rounds, device, describe=describe_output)
    med = {k: statistics.median(v) for k, v in times.items()}
    steps, short, iters = kw["steps"], kw.get("short_steps"), kw.get("popt_iters", 10)

    def per_round(a: str, b: str) -> float:  # never None: no timed call takes 0 s
        return median_ratio(times[a], times[b])

    if "plain_unique_50" in med:
        gen50, how = med["plain_unique_50"], "measured"
    elif short:
        per_step = (med["plain_unique"] - med["plain_unique_short"]) / (steps - short)
        gen50, how = (
            med["plain_unique"] + (50 - steps) * per_step,
            f"extrapolated from {short} and {steps} steps",
        )
    else:
        gen50, how = med["plain_unique"] * 50 / steps, f"measured at {steps} steps"
    popt_s = med["prompt_opt_worst_only"] / (iters + 1)
    ratios = {
        "detect_1prompt_vs_unet_cfg": per_round("detect_first_step_1prompt", "unet_cfg_eval"),
        "detect_batch8_per_prompt_vs_unet_cfg": per_round("detect_first_step_batch8", "unet_cfg_eval") / 8,
        "detect_1prompt_vs_50step_generation": med["detect_first_step_1prompt"] / gen50,
        "amg_gated_unflagged_vs_plain": per_round("amg_gated_unique", "plain_unique"),
        "amg_memorized_vs_plain": per_round("amg_memorized", "plain_memorized"),
        "amg_ungated_unique_vs_plain": per_round("amg_ungated_unique", "plain_unique"),
        "prompt_opt_iteration_vs_unet_cfg": popt_s / med["unet_cfg_eval"],
        "prompt_opt_worst_10iter_vs_50step_generation": popt_s * 11 / gen50,
    }
    if "prompt_opt_calibrated" in times:
        ratios["prompt_opt_calibrated_vs_plain"] = per_round("prompt_opt_calibrated", "plain_memorized")
        ratios["amg_worst_vs_plain"] = per_round("amg_worst_memorized", "plain_memorized")
    forced = kw["forced_memorized"]
    return {
        "steps": steps,
        "size": kw["size"],
        "rounds": rounds,
        "gate_threshold": kw["gate"],
        "l_target": kw["l_target"],
        "prompt_opt_iterations_measured": iters,
        "memorized_case": "forced worst case (every term every step)" if forced else "real memorized prompt",
        "seconds_median": med,
        "seconds_all": times,
        "generation_50_steps_s": gen50,
        "generation_50_steps_how": how,
        "ratios": ratios,
        "details": details,
        "goals": goals(ratios),
    }


def measure_random_weights(
    pipe: Any, index: Any, *, size: int, steps: int, references: Sequence[str] = REFERENCE_PROMPTS, **kw: Any
) -> dict[str, Any]:
    """:func:`measure_model` on a randomly initialised pipeline (``kw``: its ``rounds``, ``device``,
    ``popt_iters``, ``seed``, ``embedder``). The detection threshold calibrated on ``references`` at 1% FPR is
    raised above :data:`UNIQUE_PROMPT`'s score (with random weights which prompts pass is arbitrary, and gated
    AMG must be timed on an unflagged prompt); the memorized case is AMG's forced worst case."""
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect import Detector
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts

    pipe = _amg_pipeline(pipe)
    dcfg = DetectConfig(num_inference_steps=steps, height=size, width=size)
    gate = calibrate_on_prompts(pipe, list(references), dcfg, target_fpr=0.01).threshold
    gate = max(gate, 1.01 * Detector(pipe, dcfg, progress=False).score([UNIQUE_PROMPT])[0])
    return measure_model(
        pipe,
        index,
        memorized="a photo of a cat",
        steps=steps,
        size=size,
        gate=gate,
        l_target=0.5 * gate,
        forced_memorized=True,
        short_steps=2,
        **kw,
    )
