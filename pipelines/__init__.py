"""copyguard.pipelines: the jobs people run (Beam curation, lab data and model, demo) and the CLI.

Importing the package imports nothing else; each name below is imported from its module on first use.

Public API:

- ``run_curation`` (the Beam curation job with typed arguments; ``copyguard.pipelines.curate.run`` is its
  Apache-Beam-style argv front end);
- ``build_sample_data`` and ``run_lab_model`` (the lab's sample shards and from-scratch model),
  ``SampleDataConfig``, ``LabConfig``;
- ``run_demo`` (the end-to-end demo);
- ``main`` (the ``copyguard`` command line).

The audit, detection and generation jobs are library calls of :mod:`copyguard.mitigation`
(``run_audit``, ``Detector``, ``generate_images``) and training is :func:`copyguard.train.run_training`.
"""

from copyguard.common.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    """
    curate: run_curation
    lab.sample_data: build_sample_data
    lab.run: run_lab_model
    lab.config: SampleDataConfig LabConfig
    demo: run_demo
    cli: main
""",
)
