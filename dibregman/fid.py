"""The papers' FID protocol for a trained run, apart from training: ``bench fid RUN_DIR``.

EDM (Karras et al. 2022, §5 and Appendix F) and the distillation papers after it (DMD2, Yin et
al. 2024; f-distill, Xu et al. 2025; SiD, Zhou et al. 2024) report FID as: 50,000 one-step
samples, Inception-v3 pool3 features, against the statistics of the whole training set
(CIFAR-10: its 50,000 training images), computed for three sample seeds, the minimum (and the
mean) reported. A class-conditional student is measured the same way (EDM's conditional
protocol): its samples are class-balanced, sample ``i`` of class ``i mod C``
(:func:`dibregman.labels.evaluation_labels`; 5,000 per CIFAR-10 class), against all training
images. Here the features are clean-fid's "clean" mode (Parmar et al. 2022;
:func:`dibregman.metrics.inception_features`), the reference the teacher's training images (the
same reference as the run's own ``fid_n`` metric).

Sample seed ``s`` draws its latents from ``torch.Generator().manual_seed(s)`` in consecutive
chunks of ``batch_size``, so sample ``i`` of seed ``s`` is the same on every device and on
every resume. The features of each seed are accumulated as running moments (count, sum and
sum of outer products, float64; :class:`RunningMoments`) and saved with the number of samples
done after every chunk in ``RUN_DIR/fid/seed{s}.pt``, so an interrupted evaluation resumes at
its last chunk; a finished seed's FID is written to ``RUN_DIR/fid/fid.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dibregman.cache import cache_root
from dibregman.config import from_dict
from dibregman.labels import evaluation_labels
from dibregman.metrics import cached_moments, content_hash, frechet_distance, inception_features
from dibregman.run import CONFIG_FILE, read_checkpoint, write_json
from dibregman.students import build_networks
from dibregman.teachers import TeacherKind, teacher_for

FID_DIR = "fid"
RESULT_FILE = "fid.json"
PAPER_SAMPLES = 50_000
PAPER_SEEDS = (0, 1, 2)

# features(images (N, C, H, W) in [-1, 1], device) -> (N, D) features
FeatureFn = Callable[[Tensor, str], Tensor]


def clean_inception(images: Tensor, device: str) -> Tensor:
    """clean-fid "clean"-mode Inception-v3 features, ``(N, 2048)`` float64."""
    return inception_features(images, device=device)


class RunningMoments:
    """Mean and unbiased covariance of a stream of ``(n, D)`` feature chunks, in float64.

    ``mean = S1 / N``, ``cov = (S2 - N mean mean^T) / (N - 1)`` with ``S1 = sum x``,
    ``S2 = sum x x^T``: the same moments as :func:`dibregman.metrics.gaussian_moments` of the
    concatenated features, without holding them.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, features: Tensor) -> None:
        """Accumulate a ``(n, D)`` chunk."""
        x = features.to(torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(dim=0)
        self.outer += x.T @ x

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (D,), covariance (D, D))`` as NumPy arrays; needs two or more samples."""
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.numpy(), cov.numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "total": self.total, "outer": self.outer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.total, self.outer = state["count"], state["total"], state["outer"]


def _load_student(run_dir: Path, device: str) -> tuple[torch.nn.Module, Any]:
    """The EMA student of the run in ``run_dir`` (its latest checkpoint) and its teacher."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    cfg = from_dict(json.loads(config_path.read_text()))
    teacher = teacher_for(cfg, device)
    if teacher.kind is not TeacherKind.IMAGE:
        raise ValueError(f"FID needs an image teacher; run {run_dir} distils the "
                         f"{teacher.kind} teacher {cfg.teacher!r}")
    checkpoint = read_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} has no checkpoint to evaluate")
    # The student's architecture alone (a Distiller would also build the critics' optimisers and
    # draw the regression term's teacher ODE pairs, which evaluation never uses).
    student, _, _ = build_networks(cfg, teacher, torch.Generator())
    student.load_state_dict(checkpoint[0]["student_ema"])
    return student.to(device).eval().requires_grad_(False), teacher


def paper_fid(
    run_dir: str | Path,
    n: int = PAPER_SAMPLES,
    seeds: Sequence[int] = PAPER_SEEDS,
    batch_size: int = 500,
    device: str = "cpu",
    features: FeatureFn = clean_inception,
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> dict[str, float]:
    """FID of the run's EMA student by the papers' protocol; resumable.

    Args:
        run_dir: a run directory with a checkpoint (an image teacher's run).
        n: samples per seed (the papers: 50,000).
        seeds: sample seeds (the papers: three).
        batch_size: samples per chunk (one student call, one feature call, one save).
        device: where the student and the feature network run.
        features: the feature extractor; clean-fid Inception by default.
        on_chunk: ``on_chunk(seed, done, n)`` after every chunk (progress).

    Returns:
        ``{"fid_seed{s}": ..., "fid_min": ..., "fid_mean": ..., "n": n}``; also written to
        ``RUN_DIR/fid/fid.json``.
    """
    if n < 2 or batch_size < 1 or not seeds:
        raise ValueError(f"need n >= 2 (got {n}), batch_size >= 1 (got {batch_size}) and at "
                         f"least one seed")
    run_dir = Path(run_dir)
    student, teacher = _load_student(run_dir, device)
    images = teacher.data.images
    # The Inception reference is cached by the images' content (as the run's fid_n metric);
    # another extractor's is computed afresh (a function's name does not identify it).
    reference = cached_moments(lambda: features(images, device),
                               [content_hash(images), "fid-reference-inception-clean"],
                               cache_root() / "statistics" if features is clean_inception
                               else None)
    out = run_dir / FID_DIR
    out.mkdir(exist_ok=True)
    result_path = out / RESULT_FILE
    result: dict[str, float] = json.loads(result_path.read_text()) if result_path.exists() else {}
    if result.get("n") not in (None, n):
        raise ValueError(f"{result_path} holds a protocol with n={result['n']}, not {n}; "
                         f"delete {out} to start again")
    for seed in seeds:
        key = f"fid_seed{seed}"
        if key in result:
            continue
        partial = out / f"seed{seed}.pt"
        moments: RunningMoments | None = None
        if partial.exists():
            moments = RunningMoments(1)
            moments.load_state_dict(torch.load(partial, weights_only=True))
        rng = torch.Generator().manual_seed(seed)
        labels = (evaluation_labels(n, teacher.num_classes) if teacher.num_classes else None)
        done = 0
        while done < n:
            size = min(batch_size, n - done)
            latents = torch.randn(size, *teacher.shape, generator=rng)
            done += size
            if moments is not None and done <= moments.count:
                continue  # drawn and discarded: the stream resumes where the save left it
            chunk_labels = None if labels is None else teacher.condition(
                labels[done - size:done].to(device))
            with torch.no_grad():
                samples = student(latents.to(device), chunk_labels).float().clamp(-1, 1).cpu()
            chunk = features(samples, device)
            moments = moments if moments is not None else RunningMoments(chunk.shape[1])
            moments.add(chunk)
            tmp = partial.with_name(partial.name + ".tmp")
            torch.save(moments.state_dict(), tmp)
            os.replace(tmp, partial)
            if on_chunk is not None:
                on_chunk(seed, done, n)
        result[key] = frechet_distance(*moments.moments(), *reference)
        result["n"] = n
        write_json(result_path, result)
        partial.unlink()
    values = [result[f"fid_seed{s}"] for s in seeds]
    result.update(fid_min=float(min(values)), fid_mean=float(np.mean(values)))
    write_json(result_path, result)
    return result
