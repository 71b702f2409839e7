"""The one cache root: ``$DIBREGMAN_CACHE``, else ``~/.cache/dibregman``.

Everything the package caches lives under it: trained image teachers (``teachers/``), domain
classifiers (``classifiers/``), reference feature statistics (``statistics/``), the Inception
weights folder clean-fid reads (``inception/``) and downloaded datasets (``cifar10/``).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DIBREGMAN_CACHE`` or ``~/.cache/dibregman`` (read at each call, so tests can move it)."""
    return Path(os.environ.get("DIBREGMAN_CACHE", Path.home() / ".cache" / "dibregman"))
