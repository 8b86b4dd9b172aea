"""copyguard.train: Stable Diffusion fine-tuning with the memorization filter (Accelerate; full or LoRA).

Importing the package imports nothing else; each name below is imported from its module on first use.

Public API:

- ``run_training`` (one run; ``NonFiniteLoss`` when the loss stops being finite);
- configs (section ``train``): ``TrainConfig``, ``DataConfig``, ``LoraConfig``, ``FilterConfig``,
  ``ValidationConfig``;
- the training-time filter: ``MagnitudeFilter``;
- the data stream: ``make_loader``.
"""

from copyguard.common.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    """
    finetune: run_training NonFiniteLoss
    config: TrainConfig DataConfig LoraConfig FilterConfig ValidationConfig
    mem_filter: MagnitudeFilter
    finetune_data: make_loader
""",
)
