"""Class labels of class-conditional distillation.

A class-conditional teacher ``D(x, sigma, y)`` models ``p(x | y)`` for ``C`` classes; its
student ``G(z, y)``, fake score and ratio network take the same label, so the ratio is the
conditional one, ``r(x_sigma, sigma, y) = q_sigma(x | y) / p_sigma(x | y)``. Networks take labels
as EDM does: one-hot rows ``(B, C)`` in float32 (an imported EDM network's ``class_labels``).

Training draws labels *class-balanced*: every batch holds each class ``floor(B / C)`` or
``ceil(B / C)`` times, in random order, so no class is starved by the draw (the teacher models
each class alone; its data may be unbalanced). Evaluation labels are fixed: sample ``i`` has
class ``i mod C``, so ``n`` samples are balanced (CIFAR-10's 50,000: 5,000 per class) and the same
at every batch size.
"""

from __future__ import annotations

import torch
from torch import Tensor


def balanced_labels(n: int, num_classes: int, rng: torch.Generator) -> Tensor:
    """``(n,)`` int64 class ids, each class ``floor(n / C)`` or ``ceil(n / C)`` times, shuffled.

    The ``n mod C`` classes that get one more are a random choice, so no class is favoured
    over steps. Drawn on ``rng``'s device from ``rng`` alone.
    """
    device = rng.device
    offset = torch.randint(num_classes, (1,), generator=rng, device=device)
    labels = (torch.arange(n, device=device) + offset) % num_classes
    return labels[torch.randperm(n, generator=rng, device=device)]


def evaluation_labels(n: int, num_classes: int) -> Tensor:
    """``(n,)`` int64: sample ``i`` of an evaluation has class ``i mod C``."""
    return torch.arange(n) % num_classes


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """``(B,)`` int64 class ids -> ``(B, C)`` float32 one-hot rows, on ``labels``' device."""
    return torch.nn.functional.one_hot(labels, num_classes).float()
