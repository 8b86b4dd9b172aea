"""Exponential moving average of model weights, shared by the fine-tuner and the lab trainer.

The decay warms up as ``min(decay, (1 + s) / (10 + s))`` so early steps are not dominated by the random
initialisation. Floating-point tensors are averaged in float32; other tensors (integer buffers) are copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["ExponentialMovingAverage"]

Named = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def _items(tensors: Named) -> Iterable[tuple[str, torch.Tensor]]:
    return tensors.items() if isinstance(tensors, Mapping) else tensors


class ExponentialMovingAverage:
    """EMA over named tensors: a module's ``state_dict()`` or a list of ``(name, parameter)`` pairs.

    ``update`` and ``copy_to`` take the same names as the constructor; ``copy_to`` writes the averages into
    the given tensors in place (cast to their dtype), so passing ``module.state_dict()`` or the trainable
    ``named_parameters()`` updates the module itself.
    """

    def __init__(self, tensors: Named, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            n: t.detach().clone().float() if t.dtype.is_floating_point else t.detach().clone()
            for n, t in _items(tensors)
        }

    def decay_at(self, step: int) -> float:
        """The warmed-up decay used at optimizer step ``step``."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, tensors: Named, step: int) -> None:
        d = self.decay_at(step)
        for n, t in _items(tensors):
            if t.dtype.is_floating_point:
                self.shadow[n].mul_(d).add_(t.detach().float(), alpha=1 - d)
            else:
                self.shadow[n].copy_(t)

    @torch.no_grad()
    def copy_to(self, tensors: Named) -> None:
        for n, t in _items(tensors):
            t.copy_(self.shadow[n].to(device=t.device, dtype=t.dtype))
