"""copyguard.mitigation: memorization detection, attribution, inference-time mitigation and the audit.

Importing the package imports nothing else; each name below is imported from its module on first use.

Public API:

- configs: ``DetectConfig``, ``PromptOptConfig``, ``AMGConfig``, ``GenerateConfig``, ``AuditConfig``;
- loading: ``load_sd_pipeline``, ``read_prompt_file``, ``PromptRecord``;
- detection and explanation: ``Detector``, ``roc_metrics``, ``threshold_for_fpr``, ``token_attribution``,
  ``TokenScore``;
- mitigation: ``StableDiffusionAMGPipeline`` (Anti-Memorization Guidance), ``optimize_prompts``,
  ``calibrate_l_target`` (prompt-embedding optimization), ``generate_images``, ``GeneratedImage``;
- the detect and generate jobs: ``run_detect`` and its ``DetectResult`` (score, flag, explain, write JSON
  lines), ``run_generate`` and its ``GenerateResult`` (images, records and config into a folder);
- the audit: ``run_audit`` and its ``AuditResult`` (detect, generate, measure, gate, report in one call),
  ``AuditJob`` (the work without gate and report), ``compute_metrics``, ``parse_conditions``,
  ``evaluate_gate``, ``GateResult``.
"""

from copyguard.common.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    """
    config: DetectConfig PromptOptConfig AMGConfig GenerateConfig AuditConfig
    sd_loader: load_sd_pipeline
    prompts: read_prompt_file PromptRecord
    detect: Detector roc_metrics threshold_for_fpr
    attribution: token_attribution TokenScore
    pipeline_amg: StableDiffusionAMGPipeline
    prompt_opt: optimize_prompts calibrate_l_target
    generate: generate_images GeneratedImage
    detect_job: run_detect DetectResult
    generate_job: run_generate GenerateResult
    audit: run_audit AuditResult
    audit_run: AuditJob
    audit_metrics: compute_metrics
    audit_gate: parse_conditions evaluate_gate GateResult
""",
)
