"""Evaluation of detection and mitigation, shared by the audit, the lab model and the benchmarks.

- :mod:`.calibrate`: THE detection-threshold calibration from reference prompts at a target FPR (Wen et al.,
  ICLR 2024), and prompt-opt's ``l_target`` from the same scores.
- :mod:`.measure`: the generate-and-measure loop (images for (prompt, seed) pairs through
  :func:`copyguard.mitigation.generate.generate_images`, SSCD to each prompt's own training image or the
  nearest training image, as in Chen et al., CVPR 2024 and Somepalli et al., NeurIPS 2023).
- :mod:`.evidence`: pure functions over scores, images and records: detection ROC per setting (Wen et al.,
  ICLR 2024; protocol in docs/results.md), image change against the unmitigated image, AMG term statistics
  from the pipeline's traces (Chen et al., CVPR 2024).
- :mod:`.costs`: what detection and each mitigation cost on a given SD pipeline (time per image against plain
  sampling, gated and forced-worst-case AMG, prompt optimization), round by round.
"""
