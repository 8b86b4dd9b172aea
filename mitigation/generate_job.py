"""The ``generate`` job as one call: :func:`run_generate` samples images with a mitigation into a folder.

``copyguard generate`` is a thin command line over it; a library caller gets the same checks and files::

    from copyguard.mitigation import GenerateConfig, run_generate

    result = run_generate(GenerateConfig(mitigation="amg"), "sd-model/", ["a photo of a dog"], "gen-out/",
                          index="curated/index")
    print(result.summary())

It writes ``OUT/images/p<prompt>_s<seed>.png``, ``OUT/generations.jsonl`` (one record per image: prompt,
seed, mitigation, the AMG sigma trace...) and ``OUT/config.json``. Input mistakes (an unknown device, a
seed torch cannot take, an output path that is a file, an earlier run's outputs without ``overwrite``)
raise :class:`UsageError` before the model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.common.outputs import check_output_dir
from copyguard.mitigation.config import DetectConfig, GenerateConfig
from copyguard.mitigation.detect_job import check_device
from copyguard.mitigation.prompts import PromptRecord, read_prompt_file

__all__ = ["GenerateResult", "check_seeds", "run_generate"]

log = logging.getLogger(__name__)

# torch.Generator.manual_seed takes any integer in [-2**63, 2**64).
SEED_MIN, SEED_END = -(2**63), 2**64
OUTPUTS = ("generations.jsonl", "config.json", "images")


@dataclass(frozen=True)
class GenerateResult:
    """The outcome of :func:`run_generate`: one record per image (as in ``generations.jsonl``, with its
    ``image`` path relative to ``out``), the output folder and the mitigation used."""

    records: list[dict[str, Any]]
    out: Path
    mitigation: str

    def summary(self) -> str:
        """The line ``copyguard generate`` prints."""
        return f"wrote {len(self.records)} images ({self.mitigation}) to {self.out}"


def check_seeds(seeds: Sequence[int]) -> None:
    """Every seed must fit torch's generator (``[-2**63, 2**64)``); otherwise a one-line UsageError."""
    bad = [s for s in seeds if not SEED_MIN <= s < SEED_END]
    if bad:
        raise UsageError(f"seed {bad[0]} is out of range: seeds must lie in [-2**63, 2**64)")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an earlier run's outputs unless ``overwrite``; with it, delete them. Checks writability."""
    check_output_dir(out)
    images = out / "images"
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and images.exists() and not images.is_dir():
        raise UsageError(f"--output {out}: {images} is a file, not a folder")
    if existing and not overwrite:
        raise UsageError(
            f"--output {out} already holds generations ({', '.join(existing)}); pass --overwrite"
        )


def _clear(out: Path) -> None:
    for name in ("generations.jsonl", "config.json"):
        (out / name).unlink(missing_ok=True)
    if (out / "images").is_dir():
        for png in (out / "images").glob("p*_s*.png"):
            png.unlink()


def _load(model: str | Path | Any, device: str | None) -> Any:
    if not isinstance(model, str | Path):
        return model
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.mitigation.sd_loader import load_sd_pipeline

    device = None if device == "auto" else device
    return load_sd_pipeline(model, device, pipeline_cls=StableDiffusionAMGPipeline)


def _calibrate(pipe: Any, cfg: GenerateConfig, refs: list[str]) -> None:
    """Set prompt-opt's ``l_target`` and AMG's gate threshold from reference prompts where they are unset."""
    from copyguard.mitigation.detect import Detector
    from copyguard.mitigation.prompt_opt import calibrate_l_target

    detect_cfg = DetectConfig(num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    if cfg.mitigation == "prompt-opt" and cfg.prompt_opt.l_target is None:
        cfg.prompt_opt.l_target = calibrate_l_target(
            pipe, refs, quantile=cfg.prompt_opt.calibration_quantile, detect_config=detect_cfg
        )
        log.info("prompt-opt l_target %.4f from %d reference prompts", cfg.prompt_opt.l_target, len(refs))
    if cfg.mitigation == "amg" and cfg.amg.gated and cfg.amg.gate_threshold is None:
        cfg.amg.gate_threshold = Detector(pipe, detect_cfg, progress=False).calibrate(refs)
        log.info("AMG gate threshold %.4f from %d reference prompts", cfg.amg.gate_threshold, len(refs))


def _texts(prompts: str | Path | Sequence[str] | Sequence[PromptRecord]) -> list[str]:
    if isinstance(prompts, str | Path):
        return [r.prompt for r in read_prompt_file(prompts)]
    return [p.prompt if isinstance(p, PromptRecord) else str(p) for p in prompts]


def run_generate(
    config: GenerateConfig,
    model: str | Path | Any,
    prompts: str | Path | Sequence[str] | Sequence[PromptRecord],
    out: str | Path,
    *,
    index: str | Path | Any = None,
    reference_prompts: str | Path | Sequence[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> GenerateResult:
    """Generate one image per (prompt, seed of ``config.seeds``) with ``config.mitigation`` into ``out``.

    ``model``: a diffusers Stable Diffusion folder (loaded as the AMG pipeline on ``device``, default CUDA
    when present) or a loaded pipeline. ``prompts``: a prompt file, texts or records. ``index``: the
    curation job's training-set index (folder or loaded; ``amg`` needs it). ``reference_prompts``:
    non-memorized prompts (file or texts) that calibrate prompt-opt's ``l_target`` and AMG's gate threshold
    where the config leaves them unset (``config`` is updated). ``overwrite``: replace an earlier run's
    outputs in ``out`` (without it they are a UsageError).
    """
    from copyguard.common.runtime import progress_bar
    from copyguard.mitigation.generate import generate_images

    out = Path(out)
    check_seeds(config.seeds)
    check_device(device)
    _prepare_out(out, overwrite)
    texts = _texts(prompts)
    if not texts:
        raise UsageError("no prompts to generate from")
    refs = _texts(reference_prompts) if reference_prompts is not None else None
    if config.mitigation == "amg" and index is None:
        raise UsageError("mitigation 'amg' needs the training-set index (--index OUT/index)")
    if isinstance(index, str | Path):
        from copyguard.curation.index_shards import load_index

        index = load_index(str(index))
    pipe = _load(model, device)
    if refs:
        _calibrate(pipe, config, refs)
    if config.mitigation == "prompt-opt" and config.prompt_opt.l_target is None:
        raise UsageError("mitigation 'prompt-opt' needs l_target (set it, or calibrate on reference prompts)")
    items = generate_images(pipe, texts, config, index=index)
    total = len(texts) * len(config.seeds)
    _clear(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for item in progress_bar(items, total=total, desc="generate", unit="img", enabled=progress):
        name = f"images/p{item.prompt_index:05d}_s{item.seed}.png"
        item.image.save(out / name)
        records.append({**item.record, "image": name})
    atomic_write(
        str(out / "generations.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )
    atomic_write(str(out / "config.json"), json.dumps(config.model_dump(mode="json"), indent=2))
    return GenerateResult(records, out, config.mitigation)
