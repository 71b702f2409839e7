"""Text-to-image metrics of the digits task: image quality and prompt agreement.

Quality as for any image teacher (:class:`ImageEvaluator`: the domain-classifier FD, the
headline, its precision / recall, class coverage, optional Inception FID), with each sample's
class the digit its prompt names; prompt agreement two ways:

* ``clip_score_n{N}``: the CLIP score (Hessel et al. 2021, arXiv 2104.08718) of each (sample,
  prompt) pair, ``100 max(cos(I, T), 0)``, averaged, in the evaluation CLIP of
  :mod:`dibregman.text` (trained apart from the teacher's text encoder, on the template
  captions), or in the CLIP model of ``text.clip_model`` (:mod:`dibregman.metrics.clip`);
* ``class_accuracy_n{N}``: the share of samples the domain classifier assigns to the digit
  their prompt names.

Guidance trades one for the other: a larger ``text.guidance_scale`` raises agreement and, past
a point, costs quality (fewer, more typical images); a sweep over it and the generators shows
where each generator sits (``sweeps/text-to-image.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dibregman.config import EvalConfig
from dibregman.evaluators.base import metric
from dibregman.evaluators.image import ImageEvaluator
from dibregman.labels import evaluation_labels
from dibregman.metrics.clip import ClipScorer, PromptScorer
from dibregman.plots import plot_image_grid
from dibregman.results import Direction, MetricSpec, Stage
from dibregman.text import cached_clip, template_prompts

# The evaluation CLIP: other seed and width than any teacher's text encoder (seed
# image_teacher.seed, width 64), the same data; fixed, so scores compare across teachers.
EVAL_CLIP_SEED = 7919
EVAL_CLIP_WIDTH = 48
EVAL_CLIP_DIM = 32
EVAL_CLIP_STEPS = 300


class TextImageEvaluator(ImageEvaluator):
    """Metrics of a ``text_digits`` student's samples ``(N, C, H, W)`` of prompts ``i mod C``.

    Args:
        teacher: a text-to-image digits teacher (``prompts``: its
            :class:`dibregman.text.PromptSet`; ``data``: its images).
    """

    def __init__(self, teacher, cfg: EvalConfig) -> None:
        super().__init__(teacher, cfg)
        self.prompts = teacher.prompts
        if teacher.clip_model:
            self.clip: PromptScorer = ClipScorer(teacher.clip_model)
            clip = f"the CLIP model of {teacher.clip_model} (transformers)"
        else:
            self.clip = cached_clip(self.data.images, self.data.labels, template_prompts(),
                                    EVAL_CLIP_DIM, EVAL_CLIP_STEPS, EVAL_CLIP_SEED,
                                    EVAL_CLIP_WIDTH)
            clip = (f"a tiny CLIP (seed {EVAL_CLIP_SEED}, width {EVAL_CLIP_WIDTH}, "
                    f"{EVAL_CLIP_STEPS} steps) trained on {self.data.name} with the template "
                    f"captions, apart from the teacher's text encoder")
        self.protocol.update(
            conditional=f"sample i of prompt i mod {len(self.prompts)}; its class is the digit "
                        f"the prompt names; class_accuracy: share classified as that digit",
            clip_score=f"100 max(cos, 0) of (sample, prompt) pairs, averaged, in {clip}")

    @classmethod
    def metrics(cls, cfg: EvalConfig, class_conditional: bool = True) -> list[MetricSpec]:
        """The image metrics of a class-conditional student, and the CLIP score over training
        and at the end."""
        higher = Direction.HIGHER
        return [*super().metrics(cfg, class_conditional=True),
                metric("clip_score", "CLIP score", cfg.n_curve, higher, stage=Stage.CURVE),
                metric("clip_score", "CLIP score", cfg.n_final, higher)]

    def clip_score(self, samples: Tensor, prompt_ids: Tensor) -> dict[str, float]:
        """``{clip_score_n{N}: mean CLIP score}`` of ``samples`` and their prompts
        ``prompt_ids: (N,)``; NaN when a sample is not finite."""
        key = f"clip_score_n{len(samples)}"
        if not torch.isfinite(samples).all():
            return {key: float("nan")}
        prompts = [self.prompts.prompts[int(k)] for k in prompt_ids]
        return {key: float(self.clip.score(samples.cpu().clamp(-1, 1), prompts).mean())}

    def curve(self, samples: Tensor) -> dict[str, float]:
        """The FD and the CLIP score of ``samples``, sample ``i`` of prompt ``i mod C`` (the
        evaluation convention, :func:`dibregman.labels.evaluation_labels`)."""
        prompt_ids = evaluation_labels(len(samples), len(self.prompts))
        return {**super().curve(samples), **self.clip_score(samples, prompt_ids)}

    def final(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Every image metric with the prompts' digits as classes, and the CLIP score;
        ``labels``: the prompt of each sample, ``(N,)`` (default ``i mod C``)."""
        return self._with_prompts(super().final, samples, labels)

    def budget(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """At a budget: the FD, class coverage and CLIP score."""
        return self._with_prompts(super().budget, samples, labels)

    def _with_prompts(self, measure, samples: Tensor, labels: Tensor | None) -> dict[str, float]:
        """``measure`` (the image evaluator's, which includes :meth:`curve`'s CLIP score of the
        prompts ``i mod C``) with the prompts' digits as classes; the CLIP score again only
        when ``labels`` are other prompts."""
        default = evaluation_labels(len(samples), len(self.prompts))
        prompt_ids = default if labels is None else labels.cpu()
        metrics = measure(samples, self.prompts.digits[prompt_ids])
        if not torch.equal(prompt_ids, default):
            metrics.update(self.clip_score(samples, prompt_ids))
        return metrics

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        """The first 80 evaluation samples in 10 columns: column ``d`` is digit ``d`` (prompt
        ``i mod C`` of the template set names digit ``i mod 10``)."""
        return plot_image_grid(samples[:80], path, columns=10,
                               title=f"{title} · columns: prompts of digits 0-9")
