"""The whole pre-release memorization audit as one call: :func:`run_audit`.

It checks the inputs and the gate conditions before any work (a condition on a metric the audit will not
measure is a :class:`UsageError`), then detects, explains, generates and measures
(:class:`copyguard.mitigation.audit_run.AuditJob`, which resumes an earlier run in the same folder),
evaluates the gate (:mod:`.audit_gate`), adds the most similar generations and the run facts
(:mod:`.audit_facts`) and writes ``report.json`` and ``report.html`` (:mod:`.audit_report`).
``copyguard audit`` is a thin command line over it; a library caller gets the same gate::

    from copyguard.mitigation import AuditConfig, run_audit

    result = run_audit(AuditConfig(fail_on=["share_above_0.5>1"]), "sd-model/", "curated/index",
                       "prompts.jsonl", "audit-out/")
    print(result.summary())
    raise SystemExit(result.exit_code)  # 0: the gate passed, 1: it failed

Several processes (``accelerate launch``) share the generation; only the main process measures, gates and
writes the reports, the others get an empty :class:`AuditResult` that passes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copyguard.common.errors import UsageError
from copyguard.common.fileops import expand_paths
from copyguard.curation.index import TrainingIndex
from copyguard.curation.index_shards import load_index
from copyguard.mitigation.audit_facts import gate_details, run_facts, top_similar
from copyguard.mitigation.audit_gate import (
    GateResult,
    check_measurable,
    evaluate_gate,
    gate_section,
    parse_conditions,
)
from copyguard.mitigation.audit_report import write_reports
from copyguard.mitigation.audit_run import AuditJob
from copyguard.mitigation.config import AuditConfig
from copyguard.mitigation.evaluation.measure import load_training_images
from copyguard.mitigation.prompts import PromptRecord, read_prompt_file

__all__ = ["AuditResult", "load_lora", "run_audit"]

log = logging.getLogger(__name__)
# generations listed in report.json's ``top_similar`` and shown in report.html's "Most similar generations"
TOP_SIMILAR = 12


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`run_audit`.

    ``report``: the content of ``report.json`` (empty on a process other than the main one); ``gate``: one
    :class:`~copyguard.mitigation.audit_gate.GateResult` per condition of ``audit.fail_on``; ``out``: the
    audit folder.
    """

    report: dict[str, Any]
    gate: list[GateResult] = field(default_factory=list)
    out: Path = Path(".")

    @property
    def failed(self) -> list[GateResult]:
        """The conditions that hold, i.e. that fail the gate."""
        return [r for r in self.gate if r.failed]

    @property
    def passed(self) -> bool:
        """True when no gate condition holds."""
        return not self.failed

    @property
    def exit_code(self) -> int:
        """The process exit code of the audit: 0 the gate passed, 1 it failed."""
        return 0 if self.passed else 1

    def summary(self) -> str:
        """The lines ``copyguard audit`` prints: counts, headline metrics, the gate's verdict ("" off-main)."""
        if not self.report:
            return ""
        metrics = self.report["metrics"]
        det, none = metrics["detection"], metrics["settings"]["none"]["overall"]
        line = f"audited {det['prompts']} prompts ({det['flagged']} flagged) -> {self.out / 'report.html'}"
        if self.report["config"]["similarity"] == "sscd":
            line += f"; no mitigation: Top5% {none['top5pct']:.3f}, %>0.5 {none['pct_gt_0.5']:.1f}"
        if self.passed:
            return f"{line}\ngate passed"
        return "\n".join([line, "gate FAILED:", *(f"  {r.describe()}" for r in self.failed)])


