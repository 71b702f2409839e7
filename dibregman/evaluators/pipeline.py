"""Metrics of an imported text-to-image teacher's students (``teacher = "pretrained_text"``, a
diffusers pipeline; :mod:`dibregman.teachers.text_pretrained`), on decoded images:

* ``fd_pixels_n{N}``, the headline: the Fréchet distance between the Gaussian moments of the
  student's decoded images and those of the teacher's own guided samples, both average-pooled
  to ``8 x 8`` pixels (``3 * 64`` features). The reference is ``eval.n_curve`` samples of the
  teacher's Heun sampler, sample ``i`` of prompt ``i mod C``, from latents of seed
  ``eval.seed + 1``, drawn once;
* ``clip_score_n{N}``: the CLIP score (Hessel et al. 2021, arXiv 2104.08718) of each (decoded
  sample, prompt) pair, ``100 max(cos(E_img, E_txt), 0)``, averaged, in the CLIP model of
  ``text.clip_model`` (:mod:`dibregman.metrics.clip`); sample ``i`` has prompt ``i mod C``
  unless its prompt ids are given.

The COCO-2014 zero-shot protocol (FID against real images, CLIP score of COCO captions) is
``bench coco``'s (:mod:`dibregman.coco`), not a training-time metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dibregman.config import EvalConfig
from dibregman.evaluators.base import Evaluator, metric, nan_if_not_finite
from dibregman.labels import evaluation_labels
from dibregman.metrics import frechet_distance, gaussian_moments
from dibregman.metrics.clip import ClipScorer
from dibregman.plots import plot_image_grid
from dibregman.results import Direction, MetricSpec, Role, Stage


class PipelineEvaluator(Evaluator):
    """Metrics of the module docstring for samples ``(N, *shape)`` of an imported
    text-to-image teacher's student (latents for a latent model).

    Args:
        teacher: a :class:`~dibregman.teachers.text_pretrained.PretrainedTextTeacher` (its
            ``prompts``, ``decode``, ``clip_model``, sampler and prompt encoding are used).
        cfg: sample counts and the evaluation seed.

    Raises:
        ClipUnavailable: ``teacher.clip_model`` is not a complete CLIP folder with safetensors
            weights, or transformers is missing (:func:`dibregman.metrics.clip.check_clip_folder`).
    """

    POOL = 8
    GATE_FACTOR = 3.0
    CHUNK = 256  # samples decoded (and scored) at a time

    def __init__(self, teacher: Any, cfg: EvalConfig) -> None:
        super().__init__(teacher, cfg)
        self.clip = ClipScorer(teacher.clip_model, teacher.device)
        self._reference: tuple[np.ndarray, np.ndarray] | None = None
        self.protocol = {
            "fd_pixels": f"Frechet distance of {self.POOL}x{self.POOL}-pooled decoded images vs "
                         f"{cfg.n_curve} guided Heun samples of the teacher (prompts i mod C, "
                         f"latents of seed {cfg.seed + 1})",
            "clip_score": f"100 max(cos, 0) of (decoded sample, prompt) pairs, averaged, sample i "
                          f"of prompt i mod C unless labelled, in the CLIP model of "
                          f"{teacher.clip_model} (transformers)"}

    @classmethod
    def metrics(cls, cfg: EvalConfig, class_conditional: bool = False) -> list[MetricSpec]:
        """The pooled-pixel FD (the final one the headline) and the CLIP score, over training
        on ``n_curve`` samples and at the end on ``n_final``."""
        lower, higher = Direction.LOWER, Direction.HIGHER
        return [metric("fd_pixels", "FD pooled pixels", cfg.n_curve, lower, stage=Stage.CURVE),
                metric("clip_score", "CLIP score", cfg.n_curve, higher, stage=Stage.CURVE),
                metric("fd_pixels", "FD pooled pixels", cfg.n_final, lower, Role.HEADLINE),
                metric("clip_score", "CLIP score", cfg.n_final, higher)]

    def decoded(self, samples: Tensor) -> Iterator[Tensor]:
        """Images ``(B, 3, H, W)`` in ``[-1, 1]`` on the CPU of ``samples: (N, *shape)``,
        :attr:`CHUNK` samples at a time, decoded on the teacher's device."""
        for chunk in samples.split(self.CHUNK):
            yield self.teacher.decode(chunk.to(self.teacher.device)).cpu()

    def features(self, images: Tensor) -> Tensor:
        """``(B, 3 * 64)`` float64 ``8 x 8`` average-pooled pixels of ``images: (B, 3, H, W)``."""
        return torch.nn.functional.adaptive_avg_pool2d(images, self.POOL).flatten(1).double()

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """Moments of the teacher's own samples' features (drawn on first use)."""
        if self._reference is None:
            teacher, n = self.teacher, self.cfg.n_curve
            latents = torch.randn(n, *teacher.shape,
                                  generator=torch.Generator().manual_seed(self.cfg.seed + 1))
            ids = evaluation_labels(n, teacher.num_classes).to(teacher.device)
            samples = torch.cat([teacher.sample_from(z, teacher.condition(y))
                                 for z, y in zip(latents.split(self.CHUNK),
                                                 ids.split(self.CHUNK), strict=True)])
            self._reference = gaussian_moments(
                torch.cat([self.features(images) for images in self.decoded(samples)]))
        return self._reference

    def curve(self, samples: Tensor) -> dict[str, float]:
        """The FD and the CLIP score of ``samples``, sample ``i`` of prompt ``i mod C``."""
        return self.final(samples)

    def final(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """``{fd_pixels_n{N}, clip_score_n{N}}`` of ``samples: (N, *shape)``; ``labels``: the
        prompt id of each sample, ``(N,)`` (default ``i mod C``). Both NaN when a sample is not
        finite."""
        n = len(samples)
        fd_key, clip_key = f"fd_pixels_n{n}", f"clip_score_n{n}"
        not_finite = nan_if_not_finite(samples, [fd_key, clip_key])
        if not_finite is not None:
            return not_finite
        prompt_ids = (evaluation_labels(n, self.teacher.num_classes) if labels is None
                      else labels.cpu())
        features, scores = [], []
        for images, ids in zip(self.decoded(samples), prompt_ids.split(self.CHUNK),
                               strict=True):
            features.append(self.features(images))
            scores.append(self.clip.score(images, [self.teacher.prompts[k] for k in ids.tolist()]))
        return {fd_key: frechet_distance(*gaussian_moments(torch.cat(features)),
                                         *self.reference()),
                clip_key: float(torch.cat(scores).mean())}

    @classmethod
    def quality_gate(cls, student: dict[str, float],
                     teacher: dict[str, float]) -> tuple[bool, str]:
        """The pooled-pixel FD at most 3 x the teacher's own."""
        key = next((k for k in student if k.startswith("fd_pixels_n")), None)
        if key is None or key not in teacher:
            return False, "no FD to judge the student by"
        return (student[key] <= cls.GATE_FACTOR * teacher[key],
                f"{key} {student[key]:.3g} at most {cls.GATE_FACTOR:g} x the teacher's "
                f"{teacher[key]:.3g}")

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        """The first 64 decoded samples in a grid."""
        return plot_image_grid(next(self.decoded(samples[:64])), path, title=title)
