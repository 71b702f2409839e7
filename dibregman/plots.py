"""Pictures of student samples over the teacher (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from collections.abc import Callable  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def principal_axes(points: Tensor) -> Tensor:
    """``(d, 2)``: the identity for ``d = 2``, else the top-2 principal axes of ``points``."""
    points = points.double()
    if points.shape[1] == 2:
        return torch.eye(2, dtype=torch.float64)
    _, _, v = torch.linalg.svd(points - points.mean(0), full_matrices=False)
    return v[:2].T


def plot_vector_samples(
    samples: Tensor,
    path: Path,
    title: str = "",
    *,
    teacher_samples: Tensor,
    projection: Tensor | None = None,
    markers: Tensor | None = None,
    log_density: Callable[[Tensor], Tensor] | None = None,
    max_points: int = 3000,
) -> Path:
    """Scatter student ``samples: (N, d)`` over the teacher.

    Two dimensions with a ``log_density`` (``(M, 2) -> (M,)``): over its filled contours;
    otherwise over ``teacher_samples: (M, d)`` in grey. Points are projected by ``projection``
    (``(d, 2)``; default :func:`principal_axes` of the teacher samples).

    Args:
        markers: optional ``(K, d)`` points drawn as crosses (a mixture's mode means).

    Returns:
        ``path``, written as PNG.
    """
    if projection is None:
        projection = principal_axes(teacher_samples)
    student = (samples[:max_points].double() @ projection).numpy()
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    if log_density is not None and samples.shape[1] == 2:
        anchors = markers if markers is not None else teacher_samples
        shown = (anchors.double() @ projection).numpy()
        lo, hi = shown.min(0) - 1.5, shown.max(0) + 1.5
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))
        density = log_density(grid).reshape(gx.shape).numpy()
        ax.contourf(gx, gy, np.maximum(density, -12), levels=30, cmap="Blues")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    else:
        reference = (teacher_samples[:max_points].double() @ projection).numpy()
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.7", label="teacher")
    finite = np.isfinite(student).all(axis=1)
    ax.scatter(student[finite, 0], student[finite, 1], s=2, c="tab:orange", alpha=0.6,
               label="student")
    if markers is not None:
        means = (markers.double() @ projection).numpy()
        ax.scatter(means[:, 0], means[:, 1], marker="x", c="k", s=30, label="mode means")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_image_grid(images: Tensor, path: Path, title: str = "", columns: int = 8) -> Path:
    """A grid of ``images: (N, C, H, W)`` in [-1, 1] (greyscale for ``C = 1``), as PNG."""
    images = images.detach().float().clamp(-1, 1).add(1).div(2).cpu()
    n, channels = images.shape[:2]
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8 + 0.4), dpi=110,
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image in zip(axes.ravel(), images, strict=False):
        if channels == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.permute(1, 2, 0).numpy())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
