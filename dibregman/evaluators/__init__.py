"""Evaluators: the quality of student samples against a teacher, declared metric by metric.

Each evaluator class declares the metrics it produces (:meth:`Evaluator.metrics`, a list of
:class:`dibregman.results.MetricSpec` computed from the eval config alone, so a sweep spec or a
report can read them before any teacher is built) and measures them (``curve`` during
training, ``final`` once). A teacher class names its evaluator (``Teacher.evaluator``):

* :class:`VectorEvaluator`: any vector teacher: FD against a teacher draw's moments, improved
  precision / recall and MMD.
* :class:`MixtureEvaluator`: analytic Gaussian mixtures: exact moments and log-density (NLL),
  mode statistics.
* :class:`ImageEvaluator`: image teachers: domain-classifier FD, feature precision / recall,
  class coverage and optional Inception FID.
* :class:`TextImageEvaluator`: the text-to-image digits task: the image metrics with each
  prompt's digit as its class, and the CLIP score of prompt agreement.
* :class:`PipelineEvaluator`: imported text-to-image pipelines: FD of pooled decoded images
  against the teacher's own samples, and the CLIP score in the CLIP model of ``text.clip_model``.
"""

from dibregman.evaluators.base import Evaluator
from dibregman.evaluators.image import ImageEvaluator
from dibregman.evaluators.mixture import MixtureEvaluator
from dibregman.evaluators.pipeline import PipelineEvaluator
from dibregman.evaluators.text_image import TextImageEvaluator
from dibregman.evaluators.vector import VectorEvaluator

__all__ = ["Evaluator", "ImageEvaluator", "MixtureEvaluator", "PipelineEvaluator",
           "TextImageEvaluator", "VectorEvaluator"]
