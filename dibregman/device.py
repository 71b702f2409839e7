"""Where and how networks run: device choice, bf16 autocast, cuDNN autotuning, compilation."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for network evaluations when ``precision == "bf16"`` (a no-op for fp32).

    Ratio and weight arithmetic stays fp32: callers cast network outputs with ``.float()``.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare_modules(modules: list[nn.Module | None], device: torch.device,
                    compile_: bool) -> None:
    """Set up ``modules`` for ``device``: on a GPU let cuDNN time its convolution algorithms
    once (fixed shapes) and keep the fastest; with ``compile_`` compile each module in place
    (``torch.compile``; state-dict keys unchanged). None entries are skipped."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if compile_:
        for module in modules:
            if module is not None:
                module.compile()


def adamw(module: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
          device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``module``'s parameters; the fused kernel on a GPU."""
    return torch.optim.AdamW(module.parameters(), lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=device.type == "cuda")