def _lora_dir(path: str) -> Path:
    """The folder holding the LoRA weights: RUN_DIR itself, or its ``lora``/``final`` subfolder."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"--lora {path}: folder not found")
    for folder in (root, root / "lora", root / "final"):
        if folder.is_dir() and (any(folder.glob("*lora*.safetensors")) or any(folder.glob("*lora*.bin"))):
            return folder
    raise UsageError(f"--lora {path}: no LoRA weights (*lora*.safetensors) in it or its lora/ subfolder")


def load_lora(pipe: Any, path: str) -> None:
    """``pipe.load_lora_weights``; a LoRA that does not fit the model is a one-line UsageError."""
    folder = _lora_dir(path)
    quiet = logging.getLogger("diffusers.loaders")  # it logs the failure at length; we report one line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        pipe.load_lora_weights(str(folder))
    except Exception as exc:  # diffusers/peft raise ValueError, RuntimeError (size mismatch), KeyError...
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        detail = next((ln for ln in lines if "mismatch" in ln), lines[0])[:300]
        raise UsageError(f"the LoRA in {folder} does not fit the model: {detail}") from None
    finally:
        quiet.setLevel(level)
    adapters = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {"?": ["?"]}
    if not any(adapters.values()):
        raise UsageError(f"the LoRA in {folder} does not fit the model: none of its weights were loaded")


def _load_pipeline(model: str | Path | Any, device: str | None, lora: str | Path | None) -> Any:
    """A diffusers folder loaded as the AMG pipeline on ``device`` (default: Accelerate's), or ``model``."""
    if isinstance(model, str | Path):
        import torch
        from accelerate import PartialState

        from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
        from copyguard.mitigation.sd_loader import load_sd_pipeline

        # cpu=True makes every launched process its own rank on a machine without CUDA (gloo); a bare
        # PartialState() there sees one process per worker, and each would run the whole audit.
        device = device or str(PartialState(cpu=not torch.cuda.is_available()).device)
        model = load_sd_pipeline(model, device, pipeline_cls=StableDiffusionAMGPipeline)
    if lora:
        load_lora(model, str(lora))
    return model


def _path(value: Any) -> str | None:
    return str(Path(value).resolve()) if isinstance(value, str | Path) else None


def _write(report: dict[str, Any], out: Path, train_images: str | None, limit: int) -> None:
    """``report.json`` and ``report.html``, with the nearest training images of the most similar generations
    and of the flagged prompts shown."""
    shown = sorted((r for r in report["prompts"] if r["flagged"]), key=lambda r: -r["score"])[:limit]
    keys = {g["nearest_key"] for r in shown for gens in r["generations"].values() for g in gens}
    keys |= {g["nearest_key"] for g in report.get("top_similar", [])}
    keys -= {None}
    train = load_training_images(train_images, keys) if train_images and keys else {}
    write_reports(report, out, train)


def run_audit(
    config: AuditConfig,
    model: str | Path | Any,
    index: str | Path | TrainingIndex,
    prompts: str | Path | Sequence[PromptRecord],
    out: str | Path,
    *,
    reference_prompts: str | Path | Sequence[str] | None = None,
    real_images: str | None = None,
    lora: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit ``model`` for memorization into ``out``, gate it on ``config.fail_on``, write the reports.

    ``model``: a diffusers Stable Diffusion folder (loaded as the AMG pipeline on ``device``, default
    Accelerate's) or a loaded pipeline; ``lora``: a training run's folder whose LoRA weights are loaded onto
    it. ``index``: the curation job's training-set index (folder or loaded). ``prompts``: a prompt file or
    records; ``reference_prompts``: non-memorized prompts (file or texts) that calibrate the detection
    threshold. ``real_images``: a shard glob for FID. Input mistakes raise :class:`UsageError` before any work.
    Re-running into the same ``out`` with the same inputs and settings reuses the finished prompts.
    """
    records = read_prompt_file(prompts) if isinstance(prompts, str | Path) else list(prompts)
    if isinstance(reference_prompts, str | Path):
        references: list[str] | None = [r.prompt for r in read_prompt_file(reference_prompts)]
    else:
        references = list(reference_prompts) if reference_prompts else None
    if real_images and not expand_paths(real_images):
        raise UsageError(f"--real-images {real_images!r} matches no file")
    if "prompt-opt" in config.mitigations and config.prompt_opt.l_target is None and not references:
        raise UsageError("mitigation prompt-opt needs --reference-prompts or audit.prompt_opt.l_target")
    conditions = parse_conditions(config.fail_on, config.settings, config.gate_on)
    check_measurable(
        conditions,
        similarity=config.similarity,
        has_real_images=bool(real_images),
        has_labels=len({r.label for r in records if r.label is not None}) == 2,
        has_clip=bool(config.clip_model),
    )
    train_images, index_path = config.train_images, _path(index)
    if isinstance(index, str | Path):
        shards = str(Path(index).parent / "shards" / "*.tar")
        if train_images is None and expand_paths(shards):  # the curate job's OUT/shards next to OUT/index
            train_images = shards
        index = load_index(str(index))
    pipe = _load_pipeline(model, device, lora)
    identity = {  # part of the resume fingerprint (all but real_images) and shown in the report
        "model": _path(model) or getattr(pipe, "name_or_path", None) or type(pipe).__name__,
        "lora": _path(lora) if lora else None,
        "index": index_path,
        "prompts": _path(prompts),
        "reference_prompts": str(reference_prompts) if isinstance(reference_prompts, str | Path) else None,
        "real_images": real_images,
        "training_images": train_images,
    }
    job = AuditJob(pipe, index, config, out, identity=identity, train_images=train_images, progress=progress)
    report = job.run(records, references, real_images)
    if not report:  # not the main process
        return AuditResult({}, [], Path(out))
    gate = evaluate_gate(conditions, report["metrics"])
    report["gate"] = gate_details(gate_section(gate), gate)
    report["top_similar"] = top_similar(report["prompts"], config.similarity, TOP_SIMILAR)
    report["run"] = run_facts(identity, report["config"], len(index))
    _write(report, Path(out), train_images, config.report_flagged_max)
    return AuditResult(report, gate, Path(out))
