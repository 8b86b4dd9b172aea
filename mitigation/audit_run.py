"""The audit's work: detect, explain, generate, measure (``copyguard audit``).

1. Detection (Wen et al., ICLR 2024) scores every prompt at the first step; the threshold comes from
   ``audit.detect_threshold``, the reference prompts (``detect.target_fpr``) or the documented default (see
   :class:`copyguard.mitigation.config.AuditConfig`).
2. Token attribution (Wen et al., ICLR 2024) for every flagged prompt.
3. ``seeds`` generations per prompt without mitigation and with each mitigation; each image's nearest
   training image through the index and its SSCD cosine (or pixel nL2 against the training shards).
4. Memorization metrics (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023) overall and per prompt group,
   FID against real images, CLIP alignment when configured, detection AUC when the prompt file has labels
   (:func:`copyguard.mitigation.audit_metrics.compute_metrics`).

Results are written as they come: one JSON line per finished prompt in ``AUDIT_DIR/results[.RANK].jsonl``
(images under ``AUDIT_DIR/images/``). ``audit_state.json`` fingerprints the inputs and settings; a re-run
with the same ``--output`` and the same fingerprint skips finished prompts, a different one is refused
(gate and report settings, :data:`REPORT_ONLY`, are not part of it: re-gating an audit costs no generation).
Pending prompts are split over processes with Accelerate (``PartialState.split_between_processes``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.common.runtime import progress_bar
from copyguard.curation.index import TrainingIndex
from copyguard.mitigation.attribution import token_attribution
from copyguard.mitigation.audit_metrics import compute_metrics
from copyguard.mitigation.config import AuditConfig, GenerateConfig
from copyguard.mitigation.detect import Detector, threshold_for_fpr
from copyguard.mitigation.evaluation.measure import NearestTraining, load_training_images
from copyguard.mitigation.generate import generate_images
from copyguard.mitigation.magnitude import robust_threshold
from copyguard.mitigation.prompt_opt import calibrate_l_target
from copyguard.mitigation.prompts import PromptRecord

__all__ = ["AuditJob", "load_training_images", "read_results"]

log = logging.getLogger(__name__)
STATE_FILE, DETECTION_FILE = "audit_state.json", "detection.json"
# settings that change only the gate or the report: a re-run with other values reuses the results
REPORT_ONLY = ("fail_on", "gate_on", "report_flagged_max", "explain_top", "fid_max_real", "clip_model")


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_results(out: Path) -> dict[int, dict[str, Any]]:
    """Finished prompts of every ``results*.jsonl`` by prompt index; a torn last line (a kill) is dropped."""
    done: dict[int, dict[str, Any]] = {}
    for path in sorted(out.glob("results*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: dropping an unfinished line (interrupted run)", path.name)
                continue
            done[int(row["index"])] = row
    return done


def _compact(out: Path) -> None:
    """Rewrite the results files with their complete lines only, so appends never follow a torn line."""
    for path in sorted(out.glob("results*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        good = [ln for ln in lines if _valid(ln)]
        if len(good) != len(lines) or (lines and not path.read_bytes().endswith(b"\n")):
            atomic_write(str(path), "".join(ln + "\n" for ln in good))


def _valid(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


class AuditJob:
    """One audit of ``records`` on ``pipe`` into ``out`` (see the module docstring)."""

    def __init__(
        self,
        pipe: Any,
        index: TrainingIndex,
        cfg: AuditConfig,
        out: str | Path,
        *,
        identity: dict[str, Any] | None = None,
        train_images: str | None = None,
        progress: bool = True,
    ) -> None:
        self.pipe, self.index, self.cfg, self.out = pipe, index, cfg, Path(out)
        self.identity = identity or {}
        self.train_images = train_images
        self.progress = progress
        self.similarity = NearestTraining(cfg, index, train_images)

    # -- state ----------------------------------------------------------------------------------------------
    def _claim(self, records: Sequence[PromptRecord], references: Sequence[str] | None) -> None:
        payload = {
            "config": self.cfg.model_dump(mode="json", exclude=set(REPORT_ONLY)),
            "prompts": [(r.prompt, r.label, r.group) for r in records],
            "references": list(references or []),
            **{k: v for k, v in self.identity.items() if k != "real_images"},
        }
        fp = _fingerprint(payload)
        path = self.out / STATE_FILE
        if path.is_file():
            old = json.loads(path.read_text()).get("fingerprint")
            if old != fp:
                raise UsageError(
                    f"{self.out} holds an audit of other inputs or settings; use a new --output or delete it"
                )
            log.info("resuming the audit in %s", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "images").mkdir(exist_ok=True)
        atomic_write(str(path), json.dumps({"fingerprint": fp, **self.identity}, indent=2))

    # -- 1. detection --------------------------------------------------------------------------------------
    def detect(self, records: Sequence[PromptRecord], references: Sequence[str] | None) -> dict[str, Any]:
        """Scores, threshold and flags (cached in ``detection.json``)."""
        path = self.out / DETECTION_FILE
        if path.is_file():
            return json.loads(path.read_text())
        cfg = self.cfg
        detector = Detector(self.pipe, cfg.detect, progress=self.progress)
        scores = detector.score([r.prompt for r in records])
        ref_scores = None
        if cfg.detect_threshold is not None:
            threshold, source = float(cfg.detect_threshold), "fixed (audit.detect_threshold)"
        elif references:
            ref_scores = detector.score(references)
            threshold = threshold_for_fpr(ref_scores, cfg.detect.target_fpr)
            source = (
                f"calibrated on {len(references)} reference prompts (target FPR {cfg.detect.target_fpr:g})"
            )
        else:
            threshold = robust_threshold(scores, cfg.fallback_mads)
            source = f"default: median + {cfg.fallback_mads:g} x 1.4826 MAD of the audited prompts' scores"
        result = {
            "scores": scores,
            "threshold": threshold,
            "threshold_source": source,
            "flags": [s > threshold for s in scores],
            "reference_scores": ref_scores,
        }
        atomic_write(str(path), json.dumps(result))
        log.info(
            "detection: %d of %d flagged (threshold %.4g, %s)",
            sum(result["flags"]),
            len(scores),
            threshold,
            source,
        )
        return result

    # -- 2.-3. explanation, generation, similarity --------------------------------------------------------
    def _gen_configs(self, references: Sequence[str] | None, threshold: float) -> dict[str, GenerateConfig]:
        """Per setting; gated AMG without its own ``gate_threshold`` uses the audit's detection threshold."""
        cfg = self.cfg
        common = cfg.model_dump(
            include={
                "num_inference_steps",
                "guidance_scale",
                "height",
                "width",
                "batch_size",
                "baseline_seed",
            }
        )
        out = {}
        for setting in cfg.settings:
            gc = GenerateConfig(
                mitigation=setting,
                seeds=cfg.seeds,
                amg=cfg.amg.model_copy(),
                prompt_opt=cfg.prompt_opt.model_copy(),
                **common,
            )
            if setting == "amg" and gc.amg.gated and gc.amg.gate_threshold is None:
                if cfg.detect.num_inference_steps != cfg.num_inference_steps or cfg.detect.resolved_end != 1:
                    log.warning(
                        "gated AMG uses the detection threshold, but detection does not score the first "
                        "step of the same %d-step trajectory",
                        cfg.num_inference_steps,
                    )
                gc.amg.gate_threshold = threshold
            if setting == "prompt-opt" and gc.prompt_opt.l_target is None:
                if not references:
                    raise UsageError(
                        "mitigation prompt-opt needs --reference-prompts or audit.prompt_opt.l_target"
                    )
                gc.prompt_opt.l_target = calibrate_l_target(
                    self.pipe,
                    references,
                    quantile=gc.prompt_opt.calibration_quantile,
                    detect_config=cfg.detect,
                )
            out[setting] = gc
        return out

    def _chunk(
        self, items: list[tuple[int, PromptRecord]], det: dict[str, Any], gens: dict[str, GenerateConfig]
    ) -> list[dict]:
        rows = []
        for i, rec in items:
            flagged = bool(det["flags"][i])
            row = {
                "index": i,
                "prompt": rec.prompt,
                "label": rec.label,
                "group": rec.group,
                "score": float(det["scores"][i]),
                "flagged": flagged,
                "tokens": None,
                "generations": {},
            }
            if flagged:
                row["tokens"] = [
                    [t.token, t.score] for t in token_attribution(self.pipe, rec.prompt, self.cfg.detect)
                ]
            rows.append(row)
        prompts = [rec.prompt for _, rec in items]
        for setting, gc in gens.items():
            made = list(generate_images(self.pipe, prompts, gc, index=self.index))
            arrays = [np.asarray(m.image.convert("RGB"), dtype=np.uint8) for m in made]
            keys, sims = self.similarity(arrays)
            for m, key, sim in zip(made, keys, sims, strict=True):
                i = items[m.prompt_index][0]
                name = f"images/p{i:05d}_{setting}_s{m.seed}.png"
                m.image.save(self.out / name)
                entry = {"seed": m.seed, "image": name, "nearest_key": key, "similarity": sim}
                if "effective_prompt" in m.record:
                    entry["effective_prompt"] = m.record["effective_prompt"]
                rows[m.prompt_index]["generations"].setdefault(setting, []).append(entry)
        return rows

    # -- the whole run -------------------------------------------------------------------------------------
    def run(
        self,
        records: Sequence[PromptRecord],
        references: Sequence[str] | None = None,
        real_images: str | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) the audit; returns the report data (see :mod:`.audit_report`)."""
        from accelerate import PartialState

        state = PartialState(cpu=str(getattr(self.pipe, "device", "cpu")).startswith("cpu"))
        t0 = time.time()
        if state.is_main_process:
            self._claim(records, references)
            _compact(self.out)
            self.detect(records, references)
        state.wait_for_everyone()
        det = json.loads((self.out / DETECTION_FILE).read_text())
        t_detect = time.time() - t0
        done = read_results(self.out)
        # fixed batches (prompt i is in batch i // batch_size) so that a resumed or multi-process audit makes
        # the same images as one uninterrupted run (AMG's output depends on the batch); a batch counts as
        # finished only when all its prompts are
        bs = self.cfg.batch_size
        batches = [list(range(lo, min(lo + bs, len(records)))) for lo in range(0, len(records), bs)]
        pending = [b for b in batches if not all(i in done for i in b)]
        skipped = len(records) - sum(len(b) for b in pending)
        log.info("%d prompts finished earlier, %d to do", skipped, len(records) - skipped)
        gens = self._gen_configs(references, det["threshold"]) if pending else {}
        suffix = "" if state.process_index == 0 else f".{state.process_index}"
        with state.split_between_processes(pending) as mine:
            bar = progress_bar(
                total=sum(len(b) for b in mine),
                desc=f"audit[{state.process_index}]",
                unit="prompt",
                enabled=self.progress,
                position=state.process_index,
            )
            with open(self.out / f"results{suffix}.jsonl", "a", encoding="utf-8") as sink:
                for batch in mine:
                    items = [(i, records[i]) for i in batch]
                    for row in self._chunk(items, det, gens):
                        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                    sink.flush()
                    os.fsync(sink.fileno())
                    bar.update(len(items))
            bar.close()
        state.wait_for_everyone()
        t_generate = time.time() - t0 - t_detect
        if not state.is_main_process:
            return {}
        rows = [r for _, r in sorted(read_results(self.out).items())]
        metrics = compute_metrics(self.cfg, rows, det, self.out, real_images)
        return {
            "identity": self.identity,
            "config": self.cfg.model_dump(mode="json"),
            "detection": {k: det[k] for k in ("threshold", "threshold_source")},
            "metrics": metrics,
            "prompts": rows,
            "timing": {
                "detect_s": round(t_detect, 1),
                "generate_s": round(t_generate, 1),
                "metrics_s": round(time.time() - t0 - t_detect - t_generate, 1),
                "resumed_prompts": skipped,
                "processes": state.num_processes,
            },
        }
