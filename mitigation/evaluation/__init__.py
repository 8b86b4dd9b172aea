"""Evaluation of detection and mitigation, shared by the audit, the lab model and the benchmarks.

- :mod:`.calibrate`: THE detection-threshold calibration from reference prompts at a target FPR (§2), and
  prompt-opt's ``l_target`` from the same scores (§4).
- :mod:`.measure`: the generate-and-measure loop (images for (prompt, seed) pairs through
  :func:`copyguard.mitigation.generate.generate_images`, SSCD to each prompt's own training image or the
  nearest training image, §7).
- :mod:`.evidence`: pure functions over scores, images and records: detection ROC per setting (§2, §12),
  image change against the unmitigated image, AMG term statistics from the pipeline's traces (§6).
"""
