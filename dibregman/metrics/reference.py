"""Content-addressed caching of reference statistics (feature means and covariances).

Reference moments (e.g. of a data set's Inception or classifier features) are expensive and
are needed by every run that reports a Fréchet distance. :func:`cached_moments` stores them as
``.npz`` files named by a hash of *what they were computed from* (the images' bytes, the
feature network's name, the number of images), so a cache hit can never be stale and no
bookkeeping is needed. Writes are atomic (temporary file + ``os.replace``), so concurrent runs
sharing a cache directory at worst compute the same file twice.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dibregman.metrics.frechet import gaussian_moments

_HASH_CHARS = 16


def content_hash(*parts: str | bytes | Tensor) -> str:
    """Hash of the parts' contents: the first 16 hex characters of a SHA-256.

    Each part is fed with a type tag and its length, so ``("ab", "c")`` and ``("a", "bc")``
    differ. Strings are UTF-8 encoded; tensors are hashed by their raw bytes (contiguous, on
    the CPU) together with their dtype and shape, so a reshaped or re-typed tensor with the same
    bytes gets another hash.

    Args:
        *parts: strings, bytes or tensors.

    Returns:
        16 lowercase hex characters.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().to("cpu").contiguous()
            header = f"tensor:{t.dtype}:{tuple(t.shape)}".encode()
            # reinterpret as raw bytes (works for every dtype, bfloat16 and bool included)
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        elif isinstance(part, bytes | bytearray | memoryview):
            header, data = b"bytes", bytes(part)
        elif isinstance(part, str):
            header, data = b"str", part.encode("utf-8")
        else:
            raise TypeError(f"cannot hash a {type(part).__name__}; pass str, bytes or Tensor")
        for chunk in (header, data):
            digest.update(len(chunk).to_bytes(8, "little"))
            digest.update(chunk)
    return digest.hexdigest()[:_HASH_CHARS]


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_moments(
    features_fn: Callable[[], Tensor],
    key_parts: Sequence[str | bytes | Tensor],
    cache_dir: str | Path | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``features_fn()``, cached on disk by content.

    The moments are :func:`~dibregman.metrics.frechet.gaussian_moments` of the ``(N, D)``
    features (float64 mean and unbiased covariance). With a ``cache_dir`` they are stored as
    ``cache_dir / f"moments-{content_hash(*key_parts)}.npz"`` and a later call with the same key
    loads that file without calling ``features_fn``. Callers make the key describe the content,
    e.g. ``(images, "inception-v3-clean", str(n))`` -- the images themselves (hashed by their
    bytes), the feature network's name and the number of images.

    Args:
        features_fn: computes the ``(N, D)`` features (``N >= 2``); called only on a miss.
        key_parts: strings, bytes or tensors that identify the features' content.
        cache_dir: cache directory (created on demand); ``None`` computes every time.

    Returns:
        ``(mean (D,), covariance (D, D))`` as float64 NumPy arrays.
    """
    if cache_dir is None:
        return gaussian_moments(features_fn())
    path = Path(cache_dir) / f"moments-{content_hash(*key_parts)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return stored["mu"], stored["cov"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable (e.g. truncated by a crash outside the atomic write): recompute
    mu, cov = gaussian_moments(features_fn())
    _atomic_savez(path, mu=mu, cov=cov)
    return mu, cov
